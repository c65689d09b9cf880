"""``SpatialConv``: a ``kh×1`` then ``1×kw`` factorized conv layer."""

from __future__ import annotations

from efficonv.formats.spatial import Spatial
from efficonv.nnx._base import FactorizedConv


class SpatialConv(FactorizedConv):
  """Spatially factorized convolution: ``kh×1 (C_in→K)`` then ``1×kw (K→C_out)``.

  Jaderberg et al.'s scheme 2; with ``rank=C_out`` it is Inception's
  "factorization into asymmetric convolutions".

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from efficonv.nnx import SpatialConv
    >>> SpatialConv(32, 64, (7, 7), rank=32, rngs=nnx.Rngs(0))(jnp.ones((2, 9, 9, 32))).shape
    (2, 9, 9, 64)

  Args:
    in_features: input channels ``C_in``.
    out_features: output channels ``C_out``.
    kernel_size: ``k`` or ``(kh, kw)``.
    strides: int or ``(sh, sw)``; applied to the spatial steps only.
    rank: intermediate channels ``K``.
    padding: ``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, ``"REFLECT"``, int or ``((lo, hi), (lo, hi))``.
    kernel_dilation: int or ``(dh, dw)``.
    use_bias: add a bias to the output.
    dtype: computation dtype (inferred from inputs and params when ``None``).
    param_dtype: parameter dtype.
    precision: XLA precision of the matmuls/convs.
    kernel_init: ``None`` draws factors whose reconstructed kernel has
      LeCun-normal variance (as ``nnx.Conv``); an initializer is applied to
      every factor instead.
    bias_init: bias initializer.
    implementation: ``"auto"``, ``"autotune"``, ``"factorized"`` or ``"reconstructed"``.
    depthwise_implementation: ``"auto"``, ``"shift"`` or ``"xla"``.
    rngs: random number streams.
    input_dilation, feature_group_count, mask, promote_dtype, preferred_element_type:
      ``nnx.Conv``'s, as :class:`~efficonv.nnx.FactorizedConv` (groups, a mask and
      ``preferred_element_type`` run the reconstructed path).

  ``model.train()``/``model.eval()`` set what ``"auto"``/``"autotune"`` optimise
  (:attr:`~efficonv.nnx.FactorizedConv.deterministic`).

  References:
    Jaderberg et al., `Speeding up Convolutional Neural Networks with Low Rank
    Expansions <https://arxiv.org/abs/1405.3866>`_, 2014.
  """

  format_type = Spatial
