"""``CPConv``: a conv layer with a rank-``R`` CP kernel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from efficonv.formats.cp import CP
from efficonv.formats.init import Initializer
from efficonv.kernels._options import PaddingLike
from efficonv.nnx._base import FactorizedConv, check_options, default_bias_init
from efficonv.typing import Dtype, PrecisionLike


class CPConv(FactorizedConv):
  """Convolution with a CP-decomposed kernel (Lebedev et al. 2014).

  Runs ``1×1 (C_in→R) → depthwise kh×1 → depthwise 1×kw → 1×1 (R→C_out)``,
  ``R(C_in + C_out + kh + kw)`` MACs per output pixel instead of
  ``kh·kw·C_in·C_out``. The signature mirrors :class:`flax.nnx.Conv`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from efficonv.nnx import CPConv
    >>> layer = CPConv(64, 64, (3, 3), rank=16, strides=2, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((8, 32, 32, 64))).shape
    (8, 16, 16, 64)
    >>> layer.plan((8, 32, 32, 64)).implementation
    'factorized'

  Args:
    in_features: input channels ``C_in``.
    out_features: output channels ``C_out``.
    kernel_size: ``k`` or ``(kh, kw)``.
    rank: CP rank ``R``.
    strides: int or ``(sh, sw)``; applied to the depthwise steps only.
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
    implementation: ``"auto"``, ``"factorized"`` or ``"reconstructed"``.
    depthwise_implementation: ``"auto"``, ``"shift"`` or ``"xla"``.
    rngs: random number streams.

  References:
    Lebedev et al., `Speeding-up Convolutional Neural Networks Using Fine-tuned
    CP-Decomposition <https://arxiv.org/abs/1412.6553>`_, ICLR 2015.
  """

  format_type = CP

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    *,
    rank: int,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
    use_bias: bool = True,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    precision: PrecisionLike = None,
    kernel_init: Initializer | None = None,
    bias_init: Initializer = default_bias_init,
    implementation: str = "auto",
    depthwise_implementation: str = "auto",
    rngs: nnx.Rngs,
  ):
    ks, s, d = check_options(
      in_features,
      out_features,
      kernel_size,
      strides,
      padding,
      kernel_dilation,
      implementation,
      depthwise_implementation,
    )
    fmt = CP.init(rngs.params(), in_features, out_features, ks, rank, dtype=param_dtype, initializer=kernel_init)
    self._setup(
      fmt,
      strides=s,
      padding=padding,
      kernel_dilation=d,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      bias_init=bias_init,
      implementation=implementation,
      depthwise_implementation=depthwise_implementation,
      rngs=rngs,
    )

  @classmethod
  def _decompose(cls, kernel: Any, rank: Any, **kwargs: Any) -> Any:
    from efficonv.decompose import cp

    return cp(kernel, rank, **kwargs)

  @classmethod
  def _format_kwargs(cls, fmt: Any) -> dict[str, Any]:
    return {"rank": fmt.rank}
