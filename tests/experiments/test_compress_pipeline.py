"""``python -m experiments.claims.compress`` end to end on the tiny synthetic preset."""

import json

import pytest
from experiment_subprocess import run
from flax import nnx

from efficonv import cost
from efficonv.compression import Policy, compress
from experiments.claims.compress import settings_for
from experiments.common.config import load
from experiments.models import build_model

ROW_KEYS = {
  "variant",
  "scheme",
  "rule",
  "macs",
  "mac_ratio",
  "inference_speedup",
  "accuracy_dense",
  "accuracy_before_ft",
  "accuracy_after_ft",
  "drop_points",
  "report",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("compress") / "run"
  command = [
    "-m",
    "experiments.claims.compress",
    "--preset",
    "tiny",
    "--workdir",
    str(workdir),
    "--finetune-seeds",
    "2",
  ]
  result = run(command, timeout=600)
  return workdir, json.loads((workdir / "compress.json").read_text()), result


def test_tiny_preset_writes_both_files_with_expected_keys(tiny_run):
  workdir, payload, result = tiny_run
  assert {"config", "compress", "environment", "dense", "results"} <= set(payload)
  rows = {r["variant"]: r for r in payload["results"]}
  assert list(rows) == [v.name for v in settings_for("tiny").variants]
  for row in rows.values():
    assert ROW_KEYS <= set(row)
    assert set(row["report"]) == {"layers", "totals", "policy"}
    assert row["drop_points"] == pytest.approx(100 * (row["accuracy_dense"] - row["accuracy_after_ft"]))
    assert row["inference_speedup"] > 0 and len(row["finetune_losses"]) == row["finetune_steps"]
    # the row's model is the first seed's; the second is fine-tuned from the same factors
    seeds = row["accuracy_after_ft_seeds"]
    assert len(seeds) == 2 and seeds[0] == row["accuracy_after_ft"] and 0 <= seeds[1] <= 1
  assert payload["compress"]["finetune_seeds"] == 2
  # Every conv after the stem is factorized; the stem is left dense.
  layers = rows["cp_mac4"]["report"]["layers"]
  assert layers[0]["scheme"] == "skipped" and all(r["scheme"] == "cp" for r in layers[1:])
  assert rows["cp_mac4"]["mac_ratio"] > 2 and rows["tucker2_mac4"]["mac_ratio"] > 2
  markdown = (workdir / "compress.md").read_text()
  assert "| cp_mac4 | cp | MacReduction(4) |" in markdown and "### tucker2_full" in markdown
  assert markdown.count(", 2 seeds) |") == len(rows)
  assert "| cp_mac4 |" in result.stdout


def test_full_rank_tucker2_reproduces_the_dense_network(tiny_run):
  _, payload, _ = tiny_run
  row = next(r for r in payload["results"] if r["variant"] == "tucker2_full")
  assert row["accuracy_before_ft"] == payload["dense"]["test_accuracy"] == row["accuracy_dense"]
  assert all(layer["relative_error"] < 1e-4 for layer in row["report"]["layers"])


def test_report_macs_equal_cost_macs_of_the_models(tiny_run):
  _, payload, _ = tiny_run
  cfg = load("compare_fashion_mnist", "tiny")
  shape = tuple(cfg.data.synthetic_shape)
  dense = build_model(cfg.model, shape, rngs=nnx.Rngs(0))
  dense_macs = cost.macs(dense, (1, *shape))
  assert payload["dense"]["macs"] == dense_macs
  head_macs = dense.head.in_features * dense.head.out_features
  settings = settings_for("tiny")
  for variant in settings.variants:
    row = next(r for r in payload["results"] if r["variant"] == variant.name)
    totals = row["report"]["totals"]
    # The report counts every conv; the rest of the network (the linear head) is unchanged.
    assert totals["macs_before"] + head_macs == dense_macs
    assert totals["macs_after"] + head_macs == row["macs"]
    assert row["mac_ratio"] == dense_macs / row["macs"]
    if variant.name != "tucker2_full":  # MAC-budget ranks depend on the shapes only, not the weights
      policy = Policy(scheme=variant.scheme, rank=variant.rule, implementation=settings.implementation)
      small, report = compress(dense, policy, input_shape=(1, *shape))
      assert cost.macs(small, (1, *shape)) == row["macs"] == report.macs_after + head_macs
