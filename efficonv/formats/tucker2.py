"""The Tucker-2 kernel format of Kim et al. (2015)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from efficonv._typing import Array, Dtype, PrecisionLike
from efficonv.formats._base import Format, Geometry, check_factor, register
from efficonv.formats.init import Initializer, check_rank, init_factors
from efficonv.kernels.factorized import tucker2_conv
from efficonv.kernels.reconstruct import tucker2_to_dense


@register
@dataclasses.dataclass(frozen=True)
class Tucker2(Format):
  """Tucker-2 kernel: ``1×1 (C_in→R1) → kh×kw (R1→R2) → 1×1 (R2→C_out)``.

  .. math:: W_{x,y,c,s} = \\sum_{a,b} U_{c,a} G_{x,y,a,b} L_{b,s}

  Attributes:
    first: ``U``, ``(C_in, R1)``.
    core: ``G``, ``(kh, kw, R1, R2)``.
    last: ``L``, ``(R2, C_out)``.

  References:
    Kim et al., `Compression of Deep Convolutional Neural Networks for Fast and
    Low Power Mobile Applications <https://arxiv.org/abs/1511.06530>`_, ICLR 2016.
  """

  first: Array
  core: Array
  last: Array

  _fields: ClassVar[tuple[str, ...]] = ("first", "core", "last")

  def __post_init__(self) -> None:
    f = check_factor("first", self.first, 2)
    c = check_factor("core", self.core, 4)
    last = check_factor("last", self.last, 2)
    if f is None or c is None or last is None:
      return
    if c[2] != f[1]:
      raise ValueError(f"core must have {f[1]} input channels (first's rank R1) in axis 2, got shape {c}")
    if last[0] != c[3]:
      raise ValueError(f"last must have {c[3]} rows (core's output rank R2), got shape {last}")

  @classmethod
  def init(
    cls,
    key: jax.Array,
    in_features: int,
    out_features: int,
    kernel_size: tuple[int, int],
    rank: tuple[int, int],
    *,
    dtype: Dtype = jnp.float32,
    initializer: Initializer | None = None,
  ) -> Tucker2:
    """Random Tucker-2 factors whose reconstructed kernel has LeCun-normal variance.

    Raises:
      ValueError: naming ``ranks`` when ``R1`` is outside ``[1, C_in]`` or ``R2`` outside ``[1, C_out]``.
    """
    kh, kw = kernel_size
    r1, r2 = rank
    check_rank("ranks[0]", r1, in_features, "the input channels")
    check_rank("ranks[1]", r2, out_features, "the output channels")
    shapes = [(in_features, r1), (kh, kw, r1, r2), (r2, out_features)]
    return cls(*init_factors(key, shapes, r1 * r2, kh * kw * in_features, dtype, initializer))

  @property
  def rank(self) -> tuple[int, int]:
    return int(self.core.shape[-2]), int(self.core.shape[-1])

  @property
  def kernel_size(self) -> tuple[int, int]:
    return int(self.core.shape[-4]), int(self.core.shape[-3])

  @property
  def in_features(self) -> int:
    return int(self.first.shape[-2])

  @property
  def out_features(self) -> int:
    return int(self.last.shape[-1])

  def to_dense(self, *, precision: PrecisionLike = None) -> Array:
    return tucker2_to_dense(self.first, self.core, self.last, precision=precision)

  def _factorized(self, x: Array, strides: Any, padding: Any, dilation: Any, depthwise: str, precision: Any) -> Array:
    return tucker2_conv(
      x, self.first, self.core, self.last, strides=strides, padding=padding, dilation=dilation, precision=precision
    )

  def _steps(self, g: Geometry) -> list[tuple[str, int]]:
    (h, w), (ho, wo) = g.in_hw, g.out_hw
    kh, kw = self.kernel_size
    r1, r2 = self.rank
    n = g.batch
    return [
      ("dot", n * h * w * self.in_features * r1),
      ("conv", n * ho * wo * kh * kw * r1 * r2),
      ("dot", n * ho * wo * r2 * self.out_features),
    ]
