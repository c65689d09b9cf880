"""``TuckerConv``: a conv layer with a Tucker-2 kernel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from efficonv.formats.init import Initializer
from efficonv.formats.tucker2 import Tucker2
from efficonv.kernels._options import PaddingLike
from efficonv.nnx._base import FactorizedConv, check_options, default_bias_init
from efficonv.typing import Dtype, PrecisionLike


class TuckerConv(FactorizedConv):
  """Convolution with a Tucker-2 kernel (Kim et al. 2015).

  Runs ``1×1 (C_in→R1) → kh×kw (R1→R2) → 1×1 (R2→C_out)`` with no
  nonlinearity in between (for the nonlinear block see :class:`Bottleneck`).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from efficonv.nnx import TuckerConv
    >>> TuckerConv(64, 64, 3, ranks=(16, 16), rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 64))).shape
    (2, 8, 8, 64)

  Args:
    in_features: input channels ``C_in``.
    out_features: output channels ``C_out``.
    kernel_size: ``k`` or ``(kh, kw)``.
    ranks: ``(R1, R2)`` or one int for both.
    strides: int or ``(sh, sw)``; applied to the spatial steps only.
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
    implementation: ``"auto"``, ``"factorized"`` or ``"reconstructed"``.
    depthwise_implementation: ``"auto"``, ``"shift"`` or ``"xla"``.
    rngs: random number streams.

  References:
    Kim et al., `Compression of Deep Convolutional Neural Networks for Fast and
    Low Power Mobile Applications <https://arxiv.org/abs/1511.06530>`_, ICLR 2016.
  """

  format_type = Tucker2

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    *,
    ranks: int | Sequence[int],
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
    fmt = Tucker2.init(
      rngs.params(), in_features, out_features, ks, tucker_ranks(ranks), dtype=param_dtype, initializer=kernel_init
    )
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
    from efficonv.decompose import tucker2

    return tucker2(kernel, tucker_ranks(rank), **kwargs)

  @classmethod
  def _format_kwargs(cls, fmt: Any) -> dict[str, Any]:
    return {"ranks": fmt.rank}


def tucker_ranks(ranks: int | Sequence[int]) -> tuple[int, int]:
  """``ranks`` as ``(R1, R2)``; an int means both.

  Raises:
    ValueError: naming ``ranks`` when it is neither an int nor a pair.
  """
  if isinstance(ranks, int) and not isinstance(ranks, bool):
    return ranks, ranks
  try:
    r1, r2 = (int(r) for r in ranks)  # type: ignore[union-attr]
  except (TypeError, ValueError) as e:
    raise ValueError(f"ranks must be an int or a pair (R1, R2), got {ranks!r}") from e
  return r1, r2
