"""Tests of the cost-model fit: it recovers the rates that generated the timings."""

from __future__ import annotations

import pytest

from experiments.planner.fit_rates import (
  _formats,
  decisions,
  fit,
  fit_training_factors,
  forward_times,
  training_decisions,
)

RATES = {"conv": 5e10, "dot": 8e10, "depthwise_shift": 6e9, "depthwise_xla": 4e8, "step": 1e-4}


def _record(scheme: str, implementation: str, steps: dict[str, int], n_steps: int, depthwise: str | None) -> dict:
  seconds = sum(m / RATES[k] for k, m in steps.items()) + n_steps * RATES["step"]
  return {
    "scheme": scheme,
    "implementation": implementation,
    "depthwise": depthwise,
    "shape_label": "8x16x16x128 k3",
    "pass": "forward",
    "median_ms": seconds * 1e3,
    "steps": steps,
    "n_steps": n_steps,
  }


def _records() -> list[dict]:
  out = []
  for i, rank in enumerate((16, 64, 256, 1024)):
    scheme = f"cp rank {rank}"
    pointwise = 2 * 2048 * 128 * rank
    out.append(_record(scheme, "factorized", {"dot": pointwise, "depthwise_shift": 2048 * 6 * rank}, 4, "shift"))
    out.append(_record(scheme, "factorized", {"dot": pointwise, "depthwise_xla": 2048 * 6 * rank}, 4, "xla"))
    out.append(_record(scheme, "reconstructed", {"conv": 302e6 * (1 + i / 10), "dot": 9 * rank * 262}, 2, None))
  return out


def test_fit_recovers_the_generating_rates() -> None:
  fitted = fit(_records())
  for kind, value in RATES.items():
    assert fitted[kind] == pytest.approx(value, rel=1e-3), kind


def test_decisions_pick_the_faster_path_with_exact_rates() -> None:
  rows = decisions(_records(), RATES)
  assert len(rows) == 4
  assert all(r["choice_over_best"] == pytest.approx(1.0) for r in rows)
  assert {r["choice"] for r in rows} == {"factorized", "reconstructed"}


FACTORS = {
  "conv": 2.5,
  "dot": 3.2,
  "depthwise_shift": 4.5,
  "depthwise_shift_multiplier": 8.0,
  "depthwise_xla": 2.0,
  "step": 3.0,
}


def _training_records() -> list[dict]:
  """Forward+backward records of every switchable scheme on one real shape, timed by ``FACTORS``."""
  shape = {"n": 2, "h": 8, "w": 8, "c": 32, "k": 3}
  label = "2x8x8x32 k3"
  base = {"shape_label": label, "shape": shape, "pass": "forward_backward"}
  candidates = [{"scheme": "dense", "implementation": "lax", "depthwise": None}]
  for scheme in ("cp", "tucker2", "tt", "spatial", "separable_m1", "separable_m4"):
    paths = (None,) if scheme in ("tucker2", "spatial") else ("shift", "xla")
    candidates += [{"scheme": scheme, "implementation": "factorized", "depthwise": dw} for dw in paths]
    candidates.append({"scheme": scheme, "implementation": "reconstructed", "depthwise": None})
  formats = _formats([{**base, **candidates[0]}])
  out = []
  for c in candidates:
    record = {**base, **c}
    times = forward_times(record, formats, RATES)
    assert times is not None, c
    record["median_ms"] = 1e3 * sum(FACTORS[k] * v for k, v in times.items())
    out.append(record)
  return out


def test_fit_training_factors_recovers_the_generating_factors() -> None:
  records = _training_records()
  assert {r["scheme"] for r in records} >= {"dense", "cp", "tt", "separable_m4"}
  fitted = fit_training_factors(records, RATES)
  for kind, value in FACTORS.items():
    assert fitted[kind] == pytest.approx(value, rel=1e-3), kind


def test_training_decisions_pick_the_faster_path_with_exact_factors() -> None:
  rows = training_decisions(_training_records(), RATES, FACTORS)
  assert len(rows) == 6
  assert all(r["choice_over_best"] == pytest.approx(1.0) for r in rows)
