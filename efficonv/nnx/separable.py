"""``SeparableConv``: depthwise (with a depth multiplier) then pointwise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from efficonv.formats.separable import Separable
from efficonv.layer_options import (
  DepthwiseImplementation,
  Implementation,
  Initializer,
  PaddingLike,
  default_bias_init,
)
from efficonv.nnx._base import FactorizedConv, PromoteDtype
from efficonv.typing import Array, Dtype, PrecisionLike


class SeparableConv(FactorizedConv):
  """Depthwise-separable convolution with a depth multiplier.

  Depthwise ``kh×kw`` producing ``m`` maps per input channel (strides and
  dilation here), then ``1×1 (C_in·m → C_out)``. The depth multiplier plays
  the rank's part (``from_conv``'s ``rank`` is the depth multiplier).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from efficonv.nnx import SeparableConv
    >>> SeparableConv(32, 64, 3, depth_multiplier=4, rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 32))).shape
    (2, 8, 8, 64)

  Args:
    in_features: input channels ``C_in``.
    out_features: output channels ``C_out``.
    kernel_size: ``k`` or ``(kh, kw)``.
    strides: int or ``(sh, sw)``; applied to the spatial steps only.
    depth_multiplier: depthwise maps per input channel ``m``.
    padding: ``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, ``"REFLECT"``, int or ``((lo, hi), (lo, hi))``.
    input_dilation, kernel_dilation, feature_group_count, use_bias, mask, dtype,
    param_dtype, precision, kernel_init, bias_init, promote_dtype,
    preferred_element_type, implementation, depthwise_implementation, rngs: as
      :class:`~efficonv.nnx.FactorizedConv` (``nnx.Conv``'s arguments; groups, a mask
      and ``preferred_element_type`` run the reconstructed path).

  ``model.train()``/``model.eval()`` set what ``"auto"``/``"autotune"`` optimise
  (:attr:`~efficonv.nnx.FactorizedConv.deterministic`).

  References:
    Chollet, `Xception: Deep Learning with Depthwise Separable Convolutions
    <https://arxiv.org/abs/1610.02357>`_, CVPR 2017.
  """

  format_type = Separable

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    *,
    depth_multiplier: int = 1,
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
      rank=depth_multiplier,
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
    return {"depth_multiplier": fmt.depth_multiplier}
