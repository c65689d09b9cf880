"""Tests of the whole-network benchmark on the tiny preset (structure and arithmetic, no timing assertions)."""

from __future__ import annotations

import json
import pathlib

import pytest
from flax import nnx

import efficonv
from efficonv import cost
from experiments.bench import network as bench_network
from experiments.bench.dense_baselines import EIGEN_CONV_OPTIONS, NO_YNN_FUSION_OPTIONS, dense_methods
from experiments.bench.network import Network, dense_variants, make_records, parse_schemes, scheme_variants
from experiments.common import results
from experiments.common.config import load
from experiments.common.timing import summarize
from experiments.models import build_model, network_config


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


# --- Realistic networks: --compress mode -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def realistic_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, pathlib.Path]:
  """A VGG-11 at 1/16 width: two dense builds under two compile settings, one Tucker-2 network, breakdown."""
  out = tmp_path_factory.mktemp("bench_network_realistic")
  patch = pytest.MonkeyPatch()
  # Two compile settings instead of three keep the test's compilations few; the selection logic is the same.
  patch.setattr(
    bench_network, "compile_settings", lambda backend=None: {"default": {}, "no_ynn": NO_YNN_FUSION_OPTIONS}
  )
  argv = ["--config", "bench_vgg11_cifar", "--preset", "tiny", "--compress", "tucker2:4", "--batch-sizes", "2"]
  argv += ["--compressed-settings", "default", "--breakdown-batch-sizes", "2", "--no-torch", "--out", str(out)]
  try:
    bench_network.main(argv)
  finally:
    patch.undo()
  return json.loads((out / "results.json").read_text()), out


def test_realistic_run_names_the_fastest_dense_build_and_compresses(realistic_run: tuple[dict, pathlib.Path]) -> None:
  payload, out = realistic_run
  results.validate(payload, "bench_network")
  rows = {r["variant"]: r for r in payload["records"]}
  dense = ["dense", "dense/no_ynn", "dense/efficonv", "dense/efficonv/no_ynn"]
  assert list(rows) == [*dense, "tucker2_mac4"]
  fastest = payload["dense_fastest"]["inference_b2"]
  assert rows[fastest]["ms"] == min(rows[v]["ms"] for v in dense) and rows[fastest]["speedup"] == pytest.approx(1)
  assert rows["tucker2_mac4"]["compiler_options"] == {} and rows["tucker2_mac4"]["scheme"] == "tucker2"
  layers = payload["compressed"]["tucker2_mac4"]["layers"]
  assert [layer["scheme"] for layer in layers] == ["skipped"] + ["tucker2"] * 7
  dense_macs = payload["config"]["dense_macs"]
  saved = sum(layer["macs_before"] - layer["macs_after"] for layer in layers)
  assert rows["tucker2_mac4"]["macs"] == dense_macs - saved
  assert rows["tucker2_mac4"]["mac_ratio"] == pytest.approx(dense_macs / (dense_macs - saved))
  assert payload["torch_peer"]["skipped"].startswith("not requested")
  md = (out / "results.md").read_text()
  assert f"fastest dense: `{fastest}`" in md and "Per-layer breakdown" in md and "Skipped: not requested" in md


def test_realistic_breakdown_times_every_conv_and_the_rest(realistic_run: tuple[dict, pathlib.Path]) -> None:
  payload, _ = realistic_run
  breakdown = payload["breakdown"]["inference_b2"]
  fastest = payload["dense_fastest"]["inference_b2"]
  assert list(breakdown) == list(dict.fromkeys([fastest, "dense", "tucker2_mac4"]))
  whole = {r["variant"]: r["ms"] for r in payload["records"]}
  for name, b in breakdown.items():
    assert [layer["layer"] for layer in b["layers"]] == ["stem/conv"] + [f"layers/{i}/conv" for i in range(7)]
    assert all(layer["ms"] > 0 and layer["input_shape"][0] == 2 for layer in b["layers"])
    assert b["whole_ms"] == whole[name]
    assert b["rest_ms"] == pytest.approx(b["whole_ms"] - sum(layer["ms"] for layer in b["layers"]))
  kinds = [layer["kind"] for layer in breakdown["tucker2_mac4"]["layers"]]
  assert kinds[0].startswith("Conv:") and all(k.startswith("TuckerConv:") for k in kinds[1:])
  assert all(layer["kind"] == "nnx.Conv" for layer in breakdown["dense"]["layers"])


def test_parse_compress_and_build_names() -> None:
  specs = bench_network.parse_compress(["cp:4,tucker2:8", "cp:4"])
  assert [(s.scheme, s.factor, s.name) for s in specs] == [("cp", 4.0, "cp_mac4"), ("tucker2", 8.0, "tucker2_mac8")]
  for bad in ("tt:4", "cp", "cp:1", "cp:x"):
    with pytest.raises(ValueError, match="--compress"):
      bench_network.parse_compress([bad])
  assert bench_network.dense_build_name("nnx", "default") == "dense"
  assert bench_network.dense_build_name("auto", "no_ynn") == "dense/efficonv/no_ynn"
  assert bench_network.dense_build_name("im2col", "eigen") == "dense/efficonv_im2col/eigen"
  assert bench_network._build_model_name("dense/efficonv/eigen") == "dense/efficonv"
  assert bench_network.compile_settings("gpu") == {"default": {}}
  assert list(bench_network.compile_settings("cpu")) == ["default", "no_ynn", "eigen"]
  with pytest.raises(ValueError, match="dense_builds"):
    bench_network.run_realistic(load("bench_vgg11_cifar", "tiny"), compress=specs, dense_builds=["fast"])
  with pytest.raises(ValueError, match="compressed_settings"):
    bench_network.run_realistic(load("bench_vgg11_cifar", "tiny"), compress=specs, compressed_settings=["o3"])


def test_make_records_handles_variants_timed_for_some_labels_only() -> None:
  networks = {
    "dense": (Network("dense", 10, 900, None), {}),  # type: ignore[arg-type]
    "cp_mac4": (Network("cp", 5, 300, None), {}),  # type: ignore[arg-type]
  }
  stats = {
    "dense": {"inference_b1": summarize([0.2]), "train_b8": summarize([0.9])},
    "cp_mac4": {"inference_b1": summarize([0.1])},
  }
  records, fastest = make_records(stats, networks)
  assert fastest == {"inference_b1": "dense", "train_b8": "dense"}
  assert [(r["label"], r["variant"]) for r in records] == [
    ("inference_b1", "dense"),
    ("inference_b1", "cp_mac4"),
    ("train_b8", "dense"),
  ]
  assert records[1]["speedup"] == pytest.approx(2.0) and records[1]["mac_ratio"] == pytest.approx(3.0)


def test_torch_peer_is_skipped_with_the_reason_when_torch_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
  from experiments.bench import torch_network
  from experiments.bench.peers.base import PeerUnavailableError

  def absent() -> None:
    raise PeerUnavailableError("torch is not importable (test)")

  monkeypatch.setattr(torch_network, "import_torch", absent)
  peer = bench_network._torch_peer({}, (32, 32, 3), (1,), load("bench_vgg11_cifar", "tiny").bench)
  assert peer == {"skipped": "torch is not importable (test)", "records": []}


def test_torch_network_matches_the_model_when_torch_is_installed() -> None:
  torch = pytest.importorskip("torch")
  import numpy as np

  from experiments.bench.torch_network import torch_network

  policy = efficonv.Policy(scheme="cp", rank=4, decompose_kwargs={"n_iter": 2})
  for name in ("vgg11_cifar", "resnet18_cifar"):
    cfg, shape = network_config(name, width_divisor=16)
    model = build_model(cfg, shape, rngs=nnx.Rngs(0))
    small, _ = efficonv.compress(model, policy, input_shape=(1, *shape))
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    for m in (model, small):
      with torch.no_grad():
        got = torch_network(torch, m)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
      if name == "vgg11_cifar":
        np.testing.assert_allclose(got, np.asarray(m(x)), rtol=2e-3, atol=2e-3)
      else:  # torch pads a stride-2 3×3 conv (1, 1), XLA's SAME (0, 1): same shapes and cost, shifted windows
        assert got.shape == (2, cfg.num_classes)
