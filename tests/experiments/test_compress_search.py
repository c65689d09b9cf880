"""The compress pipeline's search variants: the policy they compress with, and their columns in the report."""

import warnings

import numpy as np
import pytest
from flax import nnx

from efficonv import rank as rank_rules
from efficonv.compression import Policy
from experiments.claims.compress import (
  CATALOG,
  CompressSettings,
  Variant,
  finetune,
  markdown,
  run,
  search_policy,
  stage_groups,
  uniform_at_same_speed,
)
from experiments.common.config import load
from experiments.models import build_model
from experiments.training.steps import make_parallel
from experiments.training.train import load_datasets


def test_search_variants_share_one_search_and_compress_with_its_policy() -> None:
  cfg = load("compare_fashion_mnist", "tiny")
  shape = tuple(cfg.data.synthetic_shape)
  model = build_model(cfg.model, shape, rngs=nnx.Rngs(0))
  settings = CompressSettings(
    (), finetune_steps=0, search_ranks=(rank_rules.MacReduction(2),), search_repeats=3, search_min_seconds=0.0
  )
  calibration = [np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)]
  first = Variant("a", "search", rank_rules.MacReduction(1.5), search=("tucker2",))
  second = Variant("b", "search", rank_rules.Speedup(1.0), search=("tucker2",))
  tables: dict = {}
  policy, report = search_policy(first, settings, model, calibration, (2, *shape), tables)
  assert report.timed and report.target_met and report.predicted_mac_ratio >= 1.5
  assert tables == {("tucker2",): report}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # whether a 1.0× target is met as measured is the machine's
    _, again = search_policy(second, settings, model, calibration, (2, *shape), tables)
  assert again.layers is report.layers  # the same tables, reallocated
  # and, for a Speedup, its point assembled and timed as search does
  assert again.verification and again.target_met == (again.measured_seconds <= again.baseline_seconds)
  assert policy.layers[report.layers[0].path] == "dense"  # the stem, as the uniform variants leave it
  assert {c[0] for c in policy.layers.values() if c != "dense"} == {"tucker2"}
  assert CATALOG["search_speedup4"].rule == rank_rules.Speedup(4) and CATALOG["search_speedup8"].is_search
  with pytest.raises(ValueError, match="variant must be a search variant"):
    search_policy(CATALOG["cp_mac4"], settings, model, calibration, (2, *shape), tables)


def test_markdown_shows_predicted_and_measured_speedups() -> None:
  row = {
    "variant": "search_speedup4",
    "scheme": "search",
    "searched_schemes": ["cp", "tucker2"],
    "rule": "Speedup(4)",
    "mac_ratio": 5.0,
    "inference_speedup": 3.5,
    "latency_speedup": 3.0,
    "accuracy_dense": 0.9,
    "accuracy_before_ft": 0.5,
    "accuracy_after_ft": 0.89,
    "drop_points": 1.0,
    "predicted_speedup": 4.1,
    "measured_speedup_vs_dense": 3.8,
    "report_markdown": "| layer |",
    "search_markdown": "Target Speedup(4) (met)",
    "search_s": 12.0,
  }
  plain = {**row, "variant": "cp_mac4", "scheme": "cp", "rule": "MacReduction(4)"}
  for key in ("searched_schemes", "predicted_speedup", "search_markdown", "search_s"):
    plain.pop(key)
  referenced = {
    **row,
    "variant": "search_speedup5",
    "search_reference": {"build": "dense/no_ynn", "seconds": 0.01},
    "search_measured_speedup": 3.9,
  }
  payload = {
    "config": {"name": "c", "preset": "tiny"},
    "environment": {},
    "compress": {"implementation": "factorized", "finetune_steps": 1, "finetune_lr_fraction": 0.1},
    "bench_batch_size": 8,
    "dense": {
      "train_steps": 1,
      "test_accuracy": 0.9,
      "test_accuracy_after_ft": 0.9,
      "macs": 10,
      "params": 10,
      "inference_images_per_s": 100.0,
    },
    "results": [row, plain, referenced],
  }
  text = markdown(payload)
  assert "| search_speedup4 | search(cp, tucker2) | Speedup(4) | 5.00× | 3.50× |" in text
  assert text.count("| 4.10× | — | 3.80× (vs dense) |") == 1 and "| — | — | 3.80× (vs dense) |" in text
  # A search against the fastest dense build compares its prediction, and its point as timed assembled in
  # the search, with the speedup over that build.
  assert "| search_speedup5 |" in text and text.count("| 4.10× | 3.90× | 3.50× |") == 1
  assert "Search tables (12 s):" in text and "Target Speedup(4) (met)" in text
  assert "after the same fine-tuning as the variants" in text
  del payload["dense"]["test_accuracy_after_ft"]  # a run without the control (--no-control)
  assert "no control for the drops" in markdown(payload)


def test_stage_groups_split_the_replaced_convs_in_forward_order() -> None:
  cfg = load("compare_fashion_mnist", "tiny")
  shape = tuple(cfg.data.synthetic_shape)
  model = build_model(cfg.model, shape, rngs=nnx.Rngs(0))
  uniform = Policy(scheme="cp", rank=rank_rules.MacReduction(4))
  paths = [p for group in stage_groups(uniform, model, (1, *shape), 1) for p in group]
  assert paths == ["layers/0/conv", "layers/1/conv", "layers/2/conv", "layers/3/conv"]  # all but the stem
  assert stage_groups(uniform, model, (1, *shape), 2) == [tuple(paths[:2]), tuple(paths[2:])]
  assert stage_groups(uniform, model, (1, *shape), 9) == [(p,) for p in paths]  # no empty stage
  per_layer = Policy(layers={"layers/1/conv": ("cp", 4), "layers/3/conv": "dense"})
  assert stage_groups(per_layer, model, (1, *shape), 2) == [("layers/1/conv",)]
  with pytest.raises(ValueError, match="stages must be a positive int"):
    stage_groups(uniform, model, (1, *shape), 0)


def _row(variant: str, scheme: str, rule: str, speedup: float, accuracies: list[float], before: float = 0.5) -> dict:
  row = {"variant": variant, "scheme": scheme, "rule": rule, "inference_speedup": speedup}
  return {
    **row,
    "accuracy_after_ft": accuracies[0],
    "accuracy_after_ft_seeds": accuracies,
    "accuracy_before_ft": before,
  }


def test_uniform_accuracy_is_interpolated_at_the_search_speed() -> None:
  searched = {**_row("search", "search", "Speedup(4)", 4.5, [0.92, 0.93], 0.9), "searched_schemes": ["cp"]}
  rows = [
    searched,
    _row("cp_mac8", "cp", "MacReduction(8)", 3.5, [0.925, 0.925], 0.88),
    _row("cp_mac16", "cp", "MacReduction(16)", 5.5, [0.915, 0.905], 0.84),
    _row("tucker2_mac8", "tucker2", "MacReduction(8)", 3.0, [0.93]),
    _row("cp_vbmf", "cp", "VBMF()", 4.5, [0.99]),  # not a MacReduction: not compared
  ]
  cp, tucker2 = uniform_at_same_speed(searched, rows)
  # halfway between 3.5× (92.5%) and 5.5× (91.0%): 91.75%, against the search's mean 92.5%
  assert cp["bracketed"] and cp["between"] == ["cp_mac8", "cp_mac16"]
  assert cp["accuracy"] == pytest.approx(0.9175) and cp["difference_points"] == pytest.approx(0.75)
  assert cp["search_accuracy"] == pytest.approx(0.925) and cp["speedup"] == 4.5
  # before fine-tuning: halfway between 88% and 84%, 86%, against the search's 90%
  assert cp["accuracy_before_ft"] == pytest.approx(0.86) and cp["difference_before_ft_points"] == pytest.approx(4.0)
  assert tucker2 == {
    "scheme": "tucker2",
    "speedup": 4.5,
    "search_accuracy": pytest.approx(0.925),
    "search_accuracy_before_ft": 0.9,
    "bracketed": False,
    "between": ["tucker2_mac8"],
  }
  searched["uniform_at_same_speed"] = [cp, tucker2]
  payload = {
    "config": {"name": "c", "preset": "tiny"},
    "environment": {},
    "compress": {"implementation": "factorized", "finetune_steps": 1, "finetune_lr_fraction": 0.1},
    "bench_batch_size": 8,
    "dense": {"train_steps": 1, "test_accuracy": 0.9, "macs": 10, "params": 10, "inference_images_per_s": 100.0},
    "results": [
      {
        **r,
        "mac_ratio": 2.0,
        "latency_speedup": 1.0,
        "accuracy_dense": 0.9,
        "drop_points": 0.0,
        "report_markdown": "",
      }
      for r in rows
    ],
  }
  text = markdown(payload)
  assert "| 92.00% (92.50 ± 0.71, 2 seeds) |" in text
  assert (
    "| search | 4.50× | cp | cp_mac8 and cp_mac16 | 91.75% | 92.50% | +0.75 pt | 86.00% | 90.00% | +4.00 pt |" in text
  )
  row = (
    "| search | 4.50× | tucker2 | tucker2_mac8 | not bracketed (nearest: tucker2_mac8) | 92.50% | — | — | 90.00% | — |"
  )
  assert row in text


def test_finetune_seeds_are_checked_and_change_the_batches(tmp_path) -> None:
  cfg = load("compare_fashion_mnist", "tiny")
  for bad, stages, match in ((0, 1, "positive integer"), (True, 1, "positive integer"), (2, 2, "single-stage")):
    settings = CompressSettings((CATALOG["cp_mac4"],), finetune_steps=1, finetune_seeds=bad, stages=stages)
    with pytest.raises(ValueError, match=f"settings.finetune_seeds.*{match}"):
      run(cfg, settings, tmp_path)
  train_set, _ = load_datasets(cfg.data, cfg.model.num_classes)
  model = build_model(cfg.model, tuple(cfg.data.synthetic_shape), rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  parallel = make_parallel(1)
  default = finetune(cfg, graphdef, params, rest, train_set, 2, 0.1, parallel)
  again = finetune(cfg, graphdef, params, rest, train_set, 2, 0.1, parallel, seed=cfg.train.seed + 1)
  other = finetune(cfg, graphdef, params, rest, train_set, 2, 0.1, parallel, seed=cfg.train.seed + 2)
  assert default["losses"] == again["losses"] and default["losses"][0] != other["losses"][0]
