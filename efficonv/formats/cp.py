"""The CP (canonical polyadic) kernel format of Lebedev et al. (2014)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from efficonv._typing import Array, Dtype, PrecisionLike
from efficonv.formats._base import Format, Geometry, check_factor, register
from efficonv.formats.init import Initializer, check_rank, init_factors, max_cp_rank
from efficonv.kernels.factorized import cp_conv
from efficonv.kernels.reconstruct import cp_to_dense


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
    CP-Decomposition <https://arxiv.org/abs/1412.6553>`_, ICLR 2015.
  """

  first: Array
  vertical: Array
  horizontal: Array
  last: Array

  _fields: ClassVar[tuple[str, ...]] = ("first", "vertical", "horizontal", "last")
  has_depthwise: ClassVar[bool] = True

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
  ) -> CP:
    """Random CP factors whose reconstructed kernel has LeCun-normal variance.

    Raises:
      ValueError: naming ``rank`` when it is < 1 or above the maximal CP rank
        of a ``(kh, kw, C_in, C_out)`` tensor.
    """
    kh, kw = kernel_size
    check_rank(
      "rank",
      rank,
      max_cp_rank((kh, kw, in_features, out_features)),
      "the maximal CP rank of the kernel: product of all its sizes but the largest",
    )
    shapes = [(in_features, rank), (kh, rank), (kw, rank), (rank, out_features)]
    return cls(*init_factors(key, shapes, rank, kh * kw * in_features, dtype, initializer))

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

  def _steps(self, g: Geometry) -> list[tuple[str, int]]:
    (h, w), (_, wp), (ho, wo) = g.in_hw, g.padded_hw, g.out_hw
    kh, kw = self.kernel_size
    r, n = self.rank, g.batch
    return [
      ("dot", n * h * w * self.in_features * r),
      ("depthwise", n * ho * wp * r * kh),
      ("depthwise", n * ho * wo * r * kw),
      ("dot", n * ho * wo * r * self.out_features),
    ]
