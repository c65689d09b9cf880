"""The depthwise-separable kernel format (depthwise with multiplier, then 1×1)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from efficonv._typing import Array, Dtype, PrecisionLike
from efficonv.formats._base import Format, Geometry, check_factor, register
from efficonv.formats.init import Initializer, check_rank, init_factors
from efficonv.kernels.factorized import separable_conv
from efficonv.kernels.reconstruct import separable_to_dense


@register
@dataclasses.dataclass(frozen=True)
class Separable(Format):
  """Depthwise ``kh×kw`` with depth multiplier ``m``, then ``1×1 (C_in·m → C_out)``.

  .. math:: W_{x,y,c,s} = \\sum_{j=1}^{m} D_{x,y,c,j} P_{c m + j, s}

  Attributes:
    depthwise: ``D``, ``(kh, kw, C_in, m)``.
    pointwise: ``P``, ``(C_in·m, C_out)``.

  References:
    Chollet, `Xception: Deep Learning with Depthwise Separable Convolutions
    <https://arxiv.org/abs/1610.02357>`_, 2017.
  """

  depthwise: Array
  pointwise: Array

  _fields: ClassVar[tuple[str, ...]] = ("depthwise", "pointwise")
  has_depthwise: ClassVar[bool] = True

  def __post_init__(self) -> None:
    d = check_factor("depthwise", self.depthwise, 4)
    p = check_factor("pointwise", self.pointwise, 2)
    if d is None or p is None:
      return
    if p[0] != d[2] * d[3]:
      raise ValueError(
        f"pointwise must have C_in·m = {d[2]}·{d[3]} = {d[2] * d[3]} rows for depthwise of shape {d}, got shape {p}"
      )

  @classmethod
  def init(
    cls,
    key: jax.Array,
    in_features: int,
    out_features: int,
    kernel_size: tuple[int, int],
    depth_multiplier: int = 1,
    *,
    dtype: Dtype = jnp.float32,
    initializer: Initializer | None = None,
  ) -> Separable:
    """Random separable factors whose reconstructed kernel has LeCun-normal variance.

    Raises:
      ValueError: naming ``depth_multiplier`` when outside ``[1, max(1, min(kh·kw, C_out))]``
        (a larger multiplier adds parameters but no expressiveness).
    """
    kh, kw = kernel_size
    check_rank(
      "depth_multiplier",
      depth_multiplier,
      max(1, min(kh * kw, out_features)),
      "the rank of one input channel's (kh·kw)×C_out slice",
    )
    shapes = [(kh, kw, in_features, depth_multiplier), (in_features * depth_multiplier, out_features)]
    return cls(*init_factors(key, shapes, depth_multiplier, kh * kw * in_features, dtype, initializer))

  @property
  def depth_multiplier(self) -> int:
    return int(self.depthwise.shape[-1])

  @property
  def rank(self) -> int:
    """The depth multiplier (the rank of each input channel's slice)."""
    return self.depth_multiplier

  @property
  def kernel_size(self) -> tuple[int, int]:
    return int(self.depthwise.shape[-4]), int(self.depthwise.shape[-3])

  @property
  def in_features(self) -> int:
    return int(self.depthwise.shape[-2])

  @property
  def out_features(self) -> int:
    return int(self.pointwise.shape[-1])

  def to_dense(self, *, precision: PrecisionLike = None) -> Array:
    return separable_to_dense(self.depthwise, self.pointwise, precision=precision)

  def _factorized(self, x: Array, strides: Any, padding: Any, dilation: Any, depthwise: str, precision: Any) -> Array:
    return separable_conv(
      x,
      self.depthwise,
      self.pointwise,
      strides=strides,
      padding=padding,
      dilation=dilation,
      depthwise_implementation=depthwise,
      precision=precision,
    )

  def _steps(self, g: Geometry) -> list[tuple[str, int]]:
    ho, wo = g.out_hw
    kh, kw = self.kernel_size
    cm, n = self.in_features * self.depth_multiplier, g.batch
    return [
      ("depthwise" if self.depth_multiplier == 1 else "depthwise_multiplier", n * ho * wo * kh * kw * cm),
      ("dot", n * ho * wo * cm * self.out_features),
    ]
