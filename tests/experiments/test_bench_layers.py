"""Tests of the layer benchmark's cases, pure functions and report (no timing assertions)."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.cases import SCHEMES, Shape, variants_for
from experiments.bench.functional import as_pure_function
from experiments.bench.layers_report import auto_vs_best, markdown, plot


def test_variants_of_a_scheme_compute_the_same_function() -> None:
  shape = Shape(1, 6, 6, 8, 3)
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape.input_shape, np.float32))
  variants = variants_for(shape, [s for s in SCHEMES if s.name in ("cp", "bottleneck")])
  assert [v.label for v in variants] == [
    "cp/factorized/shift",
    "cp/factorized/xla",
    "cp/reconstructed",
    "cp/auto",
    "bottleneck/factorized",
  ]
  outputs = []
  for v in variants[:4]:
    fn, params = as_pure_function(v.layer)
    out = jax.jit(fn)(x, params)
    np.testing.assert_allclose(np.asarray(out), np.asarray(v.layer(x)), rtol=1e-5, atol=1e-5)
    outputs.append(np.asarray(out))
  for out in outputs[1:]:
    np.testing.assert_allclose(out, outputs[0], rtol=1e-4, atol=1e-4 * np.abs(outputs[0]).max())


def _record(variant: str, implementation: str, depthwise: str | None, ms: float, choice: str | None = None) -> dict:
  scheme = variant.split("/")[0]
  return {
    "variant": variant,
    "scheme": scheme,
    "implementation": implementation,
    "depthwise": depthwise,
    "auto_choice": choice,
    "shape_label": "1x6x6x8 k3",
    "pass": "forward",
    "median_ms": ms,
    "iqr_ms": 0.1,
    "macs": 100,
    "gflops": 1.0,
    "mac_ratio": 4.0,
    "speedup": 2.0,
    "speedup_over_mac_ratio": 0.5,
    "dense_method": "dense/lax",
    "dense_median_ms": 2.0,
  }


def test_auto_vs_best_compares_the_chosen_forced_variant(tmp_path: pathlib.Path) -> None:
  records = [
    _record("cp/factorized/shift", "factorized", "shift", 1.0),
    _record("cp/factorized/xla", "factorized", "xla", 5.0),
    _record("cp/reconstructed", "reconstructed", None, 0.5),
    _record("cp/auto", "auto", None, 1.2, choice="factorized/shift"),
  ]
  (check,) = auto_vs_best(records)
  assert check["best"] == "reconstructed"
  assert check["choice_over_best"] == 2.0 and check["measured_over_best"] == 2.4
  text = markdown({"machine": {"command": "x"}, "records": records, "skipped": ["a: b"], "peers": {"notes": ["none"]}})
  assert "auto versus the best" in text and "**no**" in text and "Not timed" in text
  path = plot(records, str(tmp_path / "p.png"))
  assert path is not None and (tmp_path / "p.png").stat().st_size > 0
