"""The CP (canonical polyadic) kernel format of Lebedev et al. (2014)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from efficonv.formats.format import Format, Unfolding
from efficonv.formats.pytree import check_factor, register
from efficonv.formats.ranks import RankLike, check_kernel_shape, single_rank
from efficonv.kernels.factorized import cp_conv
from efficonv.kernels.reconstruct import cp_to_dense
from efficonv.kernels.shapes import Geometry
from efficonv.planning import Step
from efficonv.typing import Array, PrecisionLike

#: The four modes of a ``(kh, kw, C_in, C_out)`` kernel, named in rank reasons.
MODES = ("kh", "kw", "C_in", "C_out")


@register
@dataclasses.dataclass(frozen=True)
class CP(Format):
  """Rank-``R`` CP kernel: ``1×1 → depthwise kh×1 → depthwise 1×kw → 1×1``.

  .. math:: W_{x,y,c,s} = \\sum_{r=1}^{R} U_{c,r} V_{x,r} H_{y,r} L_{r,s}

  Attributes:
    first: ``U``, ``(C_in, R)``.
    vertical: ``V``, ``(kh, R)``.
    horizontal: ``H``, ``(kw, R)``.
    last: ``L``, ``(R, C_out)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import efficonv
    >>> k = jax.random.split(jax.random.key(0), 4)
    >>> f = efficonv.CP(jax.random.normal(k[0], (16, 4)), jax.random.normal(k[1], (3, 4)),
    ...                 jax.random.normal(k[2], (3, 4)), jax.random.normal(k[3], (4, 32)))
    >>> f.to_dense().shape
    (3, 3, 16, 32)
    >>> f.conv(jnp.ones((2, 8, 8, 16)), strides=2).shape
    (2, 4, 4, 32)

  References:
    Lebedev et al., `Speeding-up Convolutional Neural Networks Using Fine-tuned
    CP-Decomposition <https://arxiv.org/abs/1412.6553>`_, 2014 (ICLR 2015).
  """

  first: Array
  vertical: Array
  horizontal: Array
  last: Array

  scheme: ClassVar[str] = "cp"
  _fields: ClassVar[tuple[str, ...]] = ("first", "vertical", "horizontal", "last")
  has_depthwise: ClassVar[bool] = True
  rank_from_unfoldings_is_lower_bound: ClassVar[bool] = True

  def __post_init__(self) -> None:
    f = check_factor("first", self.first, 2)
    v = check_factor("vertical", self.vertical, 2)
    h = check_factor("horizontal", self.horizontal, 2)
    last = check_factor("last", self.last, 2)
    if f is None or v is None or h is None or last is None:
      return
    rank = f[1]
    for name, got in (("vertical", v[1]), ("horizontal", h[1]), ("last", last[0])):
      if got != rank:
        raise ValueError(f"{name} must have rank {rank} (from first's shape {f}) in its rank axis, got {got}")

  @classmethod
  def max_rank(cls, shape: Sequence[int], **options: Any) -> int:
    """``kh·kw·C_in·C_out / max(kh, kw, C_in, C_out)``: no tensor of ``shape`` has a larger CP rank.

    Example:
      >>> from efficonv import CP
      >>> CP.max_rank((3, 3, 64, 64))
      576
    """
    cls.scheme_options(shape, **options)
    shape = check_kernel_shape(shape)
    return math.prod(shape) // max(shape)

  @classmethod
  def _rank_bound_reason(cls) -> str:
    return "the maximal CP rank of the kernel: product of all its sizes but the largest"

  @classmethod
  def unfoldings(cls, kernel: Any, **options: Any) -> list[Unfolding]:
    """The four mode unfoldings ``W_(n)``, ``(shape[n], rest)``, in :data:`MODES` order.

    A rank-``R`` CP tensor has every mode unfolding of rank ``≤ R``, so their ranks bound ``R`` from below
    (:meth:`rank_from_unfoldings` takes the largest).
    """
    cls.scheme_options(kernel.shape, **options)
    return [Unfolding(f"{name}-unfolding", mode_unfolding(kernel, axis)) for axis, name in enumerate(MODES)]

  @classmethod
  def rank_from_unfoldings(cls, ranks: Sequence[int], shape: Sequence[int], **options: Any) -> int:
    return max(int(r) for r in ranks)

  @classmethod
  def factor_shapes(cls, shape: Sequence[int], rank: RankLike, **options: Any) -> list[tuple[int, ...]]:
    kh, kw, cin, cout = shape
    r = single_rank(rank)
    return [(cin, r), (kh, r), (kw, r), (r, cout)]

  @property
  def rank(self) -> int:
    return int(self.first.shape[-1])

  @property
  def kernel_size(self) -> tuple[int, int]:
    return int(self.vertical.shape[-2]), int(self.horizontal.shape[-2])

  @property
  def in_features(self) -> int:
    return int(self.first.shape[-2])

  @property
  def out_features(self) -> int:
    return int(self.last.shape[-1])

  def to_dense(self, *, precision: PrecisionLike = None) -> Array:
    return cp_to_dense(self.first, self.vertical, self.horizontal, self.last, precision=precision)

  def _factorized(self, x: Array, strides: Any, padding: Any, dilation: Any, depthwise: str, precision: Any) -> Array:
    return cp_conv(
      x,
      self.first,
      self.vertical,
      self.horizontal,
      self.last,
      strides=strides,
      padding=padding,
      dilation=dilation,
      depthwise_implementation=depthwise,
      precision=precision,
    )

  def steps(self, g: Geometry) -> list[Step]:
    (h, w), (_, wp), (ho, wo) = g.in_hw, g.padded_hw, g.out_hw
    kh, kw = self.kernel_size
    r, n = self.rank, g.batch
    return [
      Step("dot", n * h * w * self.in_features * r),
      Step("depthwise", n * ho * wp * r * kh),
      Step("depthwise", n * ho * wo * r * kw),
      Step("dot", n * ho * wo * r * self.out_features),
    ]

  def reconstruction_macs(self) -> int:
    # (V ⊙ H) then ⊗ U, then the rank sum against L: the last contraction dominates.
    kh, kw = self.kernel_size
    taps, r = kh * kw, self.rank
    return taps * r + taps * self.in_features * r + taps * self.in_features * r * self.out_features


def mode_unfolding(kernel: Any, axis: int) -> Any:
  """``W_(axis)``: the kernel's ``axis`` fibers as columns, ``(shape[axis], rest)`` (NumPy or JAX)."""
  perm = (axis, *(a for a in range(kernel.ndim) if a != axis))
  return kernel.transpose(perm).reshape(kernel.shape[axis], -1)
