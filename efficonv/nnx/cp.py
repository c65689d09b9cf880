"""``CPConv``: a conv layer with a rank-``R`` CP kernel."""

from __future__ import annotations

from efficonv.formats.cp import CP
from efficonv.nnx._base import FactorizedConv


class CPConv(FactorizedConv):
  """Convolution with a CP-decomposed kernel (Lebedev et al. 2014).

  Runs ``1×1 (C_in→R) → depthwise kh×1 → depthwise 1×kw → 1×1 (R→C_out)``,
  ``R(C_in + C_out + kh + kw)`` MACs per output pixel instead of
  ``kh·kw·C_in·C_out``. The signature mirrors :class:`flax.nnx.Conv`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from efficonv.nnx import CPConv
    >>> layer = CPConv(64, 64, (3, 3), 2, rank=16, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((8, 32, 32, 64))).shape
    (8, 16, 16, 64)
    >>> layer.plan((8, 32, 32, 64)).implementation
    'factorized'

  Args:
    in_features: input channels ``C_in``.
    out_features: output channels ``C_out``.
    kernel_size: ``k`` or ``(kh, kw)``.
    strides: int or ``(sh, sw)``; applied to the depthwise steps only.
    rank: CP rank ``R``.
    padding: ``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, ``"REFLECT"``, int or ``((lo, hi), (lo, hi))``.
    kernel_dilation: int or ``(dh, dw)``.
    use_bias: add a bias after the last 1×1.
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
    Lebedev et al., `Speeding-up Convolutional Neural Networks Using Fine-tuned
    CP-Decomposition <https://arxiv.org/abs/1412.6553>`_, 2014 (ICLR 2015).
  """

  format_type = CP
