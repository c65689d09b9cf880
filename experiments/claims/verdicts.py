"""Verdicts on the seed's claims, computed from the comparison and compression runs; writes ``experiments/README.md``.

Usage::

  python -m experiments.claims.verdicts --compare experiments/results/compare_fashion_mnist_quick \\
      --compress experiments/results/compress_fashion_mnist_quick --out experiments/README.md

``--compare`` takes ``compare.json`` files written by :mod:`experiments.claims.compare`, or directories (their
``compare.json``, else every ``compare.json`` below them); ``--compress`` the same for the ``compress.json`` of
:mod:`experiments.claims.compress`. Both repeat and take several paths. Nothing is trained or timed here: every number
in the output is read from those files.

For each claim (:data:`CLAIMS`) it picks one run — among the runs that contain every scheme the claim needs,
the one whose needed schemes trained longest (the most training steps; ties: the first given) — because
timings are comparable only within one run, and evaluates the claim's checks with the numeric rules of
:class:`Rules`. Every check is ``pass``, ``fail`` or ``undecided``:

* accuracy checks are undecided when the run trained fewer than ``Rules.min_train_steps`` steps (after a
  few dozen steps accuracy measures how fast a network learns, not where it ends);
* timing checks are undecided when the measured ratio lies within the noise band around the threshold
  (``Rules.timing_band``, or ``Rules.loaded_timing_band`` when the run's 1-minute load average at the end
  exceeded its usable cores);
* cost checks (MACs, parameters) are exact.

A claim **holds** when all its checks pass, **does not hold here** when one fails (a failing cost or timing
check decides this even on a short run), and is **inconclusive** otherwise — also when no run has the schemes
it needs (the Markdown names the missing ones and the command that would produce them).

The output Markdown starts by saying it is generated and by which command; per claim it gives the claim, the
command that produced its data, the numbers, the rule and the verdict.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from experiments.cli import command_line

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
      steps (1 000 steps ≈ 2 epochs of Fashion-MNIST at batch 128; the quick preset trains 64).
    accuracy_tolerance: "similar" / "close" accuracy: at most this many points of percent worse; a factorized
      stem "hurts" when more than this many points worse; Lebedev's "1 % loss" (top-1 points here).
    timing_band: a measured speed ratio is above (below) a threshold only when above ``threshold · (1 + band)``
      (below ``threshold · (1 − band)``); in between it is undecided.
    loaded_timing_band: the band when the run's 1-minute load average at the end exceeded its usable cores.
    far_fewer_macs: "far fewer MACs": the reference has at least this many times the MACs.
    separable_gap: separable convs "don't train" at depth multiplier 1 when ``separable1`` is at least this
      many points behind the better of ``separable4`` and ``separable8``.
    large_speedup: a "large speedup" of a compressed network: measured inference throughput at least this
      many times the dense network's (4×: the target of the compress pipeline's issue; Lebedev et al. report
      8.5×).
    wide_factor: the widening the ``wide`` claim is about (two layers merged into one: √2).
  """

  min_train_steps: int = 1000
  accuracy_tolerance: float = 1.0
  timing_band: float = 0.10
  loaded_timing_band: float = 0.25
  far_fewer_macs: float = 2.0
  separable_gap: float = 2.0
  large_speedup: float = 4.0
  wide_factor: float = math.sqrt(2.0)


@dataclasses.dataclass(frozen=True)
class Run:
  """One results file.

  Attributes:
    path: where it was read from (as given or found).
    kind: ``"compare"`` or ``"compress"``.
    payload: its JSON.
  """

  path: str
  kind: str
  payload: dict[str, Any]

  @property
  def environment(self) -> dict[str, Any]:
    return self.payload.get("environment", {})

  @property
  def command(self) -> str:
    return self.environment.get("command") or "(not recorded)"

  @property
  def rows(self) -> dict[str, dict[str, Any]]:
    """Compare rows by scheme, compress rows by variant name."""
    key = "scheme" if self.kind == "compare" else "variant"
    return {r[key]: r for r in self.payload["results"]}

  def loaded(self) -> bool:
    """Whether the 1-minute load average at the end exceeded the usable cores (timings under contention)."""
    load, cores = self.environment.get("load_average"), self.environment.get("usable_cpus")
    return bool(load) and bool(cores) and load[0] > cores

  def timing_band(self, rules: Rules) -> float:
    return rules.loaded_timing_band if self.loaded() else rules.timing_band

  def steps(self, schemes: Sequence[str] = ()) -> int:
    """Training steps: the fewest among ``schemes`` (compare; all rows if empty), the dense baseline's (compress)."""
    if self.kind == "compress":
      return int(self.payload["dense"]["train_steps"])
    rows = self.rows
    return min(int(rows[s]["train_steps"]) for s in (schemes or rows))


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


# --- Checks ---------------------------------------------------------------------------------------------------


def _all(results: Sequence[Result]) -> Result:
  """Three-valued AND: ``False`` if any fails, else ``None`` if any is undecided, else ``True``."""
  if any(r is False for r in results):
    return False
  return None if any(r is None for r in results) else True


def _any(results: Sequence[Result]) -> Result:
  """Three-valued OR: ``True`` if any passes, else ``None`` if any is undecided, else ``False``."""
  if any(r is True for r in results):
    return True
  return None if any(r is None for r in results) else False


def _pct(accuracy: float) -> str:
  return f"{100 * accuracy:.2f}%"


def _points(value: float) -> str:
  return f"{value:+.2f} points"


def accuracy_check(name: str, value: float, needed: str, ok: bool, steps: int, rules: Rules) -> Check:
  """A check on accuracy (points of percent), undecided when ``steps < rules.min_train_steps``."""
  if steps < rules.min_train_steps:
    return Check(
      name,
      _points(value),
      needed,
      None,
      f"{steps} training steps < {rules.min_train_steps}: not counted; it would {'pass' if ok else 'fail'}",
    )
  return Check(name, _points(value), needed, ok)


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


def _acc_delta(rows: dict[str, Any], scheme: str, reference: str) -> float:
  return 100.0 * (rows[scheme]["test_accuracy"] - rows[reference]["test_accuracy"])


# --- Claims ---------------------------------------------------------------------------------------------------


def _stem(run: Run, rules: Rules) -> tuple[list[Check], Result]:
  rows, steps = run.rows, run.steps(("spatial", "spatial_stem"))
  delta = _acc_delta(rows, "spatial_stem", "spatial")
  tol = rules.accuracy_tolerance
  checks = [
    accuracy_check(
      "test accuracy, spatial_stem − spatial", delta, f"≤ {-tol:+.2f} points (worse)", delta <= -tol, steps, rules
    )
  ]
  return checks, _all([c.result for c in checks])


def _stacked(run: Run, rules: Rules) -> tuple[list[Check], Result]:
  rows, steps = run.rows, run.steps(("stacked", "dense5"))
  s, d = rows["stacked"], rows["dense5"]
  delta = _acc_delta(rows, "stacked", "dense5")
  tol = rules.accuracy_tolerance
  checks = [
    cost_check("MACs/image, stacked vs dense5", f"{s['macs']:,} vs {d['macs']:,}", "fewer", s["macs"] < d["macs"]),
    cost_check("params, stacked vs dense5", f"{s['params']:,} vs {d['params']:,}", "fewer", s["params"] < d["params"]),
    accuracy_check("test accuracy, stacked − dense5", delta, f"≥ {-tol:+.2f} points", delta >= -tol, steps, rules),
  ]
  return checks, _all([c.result for c in checks])


def _bottleneck(run: Run, rules: Rules) -> tuple[list[Check], Result]:
  rows, steps = run.rows, run.steps(("bottleneck", "dense"))
  cut = rows["dense"]["macs"] / rows["bottleneck"]["macs"]
  delta = _acc_delta(rows, "bottleneck", "dense")
  tol = rules.accuracy_tolerance
  checks = [
    cost_check(
      "MAC cut, dense / bottleneck", f"{cut:.2f}×", f"≥ {rules.far_fewer_macs:.2f}×", cut >= rules.far_fewer_macs
    ),
    accuracy_check("test accuracy, bottleneck − dense", delta, f"≥ {-tol:+.2f} points", delta >= -tol, steps, rules),
  ]
  return checks, _all([c.result for c in checks])


def _wide(run: Run, rules: Rules) -> tuple[list[Check], Result]:
  rows, steps = run.rows, run.steps(("wide", "dense"))
  model = run.payload.get("config", {}).get("model", {})
  factor, depth = model.get("wide_factor"), model.get("stage_depth")
  setup_ok = factor is not None and abs(factor - rules.wide_factor) <= 1e-3 * rules.wide_factor
  setup_ok = setup_ok and depth is not None and depth >= 2
  setup = Check(
    "setup: widening factor, convs per stage",
    f"{factor if factor is None else f'{factor:.4f}'}, {depth}",
    f"{rules.wide_factor:.4f}, ≥ 2 (pairs merged)",
    True if setup_ok else None,
    "" if setup_ok else "the run did not merge pairs of convs widened by √2",
  )
  speed = rows["wide"]["inference_images_per_s"] / rows["dense"]["inference_images_per_s"]
  delta = _acc_delta(rows, "wide", "dense")
  tol = rules.accuracy_tolerance
  checks = [
    setup,
    ratio_check("inference throughput, wide / dense", speed, 1.0, run.timing_band(rules)),
    accuracy_check("test accuracy, wide − dense", delta, f"≥ {-tol:+.2f} points", delta >= -tol, steps, rules),
  ]
  return checks, _all([c.result for c in checks])


def _separable(run: Run, rules: Rules) -> tuple[list[Check], Result]:
  rows, steps = run.rows, run.steps(("separable1", "separable4", "separable8"))
  best = max(("separable4", "separable8"), key=lambda s: rows[s]["test_accuracy"])
  gap = -_acc_delta(rows, "separable1", best)
  checks = [
    accuracy_check(
      f"test accuracy, {best} (the better of 4, 8) − separable1",
      gap,
      f"≥ {rules.separable_gap:+.2f} points",
      gap >= rules.separable_gap,
      steps,
      rules,
    )
  ]
  return checks, _all([c.result for c in checks])


def _cp_variants(run: Run) -> list[dict[str, Any]]:
  return [r for r in run.payload["results"] if r.get("scheme") == "cp"]


def _cp_drop(run: Run, row: dict[str, Any]) -> tuple[float, str]:
  """Accuracy drop in points against the dense model fine-tuned the same way (if recorded), else the dense one."""
  dense = run.payload["dense"]
  if "test_accuracy_after_ft" in dense:
    return 100.0 * (dense["test_accuracy_after_ft"] - row["accuracy_after_ft"]), "dense fine-tuned alike"
  return 100.0 * (dense["test_accuracy"] - row["accuracy_after_ft"]), "dense"


def _cp(run: Run, rules: Rules) -> tuple[list[Check], Result]:
  checks, results = [], []
  band, steps, tol = run.timing_band(rules), run.steps(), rules.accuracy_tolerance
  for row in _cp_variants(run):
    name = row["variant"]
    speed = ratio_check(f"{name}: measured inference speedup", row["inference_speedup"], rules.large_speedup, band)
    drop, against = _cp_drop(run, row)
    accuracy = accuracy_check(
      f"{name}: accuracy drop after fine-tuning (vs {against})",
      drop,
      f"≤ {tol:+.2f} points",
      drop <= tol,
      steps,
      rules,
    )
    checks += [dataclasses.replace(speed, group=name), dataclasses.replace(accuracy, group=name)]
    results.append(_all([speed.result, accuracy.result]))
  return checks, _any(results)


CLAIMS: tuple[Claim, ...] = (
  Claim(
    1,
    "Factorizing 3×3 convolutions should stay away from the input",
    "Factoring 3×3 convolutions can hurt accuracy and should stay away from the input: factorizing the stem "
    "is worse than factorizing only the later layers (Szegedy et al. 2016).",
    "compare",
    ("spatial", "spatial_stem"),
    ("dense",),
    "`spatial_stem` (every conv a `SpatialConv`, the stem included) against `spatial` (the same network with "
    "a dense stem), trained and measured in the same run. On 1-channel images a spatial stem of rank 3 (what "
    "`spatial_rank` 0.5 gives from 6 stem channels on) can represent any dense stem: the comparison isolates the "
    "factorized parametrization of the first layer (see `experiments/schemes.py`).",
    "holds when `spatial_stem` is more than {accuracy_tolerance:.2f} points less accurate than `spatial`; "
    "accuracy counts only after ≥ {min_train_steps} training steps.",
    "python -m experiments.claims.compare --preset full --schemes dense,spatial,spatial_stem",
    _stem,
  ),
  Claim(
    2,
    "Two stacked 3×3 convs replace a 5×5",
    "Two stacked 3×3 convolutions replace a 5×5 at similar accuracy with fewer MACs and parameters (VGG).",
    "compare",
    ("stacked", "dense5"),
    ("dense",),
    "`stacked` (each 5×5 conv of the `dense5` network replaced by two 3×3 convs with a ReLU between) against "
    "`dense5`, in the same run.",
    "holds when `stacked` has fewer MACs and fewer parameters than `dense5` and at most "
    "{accuracy_tolerance:.2f} points lower accuracy (after ≥ {min_train_steps} training steps).",
    "python -m experiments.claims.compare --preset full --schemes dense,dense5,stacked",
    _stacked,
  ),
  Claim(
    3,
    "Bottleneck blocks keep the cost low",
    "Bottleneck blocks (1×1 reduce, 3×3, 1×1 expand) keep the cost low: far fewer MACs than the dense "
    "network at close accuracy (ResNet).",
    "compare",
    ("bottleneck", "dense"),
    (),
    "`bottleneck` (every conv after the stem a `Bottleneck` of width C/2) against `dense`, in the same run.",
    "holds when `dense` has ≥ {far_fewer_macs:.2f}× the MACs of `bottleneck` and `bottleneck` is at most "
    "{accuracy_tolerance:.2f} points less accurate (after ≥ {min_train_steps} training steps).",
    "python -m experiments.claims.compare --preset full --schemes dense,bottleneck",
    _bottleneck,
  ),
  Claim(
    4,
    "Fewer but wider layers run faster for the same power",
    "Fewer but wider layers run faster for the same power: merging layers and widening by √(layers merged) "
    "gives faster measured throughput at similar accuracy.",
    "compare",
    ("wide", "dense"),
    (),
    "`wide` (each pair of convs at one resolution merged into one conv √2× as wide) against `dense`; "
    "throughput is batched inference images/s, timed interleaved in the same process (median calls).",
    "holds when the run widens by {wide_factor:.4f} with pairs merged, `wide`'s inference throughput is above "
    "`dense`'s by more than the timing band (±{timing_band:.0%}; ±{loaded_timing_band:.0%} when the machine was "
    "loaded beyond its cores) and `wide` is at most {accuracy_tolerance:.2f} points less accurate (after ≥ "
    "{min_train_steps} training steps).",
    "python -m experiments.claims.compare --preset full --schemes dense,wide",
    _wide,
  ),
  Claim(
    5,
    "Separable convs may need depth multiplier 4 or 8 to train",
    "Depthwise-separable convolutions sometimes don't train until the depth multiplier is 4 or 8.",
    "compare",
    ("separable1", "separable4", "separable8"),
    ("dense",),
    "`separable1` against the better of `separable4` and `separable8`, in the same run.",
    "holds when `separable1` is at least {separable_gap:.2f} points less accurate than the better of "
    "`separable4` and `separable8` (after ≥ {min_train_steps} training steps).",
    "python -m experiments.claims.compare --preset full --schemes dense,separable1,separable4,separable8",
    _separable,
  ),
  Claim(
    6,
    "CP decomposition plus fine-tuning keeps accuracy at large speedups",
    "CP-decomposing the convs of a trained network and fine-tuning keeps accuracy at large speedups "
    "(Lebedev et al. 2015: 8.5× CPU speedup at 1 % accuracy loss).",
    "compress",
    (),
    (),
    "the compression pipeline (`experiments/claims/compress.py`): the trained dense network's convs after the stem "
    "CP-decomposed at a MAC-reduction target, fine-tuned, timed against the dense network in the same "
    "process; the drop is measured against the dense network fine-tuned the same number of steps. (Lebedev et "
    "al.'s figure is for AlexNet's second conv layer and top-5 error; here: the whole network, top-1 accuracy.)",
    "holds when some CP variant is ≥ {large_speedup:.2f}× faster (measured inference throughput, beyond the "
    "timing band) and loses at most {accuracy_tolerance:.2f} points (the dense baseline trained ≥ "
    "{min_train_steps} steps); does not hold when every CP variant fails one of the two.",
    "python -m experiments.claims.compress --preset full --variants cp_mac4,cp_mac8",
    _cp,
  ),
)
"""The claims, in the seed's order."""


# --- Evaluation -----------------------------------------------------------------------------------------------


def pick_compare_run(runs: Sequence[Run], schemes: Sequence[str]) -> tuple[Run | None, tuple[str, ...]]:
  """The run with every scheme of ``schemes`` whose needed schemes trained longest (ties: the first).

  Returns:
    ``(run, ())``, or ``(None, missing)`` with the schemes the most complete run lacks.
  """
  complete = [r for r in runs if all(s in r.rows for s in schemes)]
  if complete:
    return max(complete, key=lambda r: r.steps(schemes)), ()
  if not runs:
    return None, tuple(schemes)
  most = max(runs, key=lambda r: sum(s in r.rows for s in schemes))
  return None, tuple(s for s in schemes if s not in most.rows)


def pick_compress_run(runs: Sequence[Run]) -> Run | None:
  """The run with CP variants whose dense baseline trained longest, then fine-tuned longest (ties: the first)."""
  with_cp = [r for r in runs if _cp_variants(r)]
  if not with_cp:
    return None
  return max(with_cp, key=lambda r: (r.steps(), r.payload.get("compress", {}).get("finetune_steps", 0)))


def _reason(checks: Sequence[Check], result: Result) -> str:
  """One sentence: the failing checks, or the undecided ones of the alternatives that have not failed."""
  if result is True:
    passing = sorted({c.group for c in checks if c.group and _all([d.result for d in checks if d.group == c.group])})
    return "every check passes" + (f" for {', '.join(passing)}." if passing else ".")
  if result is False:
    return "fails: " + "; ".join(f"{c.name} is {c.measured} (needed {c.needed})" for c in checks if c.result is False)
  failed = {c.group for c in checks if c.result is False}
  return "undecided: " + "; ".join(f"{c.name} — {c.note}" for c in checks if c.result is None and c.group not in failed)


def evaluate(claim: Claim, compare_runs: Sequence[Run], compress_runs: Sequence[Run], rules: Rules) -> Verdict:
  """The claim's verdict from the run :func:`pick_compare_run` / :func:`pick_compress_run` chooses."""
  if claim.source == "compress":
    run = pick_compress_run(compress_runs)
    if run is None:
      what = "no compress run given" if not compress_runs else "no compress run has a CP variant (scheme `cp`)"
      return Verdict(claim, INCONCLUSIVE, f"{what}.", None, (), ("CP variants",))
  else:
    run, missing = pick_compare_run(compare_runs, claim.schemes)
    if run is None:
      what = "no compare run given" if not compare_runs else "no compare run has every scheme it needs"
      names = ", ".join(f"`{s}`" for s in missing)
      return Verdict(claim, INCONCLUSIVE, f"{what}; missing: {names}.", None, (), missing)
  checks, result = claim.evaluate(run, rules)
  verdict = {True: HOLDS, False: FAILS, None: INCONCLUSIVE}[result]
  if not checks:
    return Verdict(claim, INCONCLUSIVE, "nothing to check.", run, ())
  return Verdict(claim, verdict, _reason(checks, result), run, tuple(checks))


def evaluate_all(
  compare_runs: Sequence[Run], compress_runs: Sequence[Run], rules: Rules | None = None
) -> list[Verdict]:
  """The verdict of every claim of :data:`CLAIMS`."""
  rules = rules or Rules()
  return [evaluate(claim, compare_runs, compress_runs, rules) for claim in CLAIMS]


# --- Loading --------------------------------------------------------------------------------------------------


def find_files(paths: Sequence[str], filename: str, argument: str) -> list[Path]:
  """The results files named by ``paths``: files as given; for a directory its ``filename``, else all below it.

  Raises:
    ValueError: naming ``argument`` when a path does not exist or a directory holds no ``filename``.
  """
  found: list[Path] = []
  for given in paths:
    path = Path(given)
    if path.is_file():
      found.append(path)
    elif path.is_dir():
      files = [path / filename] if (path / filename).is_file() else sorted(path.rglob(filename))
      if not files:
        raise ValueError(f"{argument} must name {filename} files or directories holding one, {given!r} has none")
      found += files
    else:
      raise ValueError(f"{argument} must name existing {filename} files or directories, got {given!r}")
  unique: list[Path] = []
  for path in found:
    if path.resolve() not in {p.resolve() for p in unique}:
      unique.append(path)
  return unique


def load_run(path: Path, kind: str) -> Run:
  """Reads one ``compare.json`` (``kind="compare"``) or ``compress.json`` (``kind="compress"``).

  Raises:
    ValueError: naming the file when it is not such a payload.
  """
  try:
    payload = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"--{kind} file {str(path)!r} must be JSON: {e}") from None
  needed = ("results",) if kind == "compare" else ("results", "dense")
  key = "scheme" if kind == "compare" else "variant"
  if (
    not isinstance(payload, dict)
    or any(k not in payload for k in needed)
    or not isinstance(payload["results"], list)
    or any(not isinstance(r, dict) or key not in r for r in payload["results"])
  ):
    raise ValueError(
      f"--{kind} file {str(path)!r} must be the payload of experiments.{kind} (keys {needed}, rows with {key!r})"
    )
  return Run(str(path), kind, payload)


# --- Markdown -------------------------------------------------------------------------------------------------

_RESULT = {True: "pass", False: "fail", None: "undecided"}


def _run_line(run: Run) -> str:
  env, cfg = run.environment, run.payload.get("config", {})
  load = env.get("load_average")
  parts = [
    f"`{run.path}`",
    f"made by `{run.command}`",
    env.get("date", "date not recorded"),
    f"{env.get('device_kind', '?')}, {env.get('usable_cpus', '?')} usable cores, load {load[0] if load else '?'}"
    + (" (above the cores: wider timing band)" if run.loaded() else ""),
    f"config {cfg.get('name', '?')}, preset {cfg.get('preset', '?')}",
  ]
  return "; ".join(parts)


def _compare_table(run: Run, schemes: Sequence[str]) -> list[str]:
  rows = run.rows
  bench = run.payload.get("bench_batch_size", "?")
  lines = [
    f"| scheme | params | MACs/image | test accuracy | training steps | inference img/s (b={bench}) "
    "| latency ms (b=1) | training img/s |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for s in schemes:
    r = rows[s]
    latency = r.get("latency_ms")
    lines.append(
      f"| {s} | {r['params']:,} | {r['macs']:,} | {_pct(r['test_accuracy'])} | {r['train_steps']} "
      f"| {r['inference_images_per_s']:,.0f} | {'—' if latency is None else f'{latency:.3f}'} "
      f"| {r['train_images_per_s']:,.0f} |"
    )
  return lines


def _compress_table(run: Run) -> list[str]:
  dense = run.payload["dense"]
  settings = run.payload.get("compress", {})
  after_ft = dense.get("test_accuracy_after_ft")
  lines = [
    f"Dense baseline: {dense['train_steps']} training steps, {dense['params']:,} params, {dense['macs']:,} "
    f"MACs/image, test accuracy {_pct(dense['test_accuracy'])}"
    + (f" ({_pct(after_ft)} after the same fine-tuning)" if after_ft is not None else "")
    + f", {dense['inference_images_per_s']:,.0f} images/s; "
    f"{settings.get('finetune_steps', '?')} fine-tuning steps per variant.",
    "",
    "| variant | rule | MACs/image | MAC ratio | measured inference speedup | accuracy before FT | accuracy after FT |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in _cp_variants(run):
    lines.append(
      f"| {r['variant']} | {r.get('rule', '?')} | {r['macs']:,} | {r['mac_ratio']:.2f}× "
      f"| {r['inference_speedup']:.2f}× | {_pct(r['accuracy_before_ft'])} | {_pct(r['accuracy_after_ft'])} |"
    )
  return lines


def claim_markdown(v: Verdict, rules: Rules) -> list[str]:
  """One claim's section."""
  claim = v.claim
  lines = [
    f"## {claim.number}. {claim.title}",
    "",
    f"> {claim.statement}",
    "",
    f"**Verdict: {v.verdict}** — {v.reason}",
    "",
    f"Test: {claim.test}",
    "",
    f"Rule: {claim.rule.format(**dataclasses.asdict(rules))}",
    "",
  ]
  if v.run is None:
    lines += [
      f"No data: the given runs lack {', '.join(f'`{m}`' for m in v.missing)}. To produce it: `{claim.produce}`.",
      "",
    ]
    return lines
  lines += [f"Data: {_run_line(v.run)}.", "", f"Longer run: `{claim.produce}`.", ""]
  if claim.source == "compare":
    shown = list(claim.schemes) + [s for s in claim.context if s in v.run.rows and s not in claim.schemes]
    lines += _compare_table(v.run, shown)
  else:
    lines += _compress_table(v.run)
  lines += ["", "| check | measured | needed | result |", "|---|---|---|---|"]
  for c in v.checks:
    result = _RESULT[c.result] + (f": {c.note}" if c.note else "")
    lines.append(f"| {c.name} | {c.measured} | {c.needed} | {result} |")
  return [*lines, ""]


def markdown(
  verdicts: Sequence[Verdict],
  compare_runs: Sequence[Run],
  compress_runs: Sequence[Run],
  rules: Rules,
  command: str,
) -> str:
  """The whole README: header, summary, rules, runs read, one section per claim."""
  lines = [
    "# Experiments: verdicts on the claims",
    "",
    f"Generated by `{command}` (`experiments/claims/verdicts.py`) from the results files listed below — do not edit "
    "by hand: rerun the command after new runs. Every number here is read from those files.",
    "",
    "| # | claim | verdict | run |",
    "|---|---|---|---|",
  ]
  for v in verdicts:
    where = f"`{v.run.path}`" if v.run else "— (missing " + ", ".join(f"`{m}`" for m in v.missing) + ")"
    lines.append(f"| {v.claim.number} | {v.claim.title} | **{v.verdict}** | {where} |")
  lines += [
    "",
    "## How the verdicts are made",
    "",
    "- Each claim uses one run (timings compare only within a run): among those with every scheme it needs, "
    "the one whose needed schemes trained the most steps.",
    "- A claim **holds** when all its checks pass, **does not hold here** when one fails, and is "
    "**inconclusive** when none fails but one is undecided, or when no run has the data.",
    f"- Accuracy checks count only when the compared models trained ≥ {rules.min_train_steps} steps; "
    "shorter runs (the quick preset: 64 steps) show how fast a network learns, not where it ends. "
    f'"Similar" accuracy: at most {rules.accuracy_tolerance:.2f} points of percent worse (one seed).',
    f"- Timing checks are undecided within ±{rules.timing_band:.0%} of their threshold "
    f"(±{rules.loaded_timing_band:.0%} when the run's 1-minute load average at the end exceeded its usable "
    "cores: other jobs shared the machine). MAC and parameter checks are exact.",
    "",
    "## Runs read",
    "",
  ]
  for run in [*compare_runs, *compress_runs]:
    steps = run.steps()
    what = " (the fewest of its schemes)" if run.kind == "compare" else " (dense baseline)"
    lines.append(f"- {_run_line(run)}; {steps} training steps{what}")
  if not compare_runs and not compress_runs:
    lines.append("- none")
  lines.append("")
  for v in verdicts:
    lines += claim_markdown(v, rules)
  return "\n".join(lines).rstrip("\n") + "\n"


# --- Command line ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
  parser.add_argument("--compare", nargs="+", action="extend", default=[], help="compare.json files or directories")
  parser.add_argument("--compress", nargs="+", action="extend", default=[], help="compress.json files or directories")
  parser.add_argument("--out", default="experiments/README.md", help="the Markdown to write")
  parser.add_argument("--min-train-steps", type=int, default=Rules.min_train_steps)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Verdict]:
  """The command line: reads the runs, writes ``--out``, prints each claim's verdict.

  Raises:
    ValueError: naming ``--compare``/``--compress`` when a path is missing or not such a results file, or
      ``--min-train-steps`` when it is negative.
  """
  args = parse_args(argv)
  if args.min_train_steps < 0:
    raise ValueError(f"--min-train-steps must be >= 0, got {args.min_train_steps}")
  rules = Rules(min_train_steps=args.min_train_steps)
  compare_runs = [load_run(p, "compare") for p in find_files(args.compare, "compare.json", "--compare")]
  compress_runs = [load_run(p, "compress") for p in find_files(args.compress, "compress.json", "--compress")]
  verdicts = evaluate_all(compare_runs, compress_runs, rules)
  command = command_line(__spec__.name, argv)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(markdown(verdicts, compare_runs, compress_runs, rules, command))
  for v in verdicts:
    print(f"{v.claim.number}. {v.claim.title}: {v.verdict}")
  print(f"Wrote {out}")
  return verdicts


if __name__ == "__main__":
  main()
