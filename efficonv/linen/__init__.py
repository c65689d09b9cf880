"""Linen access to efficonv's factorized convolutions.

Thin :class:`flax.linen.Module` wrappers, one per NNX layer (:class:`Conv`
subclasses :class:`flax.linen.Conv` as :class:`efficonv.nnx.Conv` does
``nnx.Conv``), with Linen conventions: ``features`` instead of
``out_features`` and the input channels inferred at ``init``. Linen has no
train/eval mode: a factorized layer plans for its ``objective`` field, or the
``objective=`` given to the call (``"training"`` in a training step). They hold the same parameters, drawn the same way, as
the NNX layers (the factorized ones through the NNX layer's format hook), and
apply them with the same code (``Format.conv``; for :class:`Bottleneck` and
:class:`StackedConv` the block functions the NNX layers use).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from efficonv.linen import CPConv
  >>> layer = CPConv(features=32, kernel_size=(3, 3), rank=8, strides=2)
  >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 16, 16, 16)))
  >>> layer.apply(variables, jnp.ones((4, 16, 16, 16))).shape
  (4, 8, 8, 32)
"""

from efficonv.linen._layers import Bottleneck as Bottleneck
from efficonv.linen._layers import Conv as Conv
from efficonv.linen._layers import CPConv as CPConv
from efficonv.linen._layers import SeparableConv as SeparableConv
from efficonv.linen._layers import SpatialConv as SpatialConv
from efficonv.linen._layers import StackedConv as StackedConv
from efficonv.linen._layers import TTConv as TTConv
from efficonv.linen._layers import TuckerConv as TuckerConv
