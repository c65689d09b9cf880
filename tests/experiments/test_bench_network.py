"""Tests of the whole-network benchmark on the tiny preset (structure and arithmetic, no timing assertions)."""

from __future__ import annotations

import json
import pathlib

import pytest
from flax import nnx

from efficonv import cost
from experiments.bench import network as bench_network
from experiments.bench.dense_baselines import EIGEN_CONV_OPTIONS, NO_YNN_FUSION_OPTIONS, dense_methods
from experiments.bench.network import Network, dense_variants, make_records, parse_schemes, scheme_variants
from experiments.common.config import load
from experiments.common.timing import summarize
from experiments.models import build_model


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, pathlib.Path]:
  out = tmp_path_factory.mktemp("bench_network")
  argv = ["--preset", "tiny", "--schemes", "cp", "--batch-sizes", "1", "4", "--out", str(out)]
  bench_network.main(argv)
  return json.loads((out / "results.json").read_text()), out


def test_results_structure_and_files(tiny_run: tuple[dict, pathlib.Path]) -> None:
  payload, out = tiny_run
  assert (out / "results.md").read_text().startswith("# Whole-network throughput: compare_fashion_mnist tiny, vgg")
  assert (out / bench_network.PLOT_NAME).stat().st_size > 0
  assert payload["command"].startswith("python -m experiments.bench.network --preset tiny --schemes cp")
  assert payload["machine"]["command"] == payload["command"]
  assert payload["machine"]["device_kind"] and payload["machine"]["jax"]
  assert payload["machine"]["compiler_options"] == {
    "dense/eigen": EIGEN_CONV_OPTIONS,
    "dense/no_ynn": NO_YNN_FUSION_OPTIONS,
    "cp/no_ynn": NO_YNN_FUSION_OPTIONS,
  }
  assert set(payload["versions"]) == set(bench_network.VERSIONED_LIBRARIES)
  config = payload["config"]
  assert (config["preset"], config["arch"], config["schemes"]) == ("tiny", "vgg", ["dense", "cp"])
  assert (config["batch_sizes"], config["train_batch_sizes"]) == ([1, 4], [4])
  assert payload["skipped"] == []
  labels = ["inference_b1", "inference_b4", "train_b4"]
  assert list(payload["dense_fastest"]) == labels
  assert set(payload["dense_fastest"].values()) <= {"dense", "dense/eigen", "dense/no_ynn"}
  records = payload["records"]
  assert [(r["label"], r["variant"]) for r in records] == [
    (label, v) for label in labels for v in ("dense", "dense/eigen", "dense/no_ynn", "cp", "cp/no_ynn")
  ]
  for r in records:
    assert r["measurement"] == r["label"].split("_")[0]
    assert r["batch_size"] == int(r["label"].rsplit("_b", 1)[1])
    assert r["repeats"] >= 2 and r["ms"] == r["median_ms"] > 0 and r["q1_ms"] <= r["ms"] <= r["q3_ms"]
    assert r["images_per_s"] == pytest.approx(1e3 * r["batch_size"] / r["ms"])
    want = {"dense/eigen": EIGEN_CONV_OPTIONS}.get(
      r["variant"], NO_YNN_FUSION_OPTIONS if "no_ynn" in r["variant"] else {}
    )
    assert r["compiler_options"] == want


def test_costs_are_those_of_the_models(tiny_run: tuple[dict, pathlib.Path]) -> None:
  payload, _ = tiny_run
  cfg = load("compare_fashion_mnist", "tiny")
  costs = {}
  for scheme in ("dense", "cp"):
    model = build_model(cfg.with_scheme(scheme).model, (28, 28, 1), rngs=nnx.Rngs(0))
    costs[scheme] = (cost.params(model), cost.macs(model, (1, 28, 28, 1)))
  assert costs["cp"][1] < costs["dense"][1]
  for r in payload["records"]:
    assert (r["params"], r["macs"]) == costs[r["scheme"]]
    assert r["mac_ratio"] == pytest.approx(costs["dense"][1] / costs[r["scheme"]][1])


def test_speedups_are_against_the_fastest_dense(tiny_run: tuple[dict, pathlib.Path]) -> None:
  payload, _ = tiny_run
  for label, fastest in payload["dense_fastest"].items():
    rows = {r["variant"]: r for r in payload["records"] if r["label"] == label}
    dense_ms = min(rows[v]["ms"] for v in ("dense", "dense/eigen", "dense/no_ynn"))
    assert rows[fastest]["ms"] == dense_ms
    for r in rows.values():
      assert (r["dense_variant"], r["dense_ms"]) == (fastest, dense_ms)
      assert r["speedup"] == pytest.approx(dense_ms / r["ms"])
      assert r["speedup_over_mac_ratio"] == pytest.approx(r["speedup"] / r["mac_ratio"])
    assert rows[fastest]["speedup"] == pytest.approx(1.0)
    assert max(rows[v]["speedup"] for v in ("dense", "dense/eigen", "dense/no_ynn")) == pytest.approx(1.0)


def test_make_records_picks_the_fastest_dense_and_the_reference() -> None:
  def net(scheme: str, macs: int) -> Network:
    return Network(scheme, 10, macs, None)  # type: ignore[arg-type]

  networks = {
    "dense": (net("dense", 900), {}),
    "dense/eigen": (net("dense", 900), {"opt": "x"}),
    "dense5": (net("dense5", 2500), {}),
    "stacked": (net("stacked", 1800), {}),
  }
  stats = {
    "dense": {"train_b8": summarize([0.4, 0.4, 0.5])},
    "dense/eigen": {"train_b8": summarize([0.2, 0.3, 0.2])},
    "dense5": {"train_b8": summarize([1.0])},
    "stacked": {"train_b8": summarize([0.8])},
  }
  records, fastest = make_records(stats, networks)
  assert fastest == {"train_b8": "dense/eigen"}
  by = {r["variant"]: r for r in records}
  assert by["dense"]["speedup"] == pytest.approx(0.2 / 0.4)
  assert by["stacked"]["speedup"] == pytest.approx(0.2 / 0.8)
  assert by["stacked"]["mac_ratio"] == pytest.approx(900 / 1800)
  assert by["stacked"]["reference"] == "dense5"
  assert by["stacked"]["reference_speedup"] == pytest.approx(1.0 / 0.8)
  assert by["dense5"]["reference_speedup"] == pytest.approx(0.2 / 1.0)
  assert by["dense"]["images_per_s"] == pytest.approx(8 / 0.4)


def test_bad_arguments_are_refused_by_name() -> None:
  with pytest.raises(ValueError, match=r"--schemes .*'bogus'"):
    bench_network.main(["--preset", "tiny", "--schemes", "cp,bogus"])
  with pytest.raises(ValueError, match="--schemes"):
    parse_schemes([" , "])
  assert parse_schemes(["tt", "cp,dense"]) == ("dense", "tt", "cp")
  with pytest.raises(ValueError, match="--batch-sizes"):
    bench_network.run(load("compare_fashion_mnist", "tiny"), schemes=["cp"], batch_sizes=[0, 4])


def test_dense_variants_per_backend() -> None:
  assert dense_variants("cpu") == {
    "dense": {},
    "dense/eigen": EIGEN_CONV_OPTIONS,
    "dense/no_ynn": NO_YNN_FUSION_OPTIONS,
  }
  assert scheme_variants("cp", "cpu") == {"cp": {}, "cp/no_ynn": NO_YNN_FUSION_OPTIONS}
  assert scheme_variants("cp", "gpu") == {"cp": {}}
  assert dense_variants("gpu") == {"dense": {}}
  assert [m.name for m in dense_methods("cpu")] == ["lax", "lax_eigen", "im2col", "shift"]
  assert [m.name for m in dense_methods("gpu")] == ["lax", "im2col", "shift"]
