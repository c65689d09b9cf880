"""The results schema: every committed results file loads, legacy scheme names map to today's, gaps are named."""

import json
from pathlib import Path

import pytest

from experiments.bench.cases import SCHEMES as LAYER_SCHEMES
from experiments.common import results
from experiments.schemes import SCHEMES as NETWORK_SCHEMES

RESULTS = results.RESULTS_DIR


def _kind(path: Path) -> str:
  if path.name in ("compare.json", "compress.json"):
    return path.stem
  if path.name.startswith("bench_decompose"):
    return "decompose"
  if path.name == "assembled_timing.json":
    return "assembled_timing"
  return {
    "quick_timing": "quick_timing",
    "auto_sweep": "auto_sweep",
    "bench_dense_conv": "dense_conv",
    "cp_quality": "cp_quality",
  }.get(path.parent.name) or ("bench_layers" if path.parent.name.startswith("bench_layers") else "bench_network")


COMMITTED = sorted(
  p
  for p in RESULTS.rglob("*.json")
  if p.name != "config.json"  # config.json: a training run's own config
)


def test_the_committed_results_are_found():
  kinds = {_kind(p) for p in COMMITTED}
  assert kinds == set(results.KINDS)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_committed_results_file_loads_under_todays_scheme_names(path: Path):
  payload = results.load(path, _kind(path))
  # The library's scheme names (efficonv.compress, the compress runs) and the experiments' variants.
  # "search": a compress variant chosen per layer by efficonv.search (its layers' schemes are in its report).
  known = {*NETWORK_SCHEMES, *(s.name for s in LAYER_SCHEMES), "cp", "tucker2", "tt", "spatial", "separable", "search"}
  kind = _kind(path)
  if kind not in ("compare", "compress", "bench_layers", "bench_network"):
    return  # no scheme fields (quick_timing, decompose) or ranks in them (the sweep's "cp rank 64")
  rows = payload["results"] if kind in ("compare", "compress") else payload["records"]
  assert rows
  for row in rows:
    assert row["scheme"] in known, (path, row["scheme"])


def test_legacy_names_are_mapped_in_rows_variants_and_config(tmp_path):
  payload = json.loads((RESULTS / "compare_fashion_mnist_medium" / "compare.json").read_text())
  assert {"tucker", "separable4"} <= {r["scheme"] for r in payload["results"]}  # written before the rename
  loaded = results.validate(payload, "compare")
  assert {"tucker2", "separable_m4"} <= {r["scheme"] for r in loaded["results"]}
  assert "tucker2" in loaded["config"]["schemes"] and "tucker" not in loaded["config"]["schemes"]
  network = results.load(RESULTS / "bench_network_quick" / "results.json", "bench_network")
  variants = {r["variant"] for r in network["records"]}
  assert "separable_m4/no_ynn" in variants and "separable4/no_ynn" not in variants
  assert results.scheme_name("wide") == "wide" and results.scheme_name("separable8") == "separable_m8"


def test_a_record_missing_a_field_is_refused_by_name(tmp_path):
  payload = json.loads((RESULTS / "compress_fashion_mnist_quick" / "compress.json").read_text())
  del payload["results"][1]["accuracy_after_ft"]
  path = tmp_path / "compress.json"
  path.write_text(json.dumps(payload))
  with pytest.raises(ValueError, match=r"results\[1\].*CompressRow.*accuracy_after_ft"):
    results.load(path, "compress")
  with pytest.raises(ValueError, match="kind"):
    results.load(path, "nope")
  path.write_text("{")
  with pytest.raises(ValueError, match="must be JSON"):
    results.load(path, "compress")


def test_write_then_load_round_trips(tmp_path):
  payload = json.loads((RESULTS / "compress_fashion_mnist_quick" / "compress.json").read_text())
  results.write(tmp_path / "compress.json", payload)
  assert results.load(tmp_path / "compress.json", "compress") == results.validate(payload, "compress")
