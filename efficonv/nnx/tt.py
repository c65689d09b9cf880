"""``TTConv``: a conv layer with a Tensor-Train kernel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from efficonv.formats.tt import TT
from efficonv.layer_options import (
  DepthwiseImplementation,
  Implementation,
  Initializer,
  PaddingLike,
  default_bias_init,
)
from efficonv.nnx._base import FactorizedConv, PromoteDtype
from efficonv.typing import Array, Dtype, PrecisionLike


class TTConv(FactorizedConv):
  """Convolution with a Tensor-Train kernel (Garipov et al. 2016).

  Channels are factorized as ``C_in = ∏ in_modes``, ``C_out = ∏ out_modes``;
  the kernel is a spatial core times a chain of channel cores.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from efficonv.nnx import TTConv
    >>> layer = TTConv(64, 64, 3, rank=8, in_modes=(8, 8), out_modes=(8, 8), rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 8, 8, 64))).shape
    (2, 8, 8, 64)

  Args:
    in_features: input channels ``C_in``.
    out_features: output channels ``C_out``.
    kernel_size: ``k`` or ``(kh, kw)``.
    strides: int or ``(sh, sw)``; applied to the spatial steps only.
    rank: TT ranks ``(r_0, …, r_{d-1})``, or one int for all.
    in_modes: factorization of ``C_in`` (default: two balanced factors).
    out_modes: factorization of ``C_out``, as many factors as ``in_modes``.
    padding: ``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, ``"REFLECT"``, int or ``((lo, hi), (lo, hi))``.
    input_dilation, kernel_dilation, feature_group_count, use_bias, mask, dtype,
    param_dtype, precision, kernel_init, bias_init, promote_dtype,
    preferred_element_type, implementation, depthwise_implementation, rngs: as
      :class:`~efficonv.nnx.FactorizedConv` (``nnx.Conv``'s arguments; groups, a mask
      and ``preferred_element_type`` run the reconstructed path).

  ``model.train()``/``model.eval()`` set what ``"auto"``/``"autotune"`` optimise
  (:attr:`~efficonv.nnx.FactorizedConv.deterministic`).

  References:
    Garipov et al., `Ultimate tensorization: compressing convolutional and FC
    layers alike <https://arxiv.org/abs/1611.03214>`_, 2016.
  """

  format_type = TT

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    *,
    rank: int | Sequence[int],
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
    padding: PaddingLike = "SAME",
    input_dilation: int | Sequence[int] | None = 1,
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    use_bias: bool = True,
    mask: Array | None = None,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    precision: PrecisionLike = None,
    kernel_init: Initializer | None = None,
    bias_init: Initializer = default_bias_init,
    promote_dtype: PromoteDtype = dtypes.promote_dtype,
    preferred_element_type: Dtype | None = None,
    implementation: Implementation = "auto",
    depthwise_implementation: DepthwiseImplementation = "auto",
    rngs: nnx.Rngs,
  ):
    super().__init__(
      in_features,
      out_features,
      kernel_size,
      strides,
      rank=rank,
      in_modes=in_modes,
      out_modes=out_modes,
      padding=padding,
      input_dilation=input_dilation,
      kernel_dilation=kernel_dilation,
      feature_group_count=feature_group_count,
      use_bias=use_bias,
      mask=mask,
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      kernel_init=kernel_init,
      bias_init=bias_init,
      promote_dtype=promote_dtype,
      preferred_element_type=preferred_element_type,
      implementation=implementation,
      depthwise_implementation=depthwise_implementation,
      rngs=rngs,
    )

  @classmethod
  def _format_kwargs(cls, fmt: Any) -> dict[str, Any]:
    return {"rank": fmt.rank, "in_modes": fmt.in_modes, "out_modes": fmt.out_modes}
