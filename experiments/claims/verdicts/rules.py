"""The rules of the verdicts: the three verdicts, the numeric :class:`Rules`, checks, claims and their verdicts.

A check is ``pass`` (``True``), ``fail`` (``False``) or ``undecided`` (``None``); :func:`all_of` and
:func:`any_of` combine them three-valued. The claim families (:mod:`~experiments.claims.verdicts.training_claims`,
:mod:`~experiments.claims.verdicts.compression_claims`) build their checks with :func:`accuracy_check`,
:func:`ratio_check` and :func:`cost_check`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from experiments.claims.verdicts.runs import Run

HOLDS = "holds"
FAILS = "does not hold here"
INCONCLUSIVE = "inconclusive"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)

Result = bool | None


@dataclasses.dataclass(frozen=True)
class Rules:
  """The numeric rules of the verdicts.

  Attributes:
    min_train_steps: accuracy checks count only for runs whose compared models trained at least this many
      steps: two epochs of the 60 000 Fashion-MNIST images (938 steps at batch 128, 1 070 at batch 112); the
      quick preset trains 64.
    accuracy_tolerance: "similar" / "close" accuracy: at most this many points of percent worse; a factorized
      stem "hurts" when more than this many points worse; Lebedev's "1 % loss" (top-1 points here).
    timing_band: a measured speed ratio is above (below) a threshold only when above ``threshold · (1 + band)``
      (below ``threshold · (1 − band)``); in between it is undecided.
    loaded_timing_band: the band when the run's 1-minute load average at the end exceeded its usable cores.
    far_fewer_macs: "far fewer MACs": the reference has at least this many times the MACs.
    separable_gap: separable convs "don't train" at depth multiplier 1 when ``separable_m1`` is at least
      this many points behind the better of ``separable_m4`` and ``separable_m8``.
    large_speedup: a "large speedup" of a compressed network: measured inference throughput at least this
      many times the dense network's (4×: the target of the compress pipeline's issue; Lebedev et al. report
      8.5×).
    wide_factor: the widening the ``wide`` claim is about (two layers merged into one: √2).
  """

  min_train_steps: int = 900
  accuracy_tolerance: float = 1.0
  timing_band: float = 0.10
  loaded_timing_band: float = 0.25
  far_fewer_macs: float = 2.0
  separable_gap: float = 2.0
  large_speedup: float = 4.0
  wide_factor: float = math.sqrt(2.0)


@dataclasses.dataclass(frozen=True)
class Check:
  """One numeric condition of a claim.

  Attributes:
    name: what is compared.
    measured: the measured value, formatted.
    needed: the condition, formatted.
    result: ``True`` (pass), ``False`` (fail) or ``None`` (undecided).
    note: why it is undecided (or a remark).
    group: claims that hold when any of several alternatives holds (claim 6: any CP variant) name the
      alternative a check belongs to; ``""`` otherwise.
  """

  name: str
  measured: str
  needed: str
  result: Result
  note: str = ""
  group: str = ""


@dataclasses.dataclass(frozen=True)
class Claim:
  """A claim of the seed and how the runs test it.

  Attributes:
    number: its number in the seed's list.
    title: a short title.
    statement: the claim as the seed states it.
    source: ``"compare"`` or ``"compress"``: which runs hold its data.
    schemes: the compare schemes it needs (compress claims: none).
    context: compare schemes shown in its table when the run has them.
    test: how the runs test it.
    rule: the rule, a format string over the fields of :class:`Rules`.
    produce: the command that produces the data it needs.
    evaluate: ``(run, rules) -> checks, combined result`` (set in :data:`CLAIMS`).
  """

  number: int
  title: str
  statement: str
  source: str
  schemes: tuple[str, ...]
  context: tuple[str, ...]
  test: str
  rule: str
  produce: str
  evaluate: Callable[[Run, Rules], tuple[list[Check], Result]]


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A claim's verdict.

  Attributes:
    claim: the claim.
    verdict: one of :data:`VERDICTS`.
    reason: one sentence.
    run: the run it used (``None`` when none had the data).
    checks: the checks.
    missing: what no run had (schemes or variants).
  """

  claim: Claim
  verdict: str
  reason: str
  run: Run | None
  checks: tuple[Check, ...]
  missing: tuple[str, ...] = ()


def all_of(results: Sequence[Result]) -> Result:
  """Three-valued AND: ``False`` if any fails, else ``None`` if any is undecided, else ``True``."""
  if any(r is False for r in results):
    return False
  return None if any(r is None for r in results) else True


def any_of(results: Sequence[Result]) -> Result:
  """Three-valued OR: ``True`` if any passes, else ``None`` if any is undecided, else ``False``."""
  if any(r is True for r in results):
    return True
  return None if any(r is None for r in results) else False


def percent(accuracy: float) -> str:
  return f"{100 * accuracy:.2f}%"


def points(value: float) -> str:
  return f"{value:+.2f} points"


def accuracy_check(name: str, value: float, needed: str, ok: bool, steps: int, rules: Rules) -> Check:
  """A check on accuracy (points of percent), undecided when ``steps < rules.min_train_steps``."""
  if steps < rules.min_train_steps:
    return Check(
      name,
      points(value),
      needed,
      None,
      f"{steps} training steps < {rules.min_train_steps}: not counted; it would {'pass' if ok else 'fail'}",
    )
  return Check(name, points(value), needed, ok)


def ratio_check(name: str, ratio: float, threshold: float, band: float) -> Check:
  """Measured ratio ``≥ threshold``: pass above ``threshold·(1+band)``, fail below ``threshold·(1−band)``."""
  needed = f"≥ {threshold:.2f}× (undecided within ±{band:.0%})"
  if ratio >= threshold * (1 + band):
    return Check(name, f"{ratio:.2f}×", needed, True)
  if ratio <= threshold * (1 - band):
    return Check(name, f"{ratio:.2f}×", needed, False)
  return Check(name, f"{ratio:.2f}×", needed, None, f"within the ±{band:.0%} timing noise band around {threshold:.2f}×")


def cost_check(name: str, measured: str, needed: str, ok: bool) -> Check:
  """An exact check on MACs or parameters."""
  return Check(name, measured, needed, ok)


def accuracy_delta(rows: dict[str, Any], scheme: str, reference: str) -> float:
  return 100.0 * (rows[scheme]["test_accuracy"] - rows[reference]["test_accuracy"])
