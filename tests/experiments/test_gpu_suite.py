"""Tests of the GPU suite's CPU smoke run, its refusal on the CPU and its budget (no timing assertions)."""

from __future__ import annotations

import json
import pathlib

import jax
import pytest

from experiments.bench import gpu_suite
from experiments.schemes import SCHEMES


def _check_stamp(part: dict, command: str) -> None:
  assert part["device_kind"] == jax.devices()[0].device_kind
  assert part["versions"]["jax"] == jax.__version__ and part["versions"]["jaxlib"]
  assert part["command"] == command
  assert part["wall_s"] > 0


def test_smoke_run_writes_every_part(tmp_path: pathlib.Path) -> None:
  argv = ["--allow-cpu", "--smoke", "--out", str(tmp_path)]
  suite = gpu_suite.main(argv)
  command = "python -m experiments.bench.gpu_suite " + " ".join(argv)
  assert json.loads((tmp_path / "suite.json").read_text()) == suite
  _check_stamp(suite, command)
  assert (suite["backend"], suite["smoke"], suite["budget_s"]) == ("cpu", True, 270.0)
  assert [(p["name"], p["status"], p["reason"]) for p in suite["parts"]] == [
    (name, "done", None) for name in gpu_suite.PARTS
  ]
  for part in suite["parts"]:
    assert part["files"] and all(pathlib.Path(f).is_file() for f in part["files"])

  depthwise = json.loads((tmp_path / "depthwise.json").read_text())
  _check_stamp(depthwise, command)
  cases = {(r["multiplier"], r["dtype"], r["pass"]) for r in depthwise["records"]}
  assert cases == {(m, d, p) for m in (1, 4) for d in ("float32", "bfloat16") for p in ("forward", "forward_backward")}
  for r in depthwise["records"]:
    assert (r["n"], r["h"], r["w"], r["c"], r["k"]) == (2, 8, 8, 16, 3)
    assert r["macs"] == 2 * 8 * 8 * 9 * 16 * r["multiplier"]
    assert r["shift_speedup_over_xla"] == pytest.approx(r["xla"]["median_ms"] / r["shift"]["median_ms"])
  assert depthwise["skipped"] == []

  layers = json.loads((tmp_path / "bench_layers" / "results.json").read_text())
  _check_stamp(layers, command)
  assert {r["shape_label"] for r in layers["records"]} == {"2x8x8x16 k3"}
  assert {r["scheme"] for r in layers["records"]} == {"dense", "cp"}
  assert layers["peers"]["records"] == []

  network = json.loads((tmp_path / "bench_network" / "results.json").read_text())
  _check_stamp(network, command)
  assert network["config"]["preset"] == "tiny"
  assert {r["scheme"] for r in network["records"]} == {"dense", "cp"}
  assert {r["label"] for r in network["records"]} == {"inference_b2", "train_b2"}


def test_refuses_the_cpu_without_allow_cpu(tmp_path: pathlib.Path) -> None:
  with pytest.raises(SystemExit) as exc:
    gpu_suite.main(["--smoke", "--out", str(tmp_path)])
  assert "backend is cpu" in str(exc.value.code) and "--allow-cpu" in str(exc.value.code)
  assert not (tmp_path / "suite.json").exists()


def test_parts_are_skipped_with_a_reason(tmp_path: pathlib.Path) -> None:
  # Without --smoke a part needs MIN_PART_S of budget left; 1 s leaves none, so nothing is timed.
  suite = gpu_suite.main(["--allow-cpu", "--budget-s", "1", "--parts", "depthwise", "layers", "--out", str(tmp_path)])
  reasons = {p["name"]: (p["status"], p["reason"]) for p in suite["parts"]}
  assert reasons["network"] == ("skipped", "not selected (--parts)")
  for name in ("depthwise", "layers"):
    status, reason = reasons[name]
    assert status == "skipped" and reason.startswith("time budget spent")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.json"]
  with pytest.raises(ValueError, match="--budget-s"):
    gpu_suite.main(["--allow-cpu", "--budget-s", "0", "--out", str(tmp_path)])


def test_full_settings_cover_the_requested_cases() -> None:
  s = gpu_suite.settings(smoke=False)
  assert s.depthwise_shapes == tuple(
    (n, h, w, c) for n in (8, 64) for (h, w, c) in ((32, 32, 64), (16, 16, 128), (8, 8, 256))
  )
  assert {shape.n for shape in s.layer_shapes} == {8, 64} and len(s.layer_shapes) == 8
  assert (s.network_preset, s.network_schemes) == ("quick", SCHEMES)
