"""The Tucker-2 kernel format of Kim et al. (2016)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

from efficonv.formats.cp import mode_unfolding
from efficonv.formats.format import Format, Unfolding
from efficonv.formats.pytree import check_factor, register
from efficonv.formats.ranks import RankLike, as_rank_tuple, check_kernel_shape, rank_tuple
from efficonv.kernels.factorized import tucker2_conv
from efficonv.kernels.reconstruct import tucker2_to_dense
from efficonv.kernels.shapes import Geometry
from efficonv.planning import Step
from efficonv.typing import Array, PrecisionLike


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

  scheme: ClassVar[str] = "tucker2"
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
  def max_rank(cls, shape: Sequence[int], **options: Any) -> tuple[int, int]:
    """``(C_in, C_out)``: the ranks of the channel unfoldings cannot exceed the channel counts."""
    cls.scheme_options(shape, **options)
    _, _, cin, cout = check_kernel_shape(shape)
    return (cin, cout)

  @classmethod
  def normalize_rank(cls, rank: Any, shape: Sequence[int], **options: Any) -> tuple[int, int]:
    """``(R1, R2)``; one int means ``(R, R)``."""
    r1, r2 = as_rank_tuple(rank, 2)
    return (r1, r2)

  @classmethod
  def _rank_bound_reason(cls) -> str:
    return "R1 ≤ C_in and R2 ≤ C_out"

  @classmethod
  def rank_family(cls, t: int, shape: Sequence[int], **options: Any) -> tuple[int, int]:
    """``(⌈t·C_in / C⌉, ⌈t·C_out / C⌉)`` with ``C = max(C_in, C_out)``: both ranks scale with their channels."""
    _, _, cin, cout = check_kernel_shape(shape)
    big = max(cin, cout)
    t = min(t, big)
    return (-(-t * cin // big), -(-t * cout // big))

  @classmethod
  def unfoldings(cls, kernel: Any, **options: Any) -> list[Unfolding]:
    """The ``C_in``-unfolding ``C_in × (kh·kw·C_out)`` (chooses ``R1``) and the ``C_out``-unfolding (``R2``).

    Truncated HOSVD at ranks keeping ``e_1`` and ``e_2`` of their energies loses at most
    ``(1 − e_1) + (1 − e_2)`` of the kernel's (Kim et al. 2016 choose them by VBMF).
    """
    cls.scheme_options(kernel.shape, **options)
    return [
      Unfolding("C_in-unfolding", mode_unfolding(kernel, 2)),
      Unfolding("C_out-unfolding", mode_unfolding(kernel, 3)),
    ]

  @classmethod
  def rank_from_unfoldings(cls, ranks: Sequence[int], shape: Sequence[int], **options: Any) -> tuple[int, int]:
    return (int(ranks[0]), int(ranks[1]))

  @classmethod
  def factor_shapes(cls, shape: Sequence[int], rank: RankLike, **options: Any) -> list[tuple[int, ...]]:
    kh, kw, cin, cout = shape
    r1, r2 = rank_tuple(rank)
    return [(cin, r1), (kh, kw, r1, r2), (r2, cout)]

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

  def steps(self, g: Geometry) -> list[Step]:
    (h, w), (ho, wo) = g.in_hw, g.out_hw
    kh, kw = self.kernel_size
    r1, r2 = self.rank
    n = g.batch
    return [
      Step("dot", n * h * w * self.in_features * r1),
      Step("conv", n * ho * wo * kh * kw * r1 * r2),
      Step("dot", n * ho * wo * r2 * self.out_features),
    ]

  def reconstruction_macs(self) -> int:
    # The core against L first (R1·R2·C_out per tap), then U (C_in·R1·C_out per tap).
    kh, kw = self.kernel_size
    r1, r2 = self.rank
    return kh * kw * r1 * self.out_features * (r2 + self.in_features)
