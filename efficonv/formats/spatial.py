"""The spatially factorized (``kh×1`` then ``1×kw``) kernel format."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from efficonv._typing import Array, Dtype, PrecisionLike
from efficonv.formats._base import Format, Geometry, check_factor, register
from efficonv.formats.init import Initializer, check_rank, init_factors
from efficonv.kernels.factorized import spatial_conv
from efficonv.kernels.reconstruct import spatial_to_dense


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

  _fields: ClassVar[tuple[str, ...]] = ("vertical", "horizontal")

  def __post_init__(self) -> None:
    v = check_factor("vertical", self.vertical, 3)
    h = check_factor("horizontal", self.horizontal, 3)
    if v is None or h is None:
      return
    if h[1] != v[2]:
      raise ValueError(f"horizontal must have rank {v[2]} (vertical's last axis) in axis 1, got shape {h}")

  @classmethod
  def init(
    cls,
    key: jax.Array,
    in_features: int,
    out_features: int,
    kernel_size: tuple[int, int],
    rank: int,
    *,
    dtype: Dtype = jnp.float32,
    initializer: Initializer | None = None,
  ) -> Spatial:
    """Random spatial factors whose reconstructed kernel has LeCun-normal variance.

    Raises:
      ValueError: naming ``rank`` when outside ``[1, min(kh·C_in, kw·C_out)]``.
    """
    kh, kw = kernel_size
    check_rank("rank", rank, min(kh * in_features, kw * out_features), "the rank of the (kh·C_in)×(kw·C_out) unfolding")
    shapes = [(kh, in_features, rank), (kw, rank, out_features)]
    return cls(*init_factors(key, shapes, rank, kh * kw * in_features, dtype, initializer))

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

  def _steps(self, g: Geometry) -> list[tuple[str, int]]:
    (_, wp), (ho, wo) = g.padded_hw, g.out_hw
    kh, kw = self.kernel_size
    k, n = self.rank, g.batch
    return [
      ("conv", n * ho * wp * kh * self.in_features * k),
      ("conv", n * ho * wo * kw * k * self.out_features),
    ]
