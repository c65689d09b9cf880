"""Linen access to efficonv's factorized convolutions.

Thin :class:`flax.linen.Module` wrappers with Linen conventions: ``features``
instead of ``out_features`` and the input channels inferred at ``init``. They
hold the same factors, with the same variance-matched initialization, as the
NNX layers (both call the formats' ``init``), and apply them with the same
``Format.conv``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from efficonv.linen import CPConv
  >>> layer = CPConv(features=32, kernel_size=(3, 3), rank=8, strides=2)
  >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 16, 16, 16)))
  >>> layer.apply(variables, jnp.ones((4, 16, 16, 16))).shape
  (4, 8, 8, 32)
"""

from efficonv.linen._layers import CPConv as CPConv
from efficonv.linen._layers import SeparableConv as SeparableConv
from efficonv.linen._layers import SpatialConv as SpatialConv
from efficonv.linen._layers import TTConv as TTConv
from efficonv.linen._layers import TuckerConv as TuckerConv
