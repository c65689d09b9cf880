"""The Tensor-Train kernel format of Garipov et al. (2016)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from efficonv._typing import Array, Dtype, PrecisionLike
from efficonv.formats._base import Format, Geometry, check_factor, register
from efficonv.formats.init import Initializer, check_rank, init_factors
from efficonv.kernels.factorized import tt_conv
from efficonv.kernels.reconstruct import tt_to_dense


@register
@dataclasses.dataclass(frozen=True)
class TT(Format):
  """Tensor-Train kernel with a spatial core and ``d`` channel cores.

  Channels are factorized as ``C_in = ∏ c_k`` and ``C_out = ∏ s_k``:

  .. math::
    W_{x,y,(c_1..c_d),(s_1..s_d)} = \\sum_{r} G^0_{x,y,r_0}\\, G^1_{r_0,c_1,s_1,r_1}
      \\cdots G^d_{r_{d-1},c_d,s_d,1}

  Attributes:
    spatial: ``G^0``, ``(kh, kw, r_0)``.
    cores: tuple of ``d`` arrays, ``G^k`` of shape ``(r_{k-1}, c_k, s_k, r_k)`` with ``r_d = 1``.

  References:
    Garipov et al., `Ultimate tensorization: compressing convolutional and FC
    layers alike <https://arxiv.org/abs/1611.03214>`_, 2016.
  """

  spatial: Array
  cores: tuple[Array, ...]

  _fields: ClassVar[tuple[str, ...]] = ("spatial", "cores")
  has_depthwise: ClassVar[bool] = True

  def __post_init__(self) -> None:
    if not isinstance(self.cores, tuple):
      try:
        object.__setattr__(self, "cores", tuple(self.cores))
      except TypeError as e:
        raise ValueError(f"cores must be a sequence of arrays, got {type(self.cores)}") from e
    s = check_factor("spatial", self.spatial, 3)
    if not self.cores and s is not None:
      raise ValueError("cores must hold at least one channel core")
    shapes = [check_factor(f"cores[{i}]", c, 4) for i, c in enumerate(self.cores)]
    if s is None or any(sh is None for sh in shapes):
      return
    prev = s[2]
    for i, sh in enumerate(shapes):
      assert sh is not None
      if sh[0] != prev:
        raise ValueError(f"cores[{i}] must have left rank {prev} (previous core's right rank), got shape {sh}")
      prev = sh[3]
    if prev != 1:
      raise ValueError(f"cores[{len(shapes) - 1}] must have right rank 1, got {prev}")

  @classmethod
  def init(
    cls,
    key: jax.Array,
    kernel_size: tuple[int, int],
    rank: int | Sequence[int],
    in_modes: Sequence[int],
    out_modes: Sequence[int],
    *,
    dtype: Dtype = jnp.float32,
    initializer: Initializer | None = None,
  ) -> TT:
    """Random TT cores whose reconstructed kernel has LeCun-normal variance.

    Args:
      key: PRNG key.
      kernel_size: ``(kh, kw)``.
      rank: ``(r_0, …, r_{d-1})`` or one int for all; ranks above the maximal
        TT ranks raise.
      in_modes: ``(c_1, …, c_d)``.
      out_modes: ``(s_1, …, s_d)``.
      dtype: parameter dtype.
      initializer: optional per-core initializer.

    Raises:
      ValueError: naming ``in_modes``/``out_modes``/``ranks`` when they do not fit.
    """
    ranks = tt_ranks(kernel_size, rank, in_modes, out_modes)
    kh, kw = kernel_size
    full = ranks + (1,)
    shapes = [(kh, kw, ranks[0])] + [(full[k], in_modes[k], out_modes[k], full[k + 1]) for k in range(len(in_modes))]
    factors = init_factors(key, shapes, math.prod(ranks), kh * kw * math.prod(in_modes), dtype, initializer)
    return cls(factors[0], tuple(factors[1:]))

  @property
  def rank(self) -> tuple[int, ...]:
    """TT ranks ``(r_0, …, r_{d-1})``."""
    return (int(self.spatial.shape[-1]),) + tuple(int(c.shape[-1]) for c in self.cores[:-1])

  @property
  def in_modes(self) -> tuple[int, ...]:
    return tuple(int(c.shape[-3]) for c in self.cores)

  @property
  def out_modes(self) -> tuple[int, ...]:
    return tuple(int(c.shape[-2]) for c in self.cores)

  @property
  def kernel_size(self) -> tuple[int, int]:
    return int(self.spatial.shape[-3]), int(self.spatial.shape[-2])

  @property
  def in_features(self) -> int:
    return math.prod(self.in_modes)

  @property
  def out_features(self) -> int:
    return math.prod(self.out_modes)

  def to_dense(self, *, precision: PrecisionLike = None) -> Array:
    return tt_to_dense(self.spatial, self.cores, precision=precision)

  def _factorized(self, x: Array, strides: Any, padding: Any, dilation: Any, depthwise: str, precision: Any) -> Array:
    return tt_conv(
      x,
      self.spatial,
      self.cores,
      strides=strides,
      padding=padding,
      dilation=dilation,
      depthwise_implementation=depthwise,
      precision=precision,
    )

  def _steps(self, g: Geometry) -> list[tuple[str, int]]:
    ho, wo = g.out_hw
    kh, kw = self.kernel_size
    pix = g.batch * ho * wo
    kind = "depthwise" if self.rank[0] == 1 else "depthwise_multiplier"
    steps = [(kind, pix * kh * kw * self.in_features * self.rank[0])]
    cin, cout = self.in_modes, self.out_modes
    for k, core in enumerate(self.cores):
      r_prev, c, s, r_next = (int(v) for v in core.shape[-4:])
      rest_in = math.prod(cin[k + 1 :])
      done_out = math.prod(cout[:k])
      steps.append(("dot", pix * rest_in * done_out * r_prev * c * s * r_next))
    return steps


def tt_ranks(
  kernel_size: tuple[int, int], rank: int | Sequence[int], in_modes: Sequence[int], out_modes: Sequence[int]
) -> tuple[int, ...]:
  """Validates TT modes and ranks; returns ``(r_0, …, r_{d-1})``.

  The maximal rank after core ``k`` is the smaller side of the unfolding
  ``(kh·kw·∏_{j≤k} c_j s_j) × (∏_{j>k} c_j s_j)``.

  Raises:
    ValueError: naming ``in_modes``, ``out_modes`` or ``ranks``.
  """
  in_modes, out_modes = tuple(in_modes), tuple(out_modes)
  if not in_modes or any(int(c) < 1 for c in in_modes):
    raise ValueError(f"in_modes must be a non-empty sequence of positive ints, got {in_modes}")
  if len(out_modes) != len(in_modes) or any(int(s) < 1 for s in out_modes):
    raise ValueError(f"out_modes must hold {len(in_modes)} positive ints like in_modes {in_modes}, got {out_modes}")
  d = len(in_modes)
  ranks = (int(rank),) * d if isinstance(rank, (int, jnp.integer)) else tuple(int(r) for r in rank)
  if len(ranks) != d:
    raise ValueError(f"ranks must be an int or {d} ints (r_0..r_{d - 1}), got {rank!r}")
  left = kernel_size[0] * kernel_size[1]
  total = left * math.prod(c * s for c, s in zip(in_modes, out_modes))
  for k, r in enumerate(ranks):
    bound = min(left, total // left)
    check_rank(f"ranks[{k}]", r, bound, "the TT-unfolding rank at that core")
    left *= in_modes[k] * out_modes[k]
  return ranks
