"""The depthwise-separable kernel format (depthwise with multiplier, then 1×1)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from efficonv.formats.format import Format, Unfolding
from efficonv.formats.init import Initializer
from efficonv.formats.pytree import check_factor, register
from efficonv.formats.ranks import RankLike, check_kernel_shape, single_rank
from efficonv.kernels._options import pair
from efficonv.kernels.factorized import separable_conv
from efficonv.kernels.reconstruct import separable_to_dense
from efficonv.kernels.shapes import Geometry
from efficonv.planning import Step
from efficonv.typing import Array, Dtype, PrecisionLike


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

  scheme: ClassVar[str] = "separable"
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
  def max_rank(cls, shape: Sequence[int], **options: Any) -> int:
    """``min(kh·kw, C_out)``: the rank of one input channel's ``(kh·kw) × C_out`` slice.

    A larger depth multiplier adds parameters but no expressiveness.
    """
    cls.scheme_options(shape, **options)
    kh, kw, _, cout = check_kernel_shape(shape)
    return min(kh * kw, cout)

  @classmethod
  def _rank_bound_reason(cls) -> str:
    return "the rank of one input channel's (kh·kw)×C_out slice"

  @classmethod
  def unfoldings(cls, kernel: Any, **options: Any) -> list[Unfolding]:
    """Every input channel's ``(kh·kw) × C_out`` slice ``W_{:,:,c,:}``, as one ``(C_in, kh·kw, C_out)`` stack.

    Component ``i`` is kept or dropped in every channel at once (the depth multiplier is shared), so a
    rule weighs ``Σ_c σ_{c,i}²``; that is exactly what :func:`efficonv.decompose.separable` keeps.
    """
    cls.scheme_options(kernel.shape, **options)
    kh, kw, cin, cout = kernel.shape
    return [Unfolding("per-channel (kh·kw)×C_out slices", kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw, cout))]

  @classmethod
  def factor_shapes(cls, shape: Sequence[int], rank: RankLike, **options: Any) -> list[tuple[int, ...]]:
    kh, kw, cin, cout = shape
    m = single_rank(rank)
    return [(kh, kw, cin, m), (cin * m, cout)]

  @classmethod
  def init(  # type: ignore[override]  # the rank is named depth_multiplier here, with a default of 1
    cls,
    key: jax.Array,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    depth_multiplier: Any = 1,
    *,
    dtype: Dtype = jnp.float32,
    initializer: Initializer | None = None,
  ) -> Separable:
    """Random separable factors whose reconstructed kernel has LeCun-normal variance.

    Raises:
      ValueError: naming ``depth_multiplier`` when outside ``[1, min(kh·kw, C_out)]``.
    """
    ks = pair(kernel_size, "kernel_size")
    cls.check_rank(depth_multiplier, (*ks, in_features, out_features), name="depth_multiplier")
    return super().init(key, in_features, out_features, ks, depth_multiplier, dtype=dtype, initializer=initializer)

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

  def steps(self, g: Geometry) -> list[Step]:
    ho, wo = g.out_hw
    kh, kw = self.kernel_size
    cm, n = self.in_features * self.depth_multiplier, g.batch
    return [
      Step("depthwise" if self.depth_multiplier == 1 else "depthwise_multiplier", n * ho * wo * kh * kw * cm),
      Step("dot", n * ho * wo * cm * self.out_features),
    ]

  def reconstruction_macs(self) -> int:
    kh, kw = self.kernel_size
    return kh * kw * self.in_features * self.depth_multiplier * self.out_features
