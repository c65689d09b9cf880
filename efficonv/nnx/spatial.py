"""``SpatialConv``: a ``kh×1`` then ``1×kw`` factorized conv layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from efficonv.formats.init import Initializer
from efficonv.formats.spatial import Spatial
from efficonv.kernels._options import PaddingLike
from efficonv.nnx._base import FactorizedConv, check_options, default_bias_init
from efficonv.typing import Dtype, PrecisionLike


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
    rank: intermediate channels ``K``.
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
    Jaderberg et al., `Speeding up Convolutional Neural Networks with Low Rank
    Expansions <https://arxiv.org/abs/1405.3866>`_, 2014.
  """

  format_type = Spatial

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
    fmt = Spatial.init(rngs.params(), in_features, out_features, ks, rank, dtype=param_dtype, initializer=kernel_init)
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
    from efficonv.decompose import spatial

    return spatial(kernel, rank, **kwargs)

  @classmethod
  def _format_kwargs(cls, fmt: Any) -> dict[str, Any]:
    return {"rank": fmt.rank}
