"""The Tensor-Train kernel format of Garipov et al. (2016)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from efficonv.formats.format import Format, Unfolding
from efficonv.formats.init import Initializer, balanced_modes
from efficonv.formats.pytree import check_factor, register
from efficonv.formats.ranks import RankLike, as_int, as_rank_tuple, check_in_range, check_kernel_shape, rank_tuple
from efficonv.kernels.factorized import tt_conv
from efficonv.kernels.reconstruct import tt_to_dense
from efficonv.kernels.shapes import Geometry
from efficonv.planning import Step
from efficonv.typing import Array, Dtype, PrecisionLike


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

  scheme: ClassVar[str] = "tt"
  option_names: ClassVar[tuple[str, ...]] = ("in_modes", "out_modes")
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
  def scheme_options(
    cls,
    shape: Sequence[int],
    *,
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
    **options: Any,
  ) -> dict[str, Any]:
    """The channel factorizations ``C_in = ∏ c_k`` and ``C_out = ∏ s_k``.

    Defaults: two balanced factors (:func:`efficonv.formats.init.balanced_modes`), or as many as the other
    side was given.

    Raises:
      TypeError: naming an option TT does not take.
      ValueError: naming ``in_modes``/``out_modes`` when they are not positive ints with the channel
        counts as products and the same length.
    """
    if options:
      raise TypeError(f"scheme 'tt' takes the options in_modes and out_modes, got {sorted(options)}")
    _, _, cin, cout = check_kernel_shape(shape)
    ins = _check_modes(in_modes, "in_modes", cin, "C_in") if in_modes is not None else None
    outs = _check_modes(out_modes, "out_modes", cout, "C_out") if out_modes is not None else None
    ins = ins if ins is not None else balanced_modes(cin, len(outs) if outs is not None else 2)
    outs = outs if outs is not None else balanced_modes(cout, len(ins))
    if len(ins) != len(outs):
      raise ValueError(f"out_modes must have as many factors as in_modes {ins}, got {outs}")
    return {"in_modes": ins, "out_modes": outs}

  @classmethod
  def max_rank(cls, shape: Sequence[int], **options: Any) -> tuple[int, ...]:
    """The largest TT ranks: :func:`tt_rank_bounds` of ranks as large as any unfolding allows.

    Example:
      >>> from efficonv import TT
      >>> TT.max_rank((3, 3, 6, 4), in_modes=(2, 3), out_modes=(2, 2))
      (9, 6)
    """
    shape = check_kernel_shape(shape)
    modes = cls.scheme_options(shape, **options)
    sizes = _sizes(modes)
    big = max(shape[0] * shape[1], math.prod(sizes))
    return tt_rank_bounds(shape, (big,) * len(sizes), **modes)[0]

  @classmethod
  def normalize_rank(cls, rank: Any, shape: Sequence[int], **options: Any) -> tuple[int, ...]:
    """``(r_0, …, r_{d-1})``; one int means the same rank at every bond."""
    modes = cls.scheme_options(shape, **options)
    return as_rank_tuple(rank, len(modes["in_modes"]))

  @classmethod
  def clip_rank(cls, rank: Any, shape: Sequence[int], **options: Any) -> tuple[tuple[int, ...], bool]:
    shape = check_kernel_shape(shape)
    modes = cls.scheme_options(shape, **options)
    wanted = cls.normalize_rank(rank, shape, **modes)
    clipped, _ = tt_rank_bounds(shape, wanted, **modes)
    return clipped, clipped != wanted

  @classmethod
  def check_rank(cls, rank: Any, shape: Sequence[int], *, name: str = "rank", **options: Any) -> tuple[int, ...]:
    """Checks ``r_k ≤`` :func:`tt_rank_bounds`'s bound at every bond, left to right.

    Raises:
      ValueError: naming ``name[k]`` at the first bond out of range, with its bound.
    """
    shape = check_kernel_shape(shape)
    modes = cls.scheme_options(shape, **options)
    ranks = cls.normalize_rank(rank, shape, **modes)
    _, bounds = tt_rank_bounds(shape, ranks, **modes)
    for k, (r, bound) in enumerate(zip(ranks, bounds)):
      check_in_range(
        f"{name}[{k}]",
        r,
        bound,
        f"TT-SVD's bound at bond {k} (efficonv.formats.tt.tt_rank_bounds) for in_modes={modes['in_modes']}, "
        f"out_modes={modes['out_modes']} and {name}[:{k}]={ranks[:k]}",
      )
    return ranks

  @classmethod
  def rank_family(cls, t: int, shape: Sequence[int], **options: Any) -> tuple[int, ...]:
    """``r_k = t`` at every bond, clipped to the bounds."""
    return cls.clip_rank(t, shape, **options)[0]

  @classmethod
  def unfoldings(cls, kernel: Any, **options: Any) -> list[Unfolding]:
    """Bond ``k``'s unfolding ``(kh·kw·∏_{j<k} c_j s_j) × (∏_{j≥k} c_j s_j)`` of :func:`reorder`'s tensor.

    TT-SVD's error obeys ``||W − Ŵ||² ≤ Σ_k`` (energy discarded at bond ``k``) (Oseledets 2011, Thm. 2.2),
    so ranks keeping ``e`` at every bond keep at least ``1 − d(1 − e)``.
    """
    modes = cls.scheme_options(kernel.shape, **options)
    flat = reorder(kernel, **modes).reshape(-1)
    kh, kw = kernel.shape[:2]
    sizes = _sizes(modes)
    return [
      Unfolding(f"bond {k} unfolding", flat.reshape(kh * kw * math.prod(sizes[:k]), -1)) for k in range(len(sizes))
    ]

  @classmethod
  def rank_from_unfoldings(cls, ranks: Sequence[int], shape: Sequence[int], **options: Any) -> tuple[int, ...]:
    return tuple(int(r) for r in ranks)

  @classmethod
  def factor_shapes(cls, shape: Sequence[int], rank: RankLike, **options: Any) -> list[tuple[int, ...]]:
    kh, kw = shape[0], shape[1]
    modes = cls.scheme_options(shape, **options)
    ins, outs = modes["in_modes"], modes["out_modes"]
    full = (*rank_tuple(rank), 1)
    return [(kh, kw, full[0])] + [(full[k], ins[k], outs[k], full[k + 1]) for k in range(len(ins))]

  @classmethod
  def from_factors(cls, factors: Sequence[Any]) -> TT:
    return cls(factors[0], tuple(factors[1:]))

  @classmethod
  def init(  # type: ignore[override]  # adds the keyword-only in_modes/out_modes
    cls,
    key: jax.Array,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    rank: Any,
    *,
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
    dtype: Dtype = jnp.float32,
    initializer: Initializer | None = None,
  ) -> TT:
    """Random TT cores whose reconstructed kernel has LeCun-normal variance.

    Args:
      key: PRNG key.
      in_features: ``C_in``.
      out_features: ``C_out``.
      kernel_size: ``k`` or ``(kh, kw)``.
      rank: ``(r_0, …, r_{d-1})`` or one int for all; within :meth:`check_rank`'s bounds.
      in_modes: ``(c_1, …, c_d)`` (default: balanced).
      out_modes: ``(s_1, …, s_d)`` (default: balanced).
      dtype: parameter dtype.
      initializer: optional per-core initializer (no variance matching).

    Raises:
      ValueError: naming ``in_modes``/``out_modes``/``rank`` when they do not fit.

    Example:
      >>> import jax
      >>> from efficonv import TT
      >>> TT.init(jax.random.key(0), 64, 64, 3, rank=(3, 8), in_modes=(8, 8), out_modes=(8, 8)).rank
      (3, 8)
    """
    return super().init(
      key,
      in_features,
      out_features,
      kernel_size,
      rank,
      dtype=dtype,
      initializer=initializer,
      in_modes=in_modes,
      out_modes=out_modes,
    )

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

  def steps(self, g: Geometry) -> list[Step]:
    ho, wo = g.out_hw
    kh, kw = self.kernel_size
    pix = g.batch * ho * wo
    kind = "depthwise" if self.rank[0] == 1 else "depthwise_multiplier"
    steps = [Step(kind, pix * kh * kw * self.in_features * self.rank[0])]
    cin, cout = self.in_modes, self.out_modes
    for k, core in enumerate(self.cores):
      r_prev, c, s, r_next = (int(v) for v in core.shape[-4:])
      rest_in = math.prod(cin[k + 1 :])
      done_out = math.prod(cout[:k])
      steps.append(Step("dot", pix * rest_in * done_out * r_prev * c * s * r_next))
    return steps

  def reconstruction_macs(self) -> int:
    # tt_to_dense's chain: the accumulator (kh, kw, C_so_far, S_so_far, r) times each core in turn.
    kh, kw = self.kernel_size
    done_in = done_out = 1
    macs = 0
    for core in self.cores:
      r_prev, c, s, r_next = (int(v) for v in core.shape[-4:])
      macs += kh * kw * done_in * done_out * r_prev * c * s * r_next
      done_in, done_out = done_in * c, done_out * s
    return macs


def _sizes(modes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
  return tuple(c * m for c, m in zip(modes["in_modes"], modes["out_modes"]))


def tt_rank_bounds(
  shape: Sequence[int], rank: Sequence[int], *, in_modes: Sequence[int], out_modes: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  r"""The TT rank bound, the one used by :meth:`TT.init`, :func:`efficonv.decompose.tt` and the rank rules.

  Bond ``k`` separates ``(kh·kw, c_1 s_1, …, c_k s_k)`` from ``(c_{k+1} s_{k+1}, …, c_d s_d)``; TT-SVD
  factorizes, at bond ``k``, a matrix with ``r_{k-1}·c_k s_k`` rows (``kh·kw`` at the first bond) and
  ``∏_{j>k} c_j s_j`` columns (1-indexed modes), so

  .. math:: r_k \le \min\Big(r_{k-1} c_k s_k,\ \prod_{j > k} c_j s_j\Big), \qquad r_0 \le \min\Big(k_h k_w,
    \prod_j c_j s_j\Big).

  A larger rank adds parameters but no expressiveness (the cores can always be shrunk to these ranks without
  changing the kernel), and TT-SVD cannot produce it.

  Args:
    shape: the dense kernel's ``(kh, kw, C_in, C_out)``.
    rank: the requested ``(r_0, …, r_{d-1})``.
    in_modes: ``(c_1, …, c_d)``.
    out_modes: ``(s_1, …, s_d)``.

  Returns:
    ``(clipped ranks, the bound at each bond given the clipped ranks before it)``.

  Example:
    >>> from efficonv.formats.tt import tt_rank_bounds
    >>> tt_rank_bounds((3, 3, 6, 4), (1, 6), in_modes=(2, 3), out_modes=(2, 2))
    ((1, 4), (9, 4))
  """
  sizes = [c * s for c, s in zip(in_modes, out_modes)]
  rows = int(shape[0]) * int(shape[1])
  clipped, bounds = [], []
  for k, r in enumerate(rank):
    bound = min(rows, math.prod(sizes[k + 1 :]) * sizes[k])
    bounds.append(bound)
    clipped.append(min(int(r), bound))
    rows = clipped[-1] * sizes[k]
  return tuple(clipped), tuple(bounds)


def reorder(kernel: Any, *, in_modes: Sequence[int], out_modes: Sequence[int]) -> Any:
  """``(kh, kw, C_in, C_out)`` → ``(kh·kw, c_1 s_1, …, c_d s_d)`` (C-order raveling of the channels)."""
  kh, kw = kernel.shape[:2]
  d = len(in_modes)
  tensor = kernel.reshape((kh * kw, *in_modes, *out_modes))
  order = [0] + [axis for k in range(d) for axis in (1 + k, 1 + d + k)]
  return tensor.transpose(order).reshape((kh * kw, *(c * s for c, s in zip(in_modes, out_modes))))


def _check_modes(modes: Sequence[int], name: str, total: int, what: str) -> tuple[int, ...]:
  try:
    values = tuple(as_int(v) for v in modes)
  except TypeError as e:
    raise ValueError(f"{name} must be a sequence of positive ints with product {what} = {total}, got {modes!r}") from e
  if not values or any(v is None or v < 1 for v in values) or math.prod(v for v in values if v) != total:
    raise ValueError(
      f"{name} must be a non-empty sequence of positive ints with product {what} = {total}, got {modes!r}"
    )
  return tuple(int(v) for v in values if v is not None)
