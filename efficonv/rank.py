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
:mod:`efficonv.decompose` function accepts, plus a sentence saying why. A rule never raises because its
target cannot be met: it returns the closest valid rank and says so (``details["target_met"]`` is
``False``), so a compression report can show it. Ranks outside the valid range are clipped, and the
reason says so (``details["clipped"]``).

Rank kinds and valid ranges (``W`` of shape ``(kh, kw, C_in, C_out)``):

============  ========================  ==============================================================
scheme        rank                      valid range
============  ========================  ==============================================================
``cp``        ``R``                     ``1 … kh·kw·C_in·C_out / max(kh, kw, C_in, C_out)``
``tucker2``   ``(R1, R2)``              ``R1 ≤ C_in``, ``R2 ≤ C_out``
``spatial``   ``K``                     ``1 … min(kh·C_in, kw·C_out)``
``separable`` depth multiplier ``m``    ``1 … max(1, min(kh·kw, C_out))``
``tt``        ``(r_0, …, r_{d-1})``     ``r_k ≤ min(r_{k-1}·c_k s_k, ∏_{j≥k} c_j s_j)`` with
                                        ``r_{-1}·c_0 s_0 = kh·kw`` (what TT-SVD can produce)
============  ========================  ==============================================================

Budget rules (:class:`ParamFraction`, :class:`MacReduction`) search a one-parameter family of ranks
``t = 1, 2, …`` along which parameters and MACs grow: ``t`` itself for CP, spatial and separable;
``R_in = ⌈t·C_in / C⌉, R_out = ⌈t·C_out / C⌉`` with ``C = max(C_in, C_out)`` for Tucker-2 (both ranks scale
with their channel counts); ``r_k = t`` for every TT bond, clipped to the bond's range. The largest ``t``
meeting the budget wins, so ``t + 1`` does not meet it.

The unfoldings for :class:`Energy` and :class:`VBMF` (each a matrix whose singular values decide):

* ``spatial``: ``M_{(x,c),(y,s)} = W_{x,y,c,s}``, ``(kh·C_in) × (kw·C_out)``. Its truncated SVD *is* the
  spatial decomposition, so the energy kept is exactly ``1 − relative_error²`` of
  :func:`efficonv.decompose.spatial`.
* ``separable``: each input channel's ``(kh·kw) × C_out`` slice ``W_{:,:,c,:}``; ``m`` is the smallest depth
  multiplier keeping ``≥ energy`` of ``Σ_c ||W_{:,:,c,:}||²`` (again exactly what
  :func:`efficonv.decompose.separable` keeps). EVBMF runs on the stack of slices with one shared noise
  variance and ``m`` is the largest per-channel rank (no channel loses a component EVBMF deems signal).
* ``tucker2``: ``R1`` from the ``C_in``-unfolding ``C_in × (kh·kw·C_out)``, ``R2`` from the
  ``C_out``-unfolding ``C_out × (kh·kw·C_in)`` (Kim et al. 2016). Truncated HOSVD then loses at most
  ``(1 − e_1) + (1 − e_2)`` of the energy.
* ``tt``: bond ``k``'s unfolding ``(kh·kw·∏_{j<k} c_j s_j) × (∏_{j≥k} c_j s_j)`` of the kernel reordered as
  ``(kh·kw, c_1 s_1, …, c_d s_d)`` (as in :func:`efficonv.decompose.tt`). TT-SVD's error obeys
  ``||W − Ŵ||² ≤ Σ_k`` (energy discarded at bond ``k``) (Oseledets 2011, Thm. 2.2), so the fit keeps at least
  ``1 − d(1 − energy)``.
* ``cp`` (a heuristic): a rank-``R`` CP tensor has every mode unfolding of rank ``≤ R``, so a CP fit keeping
  ``≥ e`` of the energy needs ``R ≥`` the energy rank of each of the four mode unfoldings
  (``kh``, ``kw``, ``C_in``, ``C_out``). The rule returns that lower bound, ``max_n R_n`` (and for VBMF, the
  largest EVBMF rank of the four). CP-ALS at this rank usually keeps *less* than ``e``: treat it as a
  starting point, check ``FitInfo.relative_error``.

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
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

from efficonv.formats import CP, TT, Format, Separable, Spatial, Tucker2
from efficonv.formats.init import balanced_modes, max_cp_rank
from efficonv.kernels._options import PaddingLike
from efficonv.vbmf import evbmf

SCHEMES = ("cp", "tucker2", "tt", "spatial", "separable")

RankLike = Union[int, tuple[int, ...]]

# Relative slack when comparing kept energy with the target, so that a target hit exactly (up to the
# rounding of the cumulative sum) counts as met.
_ENERGY_RTOL = 1e-10


# --- rules ----------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
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


Rule = Union[Fixed, ParamFraction, MacReduction, Energy, VBMF]
RULES = (Fixed, ParamFraction, MacReduction, Energy, VBMF)


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


# --- the rank space of each scheme ----------------------------------------------------------------


def _sds(*shape: int) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class _Space:
  """Valid ranks of one scheme for one kernel shape, and the factor shapes they imply."""

  scheme: str
  shape: tuple[int, int, int, int]
  in_modes: tuple[int, ...] = ()
  out_modes: tuple[int, ...] = ()

  @property
  def sizes(self) -> tuple[int, ...]:
    """TT: ``c_k·s_k`` per core."""
    return tuple(c * s for c, s in zip(self.in_modes, self.out_modes))

  def max_rank(self) -> RankLike:
    kh, kw, cin, cout = self.shape
    if self.scheme == "cp":
      return max_cp_rank(self.shape)
    if self.scheme == "tucker2":
      return (cin, cout)
    if self.scheme == "spatial":
      return min(kh * cin, kw * cout)
    if self.scheme == "separable":
      return max(1, min(kh * kw, cout))
    return self._tt_chain((max(self.shape[0] * self.shape[1], math.prod(self.sizes)),) * len(self.sizes))

  def _tt_chain(self, ranks: Sequence[int]) -> tuple[int, ...]:
    """Clips TT ranks left to right: ``r_k ≤ min(r_{k-1}·c_k s_k, ∏_{j≥k} c_j s_j)`` (TT-SVD's bound)."""
    left, out = self.shape[0] * self.shape[1], []
    for k, r in enumerate(ranks):
      out.append(min(int(r), left, math.prod(self.sizes[k:])))
      left = out[-1] * self.sizes[k]
    return tuple(out)

  def clip(self, rank: RankLike) -> tuple[RankLike, bool]:
    """Clips a requested rank (int or tuple, each entry ``≥ 1``) into range; returns ``(rank, clipped)``.

    Raises:
      ValueError: naming ``rank`` when it has the wrong kind for the scheme.
    """
    d = len(self.sizes)
    if self.scheme in ("cp", "spatial", "separable"):
      if not _is_int(rank):
        raise ValueError(f"rank must be an int for scheme {self.scheme!r}, got {rank!r}")
      clipped_rank: RankLike = min(int(rank), self.max_rank())  # type: ignore[type-var]
    elif self.scheme == "tucker2":
      pair = (int(rank), int(rank)) if _is_int(rank) else tuple(rank)  # type: ignore[arg-type]
      if len(pair) != 2:
        raise ValueError(f"rank must be an int or a pair (R1, R2) for scheme 'tucker2', got {rank!r}")
      clipped_rank = (min(pair[0], self.shape[2]), min(pair[1], self.shape[3]))
      rank = pair
    else:
      ranks = (int(rank),) * d if _is_int(rank) else tuple(rank)  # type: ignore[arg-type]
      if len(ranks) != d:
        raise ValueError(f"rank must be an int or {d} ints (r_0..r_{d - 1}) for scheme 'tt', got {rank!r}")
      clipped_rank = self._tt_chain(ranks)
      rank = ranks
    return clipped_rank, clipped_rank != rank

  def family_size(self) -> int:
    """Number of members ``t = 1 … T`` of the budget family."""
    top = self.max_rank()
    return max(top) if isinstance(top, tuple) else top

  def family(self, t: int) -> RankLike:
    """Member ``t`` of the budget family (see the module docstring)."""
    if self.scheme == "tucker2":
      cin, cout = self.shape[2:]
      big = max(cin, cout)
      return (-(-t * cin // big), -(-t * cout // big))
    if self.scheme == "tt":
      return self._tt_chain((t,) * len(self.sizes))
    return t

  def abstract(self, rank: RankLike) -> Format:
    """The format with this rank, with shape-only leaves (for ``params()`` and ``macs()``)."""
    kh, kw, cin, cout = self.shape
    if self.scheme == "cp":
      r = int(rank)  # type: ignore[arg-type]
      return CP(_sds(cin, r), _sds(kh, r), _sds(kw, r), _sds(r, cout))
    if self.scheme == "tucker2":
      r1, r2 = rank  # type: ignore[misc]
      return Tucker2(_sds(cin, r1), _sds(kh, kw, r1, r2), _sds(r2, cout))
    if self.scheme == "spatial":
      k = int(rank)  # type: ignore[arg-type]
      return Spatial(_sds(kh, cin, k), _sds(kw, k, cout))
    if self.scheme == "separable":
      m = int(rank)  # type: ignore[arg-type]
      return Separable(_sds(kh, kw, cin, m), _sds(cin * m, cout))
    full = tuple(rank) + (1,)  # type: ignore[arg-type]
    cores = tuple(_sds(full[k], self.in_modes[k], self.out_modes[k], full[k + 1]) for k in range(len(self.in_modes)))
    return TT(_sds(kh, kw, full[0]), cores)


def max_rank(
  scheme: str,
  shape: Sequence[int],
  *,
  in_modes: Sequence[int] | None = None,
  out_modes: Sequence[int] | None = None,
) -> RankLike:
  """The largest valid rank of ``scheme`` for a kernel of ``shape`` (see the table in the module docstring).

  Args:
    scheme: one of ``"cp"``, ``"tucker2"``, ``"tt"``, ``"spatial"``, ``"separable"``.
    shape: ``(kh, kw, C_in, C_out)``.
    in_modes, out_modes: TT channel factorizations (default: two balanced factors each).

  Returns:
    An int, or a tuple for Tucker-2 and TT.
  """
  return _space(scheme, _check_shape(shape), in_modes, out_modes).max_rank()


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
  in_modes: Sequence[int] | None = None,
  out_modes: Sequence[int] | None = None,
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
    in_modes, out_modes: TT channel factorizations (``∏ in_modes = C_in``, ``∏ out_modes = C_out``); default
      two balanced factors each, as :class:`efficonv.nnx.TTConv`. Only for ``scheme="tt"``.

  Returns:
    A :class:`RankChoice` whose ``rank`` is valid for the scheme's format and decomposition.

  Raises:
    ValueError: naming ``scheme``, ``kernel_or_shape`` (not 4-D; only a shape for a rule that needs the
      values), ``kernel`` (NaN/Inf), ``rule``, ``rank`` (wrong kind), ``input_shape`` (missing for
      :class:`MacReduction`, or not NHWC with ``C_in`` channels), ``in_modes``/``out_modes``.
  """
  if scheme not in SCHEMES:
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
  if isinstance(rule, (list, tuple)) or _is_int(rule):
    rule = Fixed(tuple(rule) if isinstance(rule, list) else rule)  # type: ignore[arg-type]
  if not isinstance(rule, RULES):
    raise ValueError(
      "rule must be Fixed, ParamFraction, MacReduction, Energy or VBMF (from efficonv.rank), "
      f"or an int/tuple, got {rule!r}"
    )
  shape, kernel = _kernel_or_shape(kernel_or_shape)
  space = _space(scheme, shape, in_modes, out_modes)
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
    rank, clipped, reason, extra = _vbmf(space, kernel)

  details = {"max_rank": space.max_rank(), "clipped": bool(clipped), **extra, **costs.evaluate(rank)}
  if scheme == "tt":
    details.update(in_modes=space.in_modes, out_modes=space.out_modes)
  if clipped:
    bound = (
      "TT-SVD's bound r_k ≤ min(r_{k-1}·c_k·s_k, ∏_{j≥k} c_j·s_j), with r_{-1}·c_0·s_0 = kh·kw"
      if scheme == "tt"
      else f"the maximal valid rank is {_fmt(space.max_rank())}"
    )
    reason += f"; clipped to {_fmt(rank)} ({bound})"
  return RankChoice(rank, reason + ".", repr(rule), details)


# --- inputs ---------------------------------------------------------------------------------------


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
  try:
    values = tuple(shape)
  except TypeError as e:
    raise ValueError(f"kernel_or_shape must be a kernel or a shape (kh, kw, C_in, C_out), got {shape!r}") from e
  if len(values) != 4 or not all(_is_int(v) and v >= 1 for v in values):
    raise ValueError(f"kernel_or_shape must be a shape of 4 positive ints (kh, kw, C_in, C_out), got {shape!r}")
  return tuple(int(v) for v in values)  # type: ignore[return-value]


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
  return tuple(int(v) for v in kernel.shape), kernel  # type: ignore[return-value]


def _space(
  scheme: str,
  shape: tuple[int, int, int, int],
  in_modes: Sequence[int] | None,
  out_modes: Sequence[int] | None,
) -> _Space:
  if scheme not in SCHEMES:
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
  if scheme != "tt":
    if in_modes is not None or out_modes is not None:
      raise ValueError(f"in_modes/out_modes only apply to scheme 'tt', got scheme {scheme!r}")
    return _Space(scheme, shape)
  cin, cout = shape[2], shape[3]
  ins = _check_modes(in_modes, "in_modes", cin) if in_modes is not None else None
  outs = _check_modes(out_modes, "out_modes", cout) if out_modes is not None else None
  # Same defaults as efficonv.nnx.TTConv: two balanced factors, or as many as the other side has.
  ins = ins if ins is not None else balanced_modes(cin, len(outs) if outs is not None else 2)
  outs = outs if outs is not None else balanced_modes(cout, len(ins))
  if len(ins) != len(outs):
    raise ValueError(f"out_modes must have as many factors as in_modes {ins}, got {outs}")
  return _Space(scheme, shape, ins, outs)


def _check_modes(modes: Sequence[int], name: str, total: int) -> tuple[int, ...]:
  try:
    values = tuple(modes)
  except TypeError as e:
    raise ValueError(f"{name} must be a sequence of positive ints with product {total}, got {modes!r}") from e
  if not values or not all(_is_int(v) and v >= 1 for v in values) or math.prod(values) != total:
    raise ValueError(f"{name} must be a non-empty sequence of positive ints with product {total}, got {modes!r}")
  return tuple(int(v) for v in values)


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
    self.conv_kwargs = {"strides": strides, "padding": padding, "dilation": dilation}

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

  def ok(t: int) -> bool:
    c = costs.evaluate(space.family(t))
    if by_params:
      return c["params"] <= rule.fraction * c["dense_params"]
    return c["dense_macs"] >= rule.reduction * c["macs"]

  def describe(rank: RankLike) -> str:
    c = costs.evaluate(rank)
    if by_params:
      return f"{c['params']:,} params = {c['param_fraction']:.4g} × dense ({c['dense_params']:,})"
    return f"{c['macs']:,} MACs = dense ({c['dense_macs']:,}) / {c['mac_reduction']:.4g}"

  goal = f"params ≤ {rule.fraction:g} × dense" if by_params else f"MAC reduction ≥ {rule.reduction:g}"
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
  """Smallest ``k`` with ``Σ_{i≤k} σ_i² ≥ energy · Σ σ_i²``, and the fraction kept (1 for a zero matrix)."""
  squares = np.sort(np.asarray(singular_values, np.float64).ravel())[::-1] ** 2
  total = squares.sum()
  if total <= 0.0:
    return 1, 1.0
  cumulative = np.cumsum(squares)
  k = int(np.searchsorted(cumulative, energy * total * (1.0 - _ENERGY_RTOL))) + 1
  k = min(k, squares.size)
  return k, float(cumulative[k - 1] / total)


def _kept(singular_values: np.ndarray, k: int) -> float:
  squares = np.sort(np.asarray(singular_values, np.float64).ravel())[::-1] ** 2
  total = squares.sum()
  return 1.0 if total <= 0.0 else float(squares[:k].sum() / total)


def _mode_unfolding(kernel: np.ndarray, axis: int) -> np.ndarray:
  """``W_(axis)``: the kernel's ``axis`` fibers as columns, ``(shape[axis], rest)``."""
  return np.moveaxis(kernel, axis, 0).reshape(kernel.shape[axis], -1)


def _spatial_unfolding(kernel: np.ndarray) -> np.ndarray:
  kh, kw, cin, cout = kernel.shape
  return kernel.transpose(0, 2, 1, 3).reshape(kh * cin, kw * cout)


def _separable_slices(kernel: np.ndarray) -> np.ndarray:
  kh, kw, cin, cout = kernel.shape
  return kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw, cout)


def _tt_unfoldings(space: _Space, kernel: np.ndarray) -> list[np.ndarray]:
  """Bond ``k``'s unfolding ``(kh·kw·∏_{j<k} c_j s_j) × (∏_{j≥k} c_j s_j)`` of the reordered kernel."""
  kh, kw = kernel.shape[:2]
  d = len(space.in_modes)
  tensor = kernel.reshape((kh * kw,) + space.in_modes + space.out_modes)
  order = [0] + [axis for k in range(d) for axis in (1 + k, 1 + d + k)]
  flat = tensor.transpose(order).reshape(-1)
  return [flat.reshape(kh * kw * math.prod(space.sizes[:k]), -1) for k in range(d)]


def _svals(matrix: np.ndarray) -> np.ndarray:
  return np.linalg.svd(matrix, compute_uv=False)


_CP_MODES = ("kh", "kw", "C_in", "C_out")


def _energy(space: _Space, kernel: np.ndarray, energy: float) -> tuple[RankLike, bool, str, dict[str, Any]]:
  pct = f"{100 * energy:.4g}%"
  scheme = space.scheme
  if scheme == "spatial":
    k, kept = _energy_rank(_svals(_spatial_unfolding(kernel)), energy)
    reason = f"smallest rank keeping ≥ {pct} of the energy of the (kh·C_in)×(kw·C_out) unfolding: {k} keeps {kept:.4%}"
    return k, False, reason, {"target_met": True, "energy_kept": kept}
  if scheme == "separable":
    svals = np.linalg.svd(_separable_slices(kernel), compute_uv=False)  # (C_in, q)
    per_rank = np.cumsum((svals**2).sum(axis=0))
    total = per_rank[-1]
    if total <= 0.0:
      m, kept = 1, 1.0
    else:
      m = min(int(np.searchsorted(per_rank, energy * total * (1.0 - _ENERGY_RTOL))) + 1, per_rank.size)
      kept = float(per_rank[m - 1] / total)
    reason = (
      f"smallest depth multiplier keeping ≥ {pct} of the energy of the per-channel (kh·kw)×C_out slices: "
      f"{m} keeps {kept:.4%}"
    )
    return m, False, reason, {"target_met": True, "energy_kept": kept}
  if scheme == "tucker2":
    (r1, e1), (r2, e2) = (_energy_rank(_svals(_mode_unfolding(kernel, axis)), energy) for axis in (2, 3))
    reason = (
      f"smallest ranks keeping ≥ {pct} of the energy of the C_in-unfolding (R1 = {r1}, keeps {e1:.4%}) and "
      f"of the C_out-unfolding (R2 = {r2}, keeps {e2:.4%})"
    )
    return (r1, r2), False, reason, {"target_met": True, "energy_kept": (e1, e2)}
  if scheme == "cp":
    found = [_energy_rank(_svals(_mode_unfolding(kernel, axis)), energy) for axis in range(4)]
    ranks = tuple(r for r, _ in found)
    rank = max(ranks)
    per_mode = ", ".join(f"{name} {r}" for name, r in zip(_CP_MODES, ranks))
    reason = (
      f"heuristic lower bound: a CP fit keeping ≥ {pct} of the energy needs at least the energy rank of each "
      f"mode unfolding ({per_mode}); rank {rank} (CP-ALS at this rank usually keeps less: check its error)"
    )
    kept = tuple(_kept(_svals(_mode_unfolding(kernel, axis)), rank) for axis in range(4))
    return rank, False, reason, {"target_met": True, "energy_kept": kept, "mode_ranks": ranks}
  # tt
  svals = [_svals(m) for m in _tt_unfoldings(space, kernel)]
  wanted = tuple(_energy_rank(s, energy)[0] for s in svals)
  ranks, clipped = space.clip(wanted)
  kept = tuple(_kept(s, r) for s, r in zip(svals, ranks))  # type: ignore[arg-type]
  met = all(k >= energy * (1.0 - _ENERGY_RTOL) for k in kept)
  reason = (
    f"smallest ranks keeping ≥ {pct} of the energy of each TT-SVD bond unfolding: {_fmt(wanted)} "
    f"(kept {', '.join(f'{k:.4%}' for k in kept)})"
  )
  if not met:
    reason += "; target not met at some bond after clipping"
  return ranks, clipped, reason, {"target_met": met, "energy_kept": kept, "unclipped_rank": wanted}


def _vbmf(space: _Space, kernel: np.ndarray) -> tuple[RankLike, bool, str, dict[str, Any]]:
  scheme = space.scheme
  found: list[tuple[str, Any]]  # (unfolding name, EVBMFResult)
  if scheme == "spatial":
    found = [("(kh·C_in)×(kw·C_out) unfolding", evbmf(_spatial_unfolding(kernel)))]
  elif scheme == "separable":
    found = [("per-channel (kh·kw)×C_out slices (shared noise, largest rank)", evbmf(_separable_slices(kernel)))]
  elif scheme == "tucker2":
    found = [(f"{name}-unfolding", evbmf(_mode_unfolding(kernel, axis))) for name, axis in (("C_in", 2), ("C_out", 3))]
  elif scheme == "cp":
    found = [(f"{name}-unfolding", evbmf(_mode_unfolding(kernel, axis))) for axis, name in enumerate(_CP_MODES)]
  else:
    found = [(f"bond {k} unfolding", evbmf(m)) for k, m in enumerate(_tt_unfoldings(space, kernel))]
  raw = tuple(res.rank for _, res in found)
  zero = [name for (name, _), r in zip(found, raw) if r == 0]
  parts = ", ".join(f"{name}: {res.rank} (σ̂² = {res.sigma2:.3g})" for name, res in found)
  if scheme == "cp":
    wanted: RankLike = max(max(raw), 1)
    reason = f"heuristic lower bound: largest EVBMF rank of the mode unfoldings ({parts}) → {wanted}"
  elif scheme in ("tucker2", "tt"):
    wanted = tuple(max(r, 1) for r in raw)
    reason = f"EVBMF ranks ({parts})"
  else:
    wanted = max(raw[0], 1)
    reason = f"EVBMF rank of the {parts}"
  if zero and (scheme != "cp" or max(raw) == 0):
    reason += f"; EVBMF found no component above the noise threshold in the {', '.join(zero)}: raised to 1"
  rank, clipped = space.clip(wanted)
  details = {
    "target_met": True,
    "vbmf_rank": raw[0] if scheme in ("spatial", "separable") else raw,
    "sigma2": found[0][1].sigma2 if len(found) == 1 else tuple(res.sigma2 for _, res in found),
  }
  if scheme == "separable":
    details["channel_ranks"] = found[0][1].ranks
  return rank, clipped, reason, details
