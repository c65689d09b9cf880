"""Rank selection: which rank a factorized conv should get, and why.

One entry point, :func:`choose_rank`, takes a scheme, a dense HWIO kernel (or only its shape) and a rule:

* :class:`Fixed` — a given rank, clipped to the scheme's valid range.
* :class:`ParamFraction` — the largest rank whose factors have ``≤ fraction × dense`` parameters.
* :class:`MacReduction` — the largest rank with ``dense MACs / factorized MACs ≥ reduction`` on an input
  shape.
* :class:`Energy` — the smallest rank keeping ``≥ energy`` of the squared singular values of the scheme's
  unfolding(s) (see below).
* :class:`VBMF` — the rank analytic empirical variational Bayesian matrix factorization (EVBMF,
  :mod:`efficonv.vbmf`) finds in the same unfolding(s), as Kim et al. (2016) do for Tucker-2.

and returns a :class:`RankChoice`: a rank the scheme's format accepts (``Format.init``) and its
:mod:`efficonv.decompose` function accepts, plus a sentence saying why. (:class:`Speedup` is no rule: it is,
with :class:`MacReduction` and :class:`ParamFraction`, a whole-network target of :func:`efficonv.search`.) A rule never raises because its
target cannot be met: it returns the closest valid rank and says so (``details["target_met"]`` is
``False``), so a compression report can show it. Ranks outside the valid range are clipped, and the
reason says so (``details["clipped"]``).

Every fact about a scheme comes from its format class, found through :mod:`efficonv.schemes`: the rank's
kind and valid range (:meth:`efficonv.Format.max_rank`, :meth:`~efficonv.Format.clip_rank`), the
one-parameter family of ranks the budget rules search (:meth:`~efficonv.Format.rank_family`: ``t`` for CP,
spatial and separable; ranks proportional to the channel counts for Tucker-2; ``t`` at every TT bond,
clipped), and the unfoldings whose singular values the :class:`Energy` and :class:`VBMF` rules read
(:meth:`~efficonv.Format.unfoldings`, combined into one rank by
:meth:`~efficonv.Format.rank_from_unfoldings`). This module only holds the rules.

Budget rules (:class:`ParamFraction`, :class:`MacReduction`) take the largest ``t`` meeting the budget, so
``t + 1`` does not meet it. :class:`Energy` takes, per unfolding, the smallest rank keeping ``≥ energy`` of
its squared singular values (for a stack of matrices, component ``i`` weighs ``Σ_b σ_{b,i}²``);
:class:`VBMF` takes EVBMF's rank of each unfolding. For CP the combination is a heuristic lower bound (a
rank-``R`` CP tensor has every mode unfolding of rank ``≤ R``): CP-ALS at that rank usually keeps *less*
than the energy asked; check ``FitInfo.relative_error``.

References:
  Kim et al., `Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile
  Applications <https://arxiv.org/abs/1511.06530>`_, ICLR 2016.
  Nakajima et al., `Global analytic solution of fully-observed variational Bayesian matrix factorization
  <https://jmlr.org/papers/v14/nakajima13a.html>`_, JMLR 2013.
  Oseledets, `Tensor-Train Decomposition <https://doi.org/10.1137/090752286>`_, SIAM J. Sci. Comput. 2011.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, TypeGuard, Union

import jax
import jax.numpy as jnp
import numpy as np

from efficonv import schemes
from efficonv.formats import Format, RankLike
from efficonv.formats.ranks import check_kernel_shape, single_rank
from efficonv.kernels._options import PaddingLike
from efficonv.vbmf import evbmf

# Relative slack when comparing kept energy with the target, so that a target hit exactly (up to the
# rounding of the cumulative sum) counts as met.
_ENERGY_RTOL = 1e-10


# --- rules ----------------------------------------------------------------------------------------


def _is_int(value: object) -> TypeGuard[int | np.integer]:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Fixed:
  """A given rank, clipped to the scheme's valid range.

  Attributes:
    rank: an int; or ``(R1, R2)`` for Tucker-2 and ``(r_0, …, r_{d-1})`` for TT (an int there means the same
      rank for every mode/bond).
  """

  rank: RankLike

  def __post_init__(self) -> None:
    ranks = (self.rank,) if _is_int(self.rank) else self.rank
    if isinstance(ranks, (list, tuple)) and ranks and all(_is_int(r) and r >= 1 for r in ranks):
      object.__setattr__(self, "rank", int(self.rank) if _is_int(self.rank) else tuple(int(r) for r in ranks))
      return
    raise ValueError(f"rank must be an int >= 1 or a non-empty tuple of ints >= 1, got {self.rank!r}")


@dataclasses.dataclass(frozen=True)
class ParamFraction:
  """The largest rank whose factors have at most ``fraction`` times the dense kernel's parameters.

  Attributes:
    fraction: in ``(0, 1]``.
  """

  fraction: float

  def __post_init__(self) -> None:
    object.__setattr__(self, "fraction", _check_unit_interval(self.fraction, "fraction"))


@dataclasses.dataclass(frozen=True)
class MacReduction:
  """The largest rank with ``dense MACs / factorized MACs ≥ reduction`` on ``input_shape``.

  Attributes:
    reduction: ``≥ 1`` (finite).
  """

  reduction: float

  def __post_init__(self) -> None:
    value = self.reduction
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
      raise ValueError(f"reduction must be a float >= 1, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) >= 1.0):
      raise ValueError(f"reduction must be a finite float >= 1, got {value!r}")
    object.__setattr__(self, "reduction", float(value))


@dataclasses.dataclass(frozen=True)
class Energy:
  """The smallest rank keeping ``≥ energy`` of the squared singular values of the scheme's unfolding(s).

  Attributes:
    energy: in ``(0, 1]``.
  """

  energy: float

  def __post_init__(self) -> None:
    object.__setattr__(self, "energy", _check_unit_interval(self.energy, "energy"))


@dataclasses.dataclass(frozen=True)
class VBMF:
  """The rank analytic empirical VBMF (:func:`efficonv.vbmf.evbmf`) finds in the scheme's unfolding(s).

  A rank of 0 (the unfolding looks like pure noise) is raised to 1, and the reason says so.
  """


@dataclasses.dataclass(frozen=True)
class Speedup:
  """A whole-network target of :func:`efficonv.search`: the predicted time of the network over that of the
  compressed one is at least ``speedup``.

  Not a per-layer rule (:func:`choose_rank` and :class:`efficonv.Policy` reject it): a speedup is a property
  of the whole network on one device, predicted from each conv's candidates timed at their input shapes (see
  :func:`efficonv.search`).

  Attributes:
    speedup: ``≥ 1`` (finite).
  """

  speedup: float

  def __post_init__(self) -> None:
    value = self.speedup
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
      raise ValueError(f"speedup must be a float >= 1, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) >= 1.0):
      raise ValueError(f"speedup must be a finite float >= 1, got {value!r}")
    object.__setattr__(self, "speedup", float(value))


Rule = Union[Fixed, ParamFraction, MacReduction, Energy, VBMF]
RULES = (Fixed, ParamFraction, MacReduction, Energy, VBMF)
#: The whole-network targets :func:`efficonv.search` meets (MACs, parameters, predicted time).
TARGETS = (MacReduction, ParamFraction, Speedup)


def _check_unit_interval(value: object, name: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise ValueError(f"{name} must be a float in (0, 1], got {value!r}")
  v = float(value)
  if not 0.0 < v <= 1.0:
    raise ValueError(f"{name} must be a float in (0, 1], got {value!r}")
  return v


# --- result ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RankChoice:
  """A chosen rank and why.

  Attributes:
    rank: an int (CP, spatial), ``(R1, R2)`` (Tucker-2), ``(r_0, …, r_{d-1})`` (TT) or the depth multiplier
      (separable); always valid for the scheme.
    reason: one or two sentences for a human (shown in compression reports).
    rule: ``repr`` of the rule.
    details: machine-readable facts: always ``max_rank``, ``params``, ``dense_params``, ``param_fraction``,
      ``clipped`` and ``target_met``; ``macs``, ``dense_macs``, ``mac_reduction`` when an input shape was
      given; ``energy_kept`` per unfolding for :class:`Energy` (CP adds ``mode_ranks``, TT
      ``unclipped_rank``); ``sigma2`` and ``vbmf_rank`` (before clipping) for :class:`VBMF` (separable adds
      ``channel_ranks``); ``in_modes``/``out_modes`` for TT.
  """

  rank: RankLike
  reason: str
  rule: str
  details: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)


# --- the rank space of one scheme for one kernel shape ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Space:
  """A scheme's format class with a kernel shape and the scheme's options (all facts come from the format)."""

  format: type[Format]
  shape: tuple[int, int, int, int]
  options: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def scheme(self) -> str:
    return self.format.scheme

  def max_rank(self) -> RankLike:
    return self.format.max_rank(self.shape, **self.options)

  def clip(self, rank: RankLike) -> tuple[RankLike, bool]:
    return self.format.clip_rank(rank, self.shape, **self.options)

  def family_size(self) -> int:
    return self.format.family_size(self.shape, **self.options)

  def family(self, t: int) -> RankLike:
    return self.format.rank_family(t, self.shape, **self.options)

  def abstract(self, rank: RankLike) -> Format:
    return self.format.abstract(self.shape, rank, **self.options)


def max_rank(scheme: str, shape: Sequence[int], **options: Any) -> RankLike:
  """The largest valid rank of ``scheme`` for a kernel of ``shape`` (the format's :meth:`~efficonv.Format.max_rank`).

  Args:
    scheme: a name from :func:`efficonv.schemes.names`.
    shape: ``(kh, kw, C_in, C_out)``.
    **options: the scheme's options (TT: ``in_modes``, ``out_modes``; default two balanced factors each).

  Returns:
    An int, or a tuple for Tucker-2 and TT.
  """
  return _space(scheme, _check_shape(shape), options).max_rank()


# --- entry point ----------------------------------------------------------------------------------


def choose_rank(
  scheme: str,
  kernel_or_shape: Any,
  rule: Rule | RankLike,
  *,
  input_shape: Sequence[int] | None = None,
  strides: int | Sequence[int] = 1,
  padding: PaddingLike = "SAME",
  dilation: int | Sequence[int] = 1,
  **options: Any,
) -> RankChoice:
  """Chooses the rank of a factorized conv by ``rule`` (see the module docstring for each rule's definition).

  Example:
    >>> import numpy as np
    >>> from efficonv import rank
    >>> choice = rank.choose_rank("cp", (3, 3, 64, 64), rank.ParamFraction(0.25))
    >>> choice.rank, choice.details["params"] <= 0.25 * choice.details["dense_params"]
    (68, True)

  Args:
    scheme: ``"cp"``, ``"tucker2"``, ``"tt"``, ``"spatial"`` or ``"separable"``.
    kernel_or_shape: the dense HWIO kernel ``(kh, kw, C_in, C_out)`` (any array; concrete, not traced), or
      only its shape as a tuple of 4 ints (enough for :class:`Fixed`, :class:`ParamFraction` and
      :class:`MacReduction`).
    rule: a :class:`Fixed`, :class:`ParamFraction`, :class:`MacReduction`, :class:`Energy` or
      :class:`VBMF`; a bare int or tuple means :class:`Fixed`.
    input_shape: NHWC input shape; required by :class:`MacReduction`, otherwise only used to report MACs.
    strides, padding, dilation: the conv's options (they change the MACs).
    **options: the scheme's options (:meth:`efficonv.Format.scheme_options`): TT's ``in_modes``/``out_modes``
      (``∏ in_modes = C_in``, ``∏ out_modes = C_out``; default two balanced factors each).

  Returns:
    A :class:`RankChoice` whose ``rank`` is valid for the scheme's format and decomposition.

  Raises:
    ValueError: naming ``scheme``, ``kernel_or_shape`` (not 4-D; only a shape for a rule that needs the
      values), ``kernel`` (NaN/Inf), ``rule``, ``rank`` (wrong kind), ``input_shape`` (missing for
      :class:`MacReduction`, or not NHWC with ``C_in`` channels), ``in_modes``/``out_modes``.
  """
  schemes.get(scheme)  # validates the name first
  if isinstance(rule, (list, tuple)) or _is_int(rule):
    rule = Fixed(tuple(rule) if isinstance(rule, list) else rule)
  if isinstance(rule, Speedup):
    raise ValueError(f"rule must be a per-layer rank rule, got {rule!r}: a whole-network target of efficonv.search")
  if not isinstance(rule, RULES):
    raise ValueError(
      "rule must be Fixed, ParamFraction, MacReduction, Energy or VBMF (from efficonv.rank), "
      f"or an int/tuple, got {rule!r}"
    )
  shape, kernel = _kernel_or_shape(kernel_or_shape)
  space = _space(scheme, shape, options)
  if isinstance(rule, (Energy, VBMF)) and kernel is None:
    raise ValueError(
      f"kernel_or_shape must be the kernel array (not its shape {shape}) for {rule!r}: it needs the singular values"
    )
  if isinstance(rule, MacReduction) and input_shape is None:
    raise ValueError(f"input_shape must be given (NHWC) for {rule!r}: MACs depend on the input size")
  costs = _Costs(space, input_shape, strides, padding, dilation)
  costs.evaluate(space.family(1))  # validates input_shape early, naming it

  if isinstance(rule, Fixed):
    rank, clipped = space.clip(rule.rank)
    reason = f"fixed rank {_fmt(rule.rank)}"
    extra: dict[str, Any] = {"target_met": True}
  elif isinstance(rule, (ParamFraction, MacReduction)):
    rank, clipped, reason, extra = _budget(space, costs, rule)
  elif isinstance(rule, Energy):
    assert kernel is not None
    rank, clipped, reason, extra = _energy(space, kernel, rule.energy)
  else:
    assert kernel is not None
    # The kernel is float64 here; the noise floor is the resolution of the dtype it came in.
    source = getattr(kernel_or_shape, "dtype", np.float64)
    eps = float(np.finfo(source).eps) if jnp.issubdtype(source, jnp.floating) else float(np.finfo(np.float64).eps)
    rank, clipped, reason, extra = _vbmf(space, kernel, eps)

  details = {"max_rank": space.max_rank(), "clipped": bool(clipped), **extra, **costs.evaluate(rank)}
  details.update(space.options)
  if clipped:
    reason += f"; clipped to {_fmt(rank)} (the maximal valid rank is {_fmt(space.max_rank())})"
  return RankChoice(rank, reason + ".", repr(rule), details)


# --- inputs ---------------------------------------------------------------------------------------


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
  return check_kernel_shape(shape, "kernel_or_shape")


def _kernel_or_shape(value: Any) -> tuple[tuple[int, int, int, int], np.ndarray | None]:
  """``(shape, kernel as float64 or None)``.

  Raises:
    ValueError: naming ``kernel_or_shape`` (not 4-D, not real, traced) or ``kernel`` (NaN/Inf).
  """
  if isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
    return _check_shape(value), None
  if isinstance(value, jax.core.Tracer):
    raise ValueError("kernel_or_shape must be a concrete kernel (rank selection runs outside jit), got a tracer")
  if not hasattr(value, "dtype"):
    value = np.asarray(value)
  if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
    raise ValueError(f"kernel_or_shape must be a real (float or int) kernel, got dtype {value.dtype}")
  kernel = np.asarray(value).astype(np.float64)
  if kernel.ndim != 4 or kernel.size == 0:
    raise ValueError(
      f"kernel_or_shape must be a non-empty 4-D HWIO kernel (kh, kw, C_in, C_out) or its shape, got shape "
      f"{kernel.shape}"
    )
  if not np.isfinite(kernel).all():
    raise ValueError("kernel must be finite, got NaN or Inf entries")
  return check_kernel_shape(kernel.shape, "kernel_or_shape"), kernel


def _space(scheme: str, shape: tuple[int, int, int, int], options: dict[str, Any]) -> _Space:
  fmt = schemes.get(scheme).format
  try:
    return _Space(fmt, shape, fmt.scheme_options(shape, **options))
  except TypeError as e:  # an option the scheme does not take: a bad value of choose_rank's arguments
    raise ValueError(str(e)) from e


# --- costs ----------------------------------------------------------------------------------------


class _Costs:
  """Parameters and MACs of a rank, from the formats' own formulas (shape-only factors)."""

  def __init__(
    self,
    space: _Space,
    input_shape: Sequence[int] | None,
    strides: int | Sequence[int],
    padding: PaddingLike,
    dilation: int | Sequence[int],
  ) -> None:
    self.space = space
    self.input_shape = None if input_shape is None else tuple(input_shape)
    self.conv_kwargs: dict[str, Any] = {"strides": strides, "padding": padding, "dilation": dilation}

  def evaluate(self, rank: RankLike) -> dict[str, Any]:
    fmt = self.space.abstract(rank)
    params, dense = fmt.params(), fmt.dense_params()
    out: dict[str, Any] = {"params": params, "dense_params": dense, "param_fraction": params / dense}
    if self.input_shape is not None:
      macs = fmt.macs(self.input_shape, **self.conv_kwargs)
      dense_macs = fmt.dense_macs(self.input_shape, **self.conv_kwargs)
      out.update(macs=macs, dense_macs=dense_macs, mac_reduction=dense_macs / max(macs, 1))
    return out


# --- rules' implementations -----------------------------------------------------------------------


def _fmt(rank: Any) -> str:
  return str(tuple(int(r) for r in rank)) if isinstance(rank, (tuple, list)) else str(int(rank))


def _budget(
  space: _Space, costs: _Costs, rule: ParamFraction | MacReduction
) -> tuple[RankLike, bool, str, dict[str, Any]]:
  """Largest family member with ``params ≤ fraction × dense`` or ``dense MACs / MACs ≥ reduction``.

  Parameters and MACs grow along the family, so a bisection finds the boundary.
  """
  by_params = isinstance(rule, ParamFraction)
  bound = rule.fraction if isinstance(rule, ParamFraction) else rule.reduction

  def ok(t: int) -> bool:
    c = costs.evaluate(space.family(t))
    if by_params:
      return c["params"] <= bound * c["dense_params"]
    return c["dense_macs"] >= bound * c["macs"]

  def describe(rank: RankLike) -> str:
    c = costs.evaluate(rank)
    if by_params:
      return f"{c['params']:,} params = {c['param_fraction']:.4g} × dense ({c['dense_params']:,})"
    return f"{c['macs']:,} MACs = dense ({c['dense_macs']:,}) / {c['mac_reduction']:.4g}"

  goal = f"params ≤ {bound:g} × dense" if by_params else f"MAC reduction ≥ {bound:g}"
  if not ok(1):
    rank = space.family(1)
    reason = f"target not met: even the smallest rank {_fmt(rank)} has {describe(rank)} (wanted {goal})"
    return rank, False, reason, {"target_met": False}
  lo, hi = 1, space.family_size()  # invariant: ok(lo)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if ok(mid):
      lo = mid
    else:
      hi = mid - 1
  rank = space.family(lo)
  reason = f"largest rank with {goal}: {_fmt(rank)} has {describe(rank)}"
  if lo < space.family_size():
    following = space.family(lo + 1)
    reason += f"; {_fmt(following)} would have {describe(following)}"
  else:
    reason += " (the maximal valid rank)"
  return rank, False, reason, {"target_met": True}


def _energy_rank(singular_values: np.ndarray, energy: float) -> tuple[int, float]:
  """Smallest ``k`` with ``Σ_{i≤k} e_i ≥ energy · Σ e_i`` and the fraction kept (1 for a zero matrix).

  ``e_i = Σ_b σ_{b,i}²`` over a stack of matrices (one matrix: ``σ_i²``).
  """
  per_index = _component_energies(singular_values)
  total = per_index.sum()
  if total <= 0.0:
    return 1, 1.0
  cumulative = np.cumsum(per_index)
  k = int(np.searchsorted(cumulative, energy * total * (1.0 - _ENERGY_RTOL))) + 1
  k = min(k, per_index.size)
  return k, float(cumulative[k - 1] / total)


def _component_energies(singular_values: np.ndarray) -> np.ndarray:
  squares = np.asarray(singular_values, np.float64) ** 2
  squares = squares.reshape(-1, squares.shape[-1]).sum(axis=0)  # a stack shares its component index
  return np.sort(squares)[::-1]


def _kept(singular_values: np.ndarray, k: int) -> float:
  per_index = _component_energies(singular_values)
  total = per_index.sum()
  return 1.0 if total <= 0.0 else float(per_index[:k].sum() / total)


def _svals(matrix: Any) -> np.ndarray:
  return np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)


def _energy(space: _Space, kernel: np.ndarray, energy: float) -> tuple[RankLike, bool, str, dict[str, Any]]:
  pct = f"{100 * energy:.4g}%"
  unfoldings = space.format.unfoldings(kernel, **space.options)
  svals = [_svals(u.matrix) for u in unfoldings]
  found = [_energy_rank(sv, energy) for sv in svals]
  wanted = space.format.rank_from_unfoldings([k for k, _ in found], space.shape, **space.options)
  rank, clipped = space.clip(wanted)
  per = ", ".join(f"{u.name}: {k} keeps {e:.4%}" for u, (k, e) in zip(unfoldings, found))
  extra: dict[str, Any] = {}
  if space.format.rank_from_unfoldings_is_lower_bound:
    ranks = tuple(k for k, _ in found)
    reason = (
      f"heuristic lower bound: a {space.scheme} fit keeping ≥ {pct} of the energy needs at least the energy rank "
      f"of each unfolding ({per}); rank {_fmt(rank)} (the fit at this rank usually keeps less: check its error)"
    )
    kept = tuple(_kept(sv, single_rank(rank)) for sv in svals)  # a lower bound is one int
    extra["mode_ranks"] = ranks
    met = True
  else:
    reason = f"smallest rank keeping ≥ {pct} of the energy of each unfolding ({per})"
    ranks_used = rank if isinstance(rank, tuple) else (rank,) * len(svals)
    kept = tuple(_kept(sv, r) for sv, r in zip(svals, ranks_used))
    met = all(k >= energy * (1.0 - _ENERGY_RTOL) for k in kept)
    if not met:
      reason += "; target not met at some unfolding after clipping"
  if clipped:
    extra["unclipped_rank"] = wanted
  energy_kept: Any = kept[0] if len(kept) == 1 else kept
  return rank, clipped, reason, {"target_met": met, "energy_kept": energy_kept, **extra}


def _vbmf(space: _Space, kernel: np.ndarray, eps: float) -> tuple[RankLike, bool, str, dict[str, Any]]:
  unfoldings = space.format.unfoldings(kernel, **space.options)
  found = [(u.name, evbmf(np.asarray(u.matrix, np.float64), eps=eps)) for u in unfoldings]
  raw = tuple(res.rank for _, res in found)
  parts = ", ".join(f"{name}: {res.rank} (σ̂² = {res.sigma2:.3g})" for name, res in found)
  wanted = space.format.rank_from_unfoldings([max(r, 1) for r in raw], space.shape, **space.options)
  if space.format.rank_from_unfoldings_is_lower_bound:
    reason = f"heuristic lower bound: largest EVBMF rank of the unfoldings ({parts}) → {_fmt(wanted)}"
    zero = [name for name, _ in found] if max(raw) == 0 else []
  else:
    reason = f"EVBMF ranks ({parts})"
    zero = [name for (name, _), r in zip(found, raw) if r == 0]
  if zero:
    reason += f"; EVBMF found no component above the noise threshold in the {', '.join(zero)}: raised to 1"
  numerical = [name for name, res in found if res.numerical]
  if numerical:
    reason += f"; no noise above the kernel's rounding in the {', '.join(numerical)}: the numerical rank"
  rank, clipped = space.clip(wanted)
  details: dict[str, Any] = {
    "target_met": True,
    "vbmf_rank": raw[0] if len(raw) == 1 else raw,
    "sigma2": found[0][1].sigma2 if len(found) == 1 else tuple(res.sigma2 for _, res in found),
  }
  if any(np.ndim(u.matrix) == 3 for u in unfoldings):
    details["channel_ranks"] = found[0][1].ranks
  return rank, clipped, reason, details
