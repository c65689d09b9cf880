"""``python -m experiments.bench.assembled_timing`` on the tiny synthetic preset."""

import json

import pytest

from efficonv import rank as rank_rules
from efficonv.compression import Policy
from experiments.bench import assembled_timing


def test_both_builds_of_every_variant_are_timed_against_dense(tmp_path, capsys) -> None:
  policy = Policy(scheme="cp", rank=rank_rules.MacReduction(4), implementation="factorized")
  rows = [{"variant": "cp_mac4", "report": {"policy": json.loads(policy.to_json())}}]
  (tmp_path / "compress.json").write_text(json.dumps({"bench_batch_size": 4, "results": rows}))
  argv = ["--config", "compare_fashion_mnist", "--preset", "tiny", "--workdir", str(tmp_path)]
  result = assembled_timing.main([*argv, "--rounds", "2", "--repeats", "3", "--min-seconds", "0"])
  assert result["config"]["input_shape"][0] == 4 and result["config"]["rounds"] == 2
  timed = result["variants"]["cp_mac4"]
  for kind in ("fitted", "random"):
    assert len(timed[kind]) == 2 and all(r > 0 for r in timed[kind])
    assert timed["summary"][kind]["min"] <= timed["summary"][kind]["median"] <= timed["summary"][kind]["max"]
  assert json.loads((tmp_path / "assembled_timing.json").read_text())["variants"] == result["variants"]
  assert "cp_mac4 fitted: ratio to dense median" in capsys.readouterr().out
  with pytest.raises(ValueError, match="--variants must name variants"):
    assembled_timing.main([*argv, "--variants", "nope"])
  with pytest.raises(ValueError, match="--rounds must be a positive integer"):
    assembled_timing.main([*argv, "--rounds", "0"])
