"""``TuckerConv``: a conv layer with a Tucker-2 kernel."""

from __future__ import annotations

from efficonv.formats.tucker2 import Tucker2
from efficonv.nnx._base import FactorizedConv


class TuckerConv(FactorizedConv):
  """Convolution with a Tucker-2 kernel (Kim et al. 2016).

  Runs ``1×1 (C_in→R1) → kh×kw (R1→R2) → 1×1 (R2→C_out)`` with no
  nonlinearity in between (for the nonlinear block see :class:`Bottleneck`).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from efficonv.nnx import TuckerConv
    >>> TuckerConv(64, 64, 3, rank=(16, 8), rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 64))).shape
    (2, 8, 8, 64)

  Args:
    in_features: input channels ``C_in``.
    out_features: output channels ``C_out``.
    kernel_size: ``k`` or ``(kh, kw)``.
    strides: int or ``(sh, sw)``; applied to the spatial steps only.
    rank: ``(R1, R2)``, or one int for both.
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
    depthwise_implementation: accepted for a uniform signature; Tucker-2 has no depthwise step.
    rngs: random number streams.
    input_dilation, feature_group_count, mask, promote_dtype, preferred_element_type:
      ``nnx.Conv``'s, as :class:`~efficonv.nnx.FactorizedConv` (groups, a mask and
      ``preferred_element_type`` run the reconstructed path).

  ``model.train()``/``model.eval()`` set what ``"auto"``/``"autotune"`` optimise
  (:attr:`~efficonv.nnx.FactorizedConv.deterministic`).

  References:
    Kim et al., `Compression of Deep Convolutional Neural Networks for Fast and
    Low Power Mobile Applications <https://arxiv.org/abs/1511.06530>`_, ICLR 2016.
  """

  format_type = Tucker2
