"""The claims about training a network with a scheme in place of its convs (claims 1–5; compare runs)."""

from __future__ import annotations

from experiments.claims.verdicts.rules import (
  Check,
  Claim,
  Result,
  Rules,
  accuracy_check,
  accuracy_delta,
  all_of,
  cost_check,
  ratio_check,
)
from experiments.claims.verdicts.runs import Run


def _stem(run: Run, rules: Rules) -> tuple[list[Check], Result]:
  rows, steps = run.rows, run.steps(("spatial", "spatial_stem"))
  delta = accuracy_delta(rows, "spatial_stem", "spatial")
  tol = rules.accuracy_tolerance
  checks = [
    accuracy_check(
      "test accuracy, spatial_stem − spatial", delta, f"≤ {-tol:+.2f} points (worse)", delta <= -tol, steps, rules
    )
  ]
  return checks, all_of([c.result for c in checks])


def _stacked(run: Run, rules: Rules) -> tuple[list[Check], Result]:
  rows, steps = run.rows, run.steps(("stacked", "dense5"))
  s, d = rows["stacked"], rows["dense5"]
  delta = accuracy_delta(rows, "stacked", "dense5")
  tol = rules.accuracy_tolerance
  checks = [
    cost_check("MACs/image, stacked vs dense5", f"{s['macs']:,} vs {d['macs']:,}", "fewer", s["macs"] < d["macs"]),
    cost_check("params, stacked vs dense5", f"{s['params']:,} vs {d['params']:,}", "fewer", s["params"] < d["params"]),
    accuracy_check("test accuracy, stacked − dense5", delta, f"≥ {-tol:+.2f} points", delta >= -tol, steps, rules),
  ]
  return checks, all_of([c.result for c in checks])


def _bottleneck(run: Run, rules: Rules) -> tuple[list[Check], Result]:
  rows, steps = run.rows, run.steps(("bottleneck", "dense"))
  cut = rows["dense"]["macs"] / rows["bottleneck"]["macs"]
  delta = accuracy_delta(rows, "bottleneck", "dense")
  tol = rules.accuracy_tolerance
  checks = [
    cost_check(
      "MAC cut, dense / bottleneck", f"{cut:.2f}×", f"≥ {rules.far_fewer_macs:.2f}×", cut >= rules.far_fewer_macs
    ),
    accuracy_check("test accuracy, bottleneck − dense", delta, f"≥ {-tol:+.2f} points", delta >= -tol, steps, rules),
  ]
  return checks, all_of([c.result for c in checks])


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
  delta = accuracy_delta(rows, "wide", "dense")
  tol = rules.accuracy_tolerance
  checks = [
    setup,
    ratio_check("inference throughput, wide / dense", speed, 1.0, run.timing_band(rules)),
    accuracy_check("test accuracy, wide − dense", delta, f"≥ {-tol:+.2f} points", delta >= -tol, steps, rules),
  ]
  return checks, all_of([c.result for c in checks])


def _separable(run: Run, rules: Rules) -> tuple[list[Check], Result]:
  rows, steps = run.rows, run.steps(("separable_m1", "separable_m4", "separable_m8"))
  best = max(("separable_m4", "separable_m8"), key=lambda s: rows[s]["test_accuracy"])
  gap = -accuracy_delta(rows, "separable_m1", best)
  checks = [
    accuracy_check(
      f"test accuracy, {best} (the better of 4, 8) − separable_m1",
      gap,
      f"≥ {rules.separable_gap:+.2f} points",
      gap >= rules.separable_gap,
      steps,
      rules,
    )
  ]
  return checks, all_of([c.result for c in checks])


TRAINING_CLAIMS: tuple[Claim, ...] = (
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
    ("separable_m1", "separable_m4", "separable_m8"),
    ("dense",),
    "`separable_m1` against the better of `separable_m4` and `separable_m8`, in the same run.",
    "holds when `separable_m1` is at least {separable_gap:.2f} points less accurate than the better of "
    "`separable_m4` and `separable_m8` (after ≥ {min_train_steps} training steps).",
    "python -m experiments.claims.compare --preset full --schemes dense,separable_m1,separable_m4,separable_m8",
    _separable,
  ),
)
"""Claims 1–5, in the seed's order."""
