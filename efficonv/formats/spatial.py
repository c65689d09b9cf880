"""The spatially factorized (``kh×1`` then ``1×kw``) kernel format."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

from efficonv.formats.format import Format, Unfolding
from efficonv.formats.pytree import check_factor, register
from efficonv.formats.ranks import RankLike, check_kernel_shape, single_rank
from efficonv.kernels.factorized import spatial_conv
from efficonv.kernels.reconstruct import spatial_to_dense
from efficonv.kernels.shapes import Geometry
from efficonv.planning import Step
from efficonv.typing import Array, PrecisionLike


@register
@dataclasses.dataclass(frozen=True)
class Spatial(Format):
  """Rank-``K`` spatial factorization: ``kh×1 (C_in→K)`` then ``1×kw (K→C_out)``.

  .. math:: W_{x,y,c,s} = \\sum_{k=1}^{K} V_{x,c,k} H_{y,k,s}

  Attributes:
    vertical: ``V``, ``(kh, C_in, K)``.
    horizontal: ``H``, ``(kw, K, C_out)``.

  References:
    Jaderberg et al., `Speeding up Convolutional Neural Networks with Low Rank
    Expansions <https://arxiv.org/abs/1405.3866>`_, 2014 (scheme 2);
    Szegedy et al., `Rethinking the Inception Architecture
    <https://arxiv.org/abs/1512.00567>`_, 2015.
  """

  vertical: Array
  horizontal: Array

  scheme: ClassVar[str] = "spatial"
  _fields: ClassVar[tuple[str, ...]] = ("vertical", "horizontal")

  def __post_init__(self) -> None:
    v = check_factor("vertical", self.vertical, 3)
    h = check_factor("horizontal", self.horizontal, 3)
    if v is None or h is None:
      return
    if h[1] != v[2]:
      raise ValueError(f"horizontal must have rank {v[2]} (vertical's last axis) in axis 1, got shape {h}")

  @classmethod
  def max_rank(cls, shape: Sequence[int], **options: Any) -> int:
    """``min(kh·C_in, kw·C_out)``: the rank of the spatial unfolding."""
    cls.scheme_options(shape, **options)
    kh, kw, cin, cout = check_kernel_shape(shape)
    return min(kh * cin, kw * cout)

  @classmethod
  def _rank_bound_reason(cls) -> str:
    return "the rank of the (kh·C_in)×(kw·C_out) unfolding"

  @classmethod
  def unfoldings(cls, kernel: Any, **options: Any) -> list[Unfolding]:
    """``M_{(x,c),(y,s)} = W_{x,y,c,s}``, ``(kh·C_in) × (kw·C_out)``.

    Its truncated SVD *is* the spatial decomposition (:func:`efficonv.decompose.spatial`), so the energy it
    keeps is exactly ``1 − relative_error²``.
    """
    cls.scheme_options(kernel.shape, **options)
    kh, kw, cin, cout = kernel.shape
    return [Unfolding("(kh·C_in)×(kw·C_out) unfolding", kernel.transpose(0, 2, 1, 3).reshape(kh * cin, kw * cout))]

  @classmethod
  def factor_shapes(cls, shape: Sequence[int], rank: RankLike, **options: Any) -> list[tuple[int, ...]]:
    kh, kw, cin, cout = shape
    k = single_rank(rank)
    return [(kh, cin, k), (kw, k, cout)]

  @property
  def rank(self) -> int:
    return int(self.vertical.shape[-1])

  @property
  def kernel_size(self) -> tuple[int, int]:
    return int(self.vertical.shape[-3]), int(self.horizontal.shape[-3])

  @property
  def in_features(self) -> int:
    return int(self.vertical.shape[-2])

  @property
  def out_features(self) -> int:
    return int(self.horizontal.shape[-1])

  def to_dense(self, *, precision: PrecisionLike = None) -> Array:
    return spatial_to_dense(self.vertical, self.horizontal, precision=precision)

  def _factorized(self, x: Array, strides: Any, padding: Any, dilation: Any, depthwise: str, precision: Any) -> Array:
    return spatial_conv(
      x, self.vertical, self.horizontal, strides=strides, padding=padding, dilation=dilation, precision=precision
    )

  def steps(self, g: Geometry) -> list[Step]:
    (_, wp), (ho, wo) = g.padded_hw, g.out_hw
    kh, kw = self.kernel_size
    k, n = self.rank, g.batch
    return [
      Step("conv", n * ho * wp * kh * self.in_features * k),
      Step("conv", n * ho * wo * kw * k * self.out_features),
    ]

  def reconstruction_macs(self) -> int:
    kh, kw = self.kernel_size
    return kh * kw * self.in_features * self.rank * self.out_features
