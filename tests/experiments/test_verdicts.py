"""Verdicts on the claims: hand-made payloads make each claim hold, not hold and be inconclusive.

Every payload carries the fields of its schema (:mod:`experiments.common.results`), those the verdicts read
with distinctive numbers, so the tests can check that the Markdown shows the payload's numbers.
"""

import json
import math
import shlex
from pathlib import Path

import pytest

from experiments.claims import verdicts
from experiments.claims.verdicts import FAILS, HOLDS, INCONCLUSIVE, Rules, Run, evaluate_all
from experiments.claims.verdicts.markdown import markdown
from experiments.common import results

REPO = Path(__file__).resolve().parents[2]
COMMAND = "python -m experiments.claims.compare --preset full --schemes dense,wide"


def _row(scheme: str, **overrides: float) -> dict:
  row = {
    "scheme": scheme,
    "reference": "dense",
    "test_loss": 0.3,
    "train_elapsed_s": 10.0,
    "history": [],
    "inference_ms_per_image": 1.0,
    "params": 10_000,
    "macs": 1_000_000,
    "test_accuracy": 0.90,
    "train_steps": 2000,
    "inference_images_per_s": 1000.0,
    "latency_ms": 1.0,
    "train_images_per_s": 100.0,
  }
  row.update(overrides)
  return row


def _compare(rows: dict[str, dict], *, steps: int = 2000, load: float = 0.5, wide_factor: float = math.sqrt(2)) -> Run:
  """A compare run with one row per scheme (``rows`` maps scheme → overrides)."""
  payload = {
    "config": {"name": "handmade", "preset": "full", "model": {"wide_factor": wide_factor, "stage_depth": 2}},
    "environment": {
      "command": COMMAND,
      "date": "2030-01-02 03:04 UTC",
      "device_kind": "cpu",
      "usable_cpus": 2,
      "load_average": [load, load, load],
    },
    "bench_batch_size": 64,
    "results": [_row(s, **{"train_steps": steps, **o}) for s, o in rows.items()],
  }
  results.validate(payload, "compare")
  return Run("runs/handmade/compare.json", "compare", payload)


def _compress(
  variants: dict[str, tuple[str, float, float]], *, steps: int = 2000, load: float = 0.5, macs: int = 7_654_321
) -> Run:
  """A compress run: ``variants`` maps name → (scheme, measured speedup, accuracy after fine-tuning)."""
  payload = {
    "config": {"name": "handmade", "preset": "full"},
    "compress": {"finetune_steps": 300},
    "bench_batch_size": 64,
    "environment": {
      "command": "python -m experiments.claims.compress --preset full",
      "date": "2030-01-02 05:06 UTC",
      "device_kind": "cpu",
      "usable_cpus": 2,
      "load_average": [load, load, load],
    },
    "dense": {
      "params": 34_567,
      "macs": macs,
      "test_accuracy": 0.9012,
      "test_accuracy_after_ft": 0.9050,
      "train_steps": steps,
      "inference_images_per_s": 1234.0,
      "latency_ms": 2.0,
    },
    "results": [
      {
        "variant": name,
        "scheme": scheme,
        "rule": "MacReduction(8)",
        "macs": 1_000_003,
        "mac_ratio": 7.65,
        "inference_speedup": speedup,
        "accuracy_before_ft": 0.1111,
        "accuracy_after_ft": acc,
        "params": 1000,
        "accuracy_dense": 0.9012,
        "drop_points": 100 * (0.9012 - acc),
        "finetune_steps": 300,
        "inference_images_per_s": 1234.0 * speedup,
        "latency_ms": 2.0 / speedup,
        "latency_speedup": speedup,
      }
      for name, (scheme, speedup, acc) in variants.items()
    ],
  }
  results.validate(payload, "compress")
  return Run("runs/handmade/compress.json", "compress", payload)


def _verdict(number: int, compare: list[Run] = (), compress: list[Run] = (), rules: Rules | None = None):
  return evaluate_all(list(compare), list(compress), rules)[number - 1]


# --- Claim 1: factorized stem ---------------------------------------------------------------------------------


def test_claim1_holds_when_the_factorized_stem_is_worse():
  v = _verdict(
    1, [_compare({"dense": {}, "spatial": {"test_accuracy": 0.91}, "spatial_stem": {"test_accuracy": 0.885}})]
  )
  assert v.verdict == HOLDS
  assert v.checks[0].measured == "-2.50 points"


def test_claim1_does_not_hold_when_the_factorized_stem_is_as_good():
  v = _verdict(1, [_compare({"spatial": {"test_accuracy": 0.91}, "spatial_stem": {"test_accuracy": 0.905}})])
  assert v.verdict == FAILS
  assert "spatial_stem − spatial is -0.50 points" in v.reason


def test_claim1_is_inconclusive_without_spatial_stem_and_says_how_to_get_it():
  run = _compare({"dense": {}, "spatial": {}})
  v = _verdict(1, [run])
  assert v.verdict == INCONCLUSIVE and v.missing == ("spatial_stem",) and v.run is None
  text = markdown([v], [run], [], Rules(), "cmd")
  assert "missing `spatial_stem`" in text
  assert "python -m experiments.claims.compare --preset full --schemes dense,spatial,spatial_stem" in text


def test_short_runs_leave_accuracy_undecided_but_say_which_way_it_leans():
  v = _verdict(1, [_compare({"spatial": {"test_accuracy": 0.91}, "spatial_stem": {"test_accuracy": 0.80}}, steps=64)])
  assert v.verdict == INCONCLUSIVE
  assert v.checks[0].result is None and "64 training steps < 900" in v.checks[0].note and "would pass" in v.reason
  # The threshold is a rule, not a constant: a lower one decides the same run.
  rules = Rules(min_train_steps=50)
  assert (
    _verdict(1, [_compare({"spatial": {}, "spatial_stem": {"test_accuracy": 0.8}}, steps=64)], rules=rules).verdict
    == HOLDS
  )


# --- Claim 2: stacked 3×3 vs 5×5 ------------------------------------------------------------------------------


def test_claim2_holds_with_fewer_macs_and_params_at_similar_accuracy():
  run = _compare(
    {"dense5": {"macs": 25_000, "params": 2500}, "stacked": {"macs": 18_000, "params": 1800, "test_accuracy": 0.895}}
  )
  assert _verdict(2, [run]).verdict == HOLDS


def test_claim2_does_not_hold_when_stacked_costs_more_even_on_a_short_run():
  run = _compare({"dense5": {"macs": 25_000}, "stacked": {"macs": 26_000}}, steps=64)
  v = _verdict(2, [run])
  assert v.verdict == FAILS
  assert "26,000 vs 25,000" in v.reason


def test_claim2_does_not_hold_when_stacked_loses_accuracy_on_a_long_run():
  run = _compare({"dense5": {"macs": 25_000}, "stacked": {"macs": 18_000, "test_accuracy": 0.85}})
  assert _verdict(2, [run]).verdict == FAILS


def test_claim2_is_inconclusive_without_dense5():
  v = _verdict(2, [_compare({"dense": {}, "stacked": {}})])
  assert v.verdict == INCONCLUSIVE and v.missing == ("dense5",)


# --- Claim 3: bottleneck --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("macs", "accuracy", "expected"),
  [(300_000, 0.895, HOLDS), (300_000, 0.87, FAILS), (600_000, 0.9, FAILS)],
)
def test_claim3_needs_far_fewer_macs_and_close_accuracy(macs, accuracy, expected):
  run = _compare({"dense": {}, "bottleneck": {"macs": macs, "test_accuracy": accuracy}})
  assert _verdict(3, [run]).verdict == expected


def test_claim3_is_inconclusive_without_bottleneck():
  assert _verdict(3, [_compare({"dense": {}})]).verdict == INCONCLUSIVE


# --- Claim 4: wide --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("throughput", "load", "expected"),
  [
    (1300.0, 0.5, HOLDS),  # 1.30× > 1.10×
    (800.0, 0.5, FAILS),  # 0.80× < 0.90×
    (1050.0, 0.5, INCONCLUSIVE),  # within ±10%
    (1200.0, 5.0, INCONCLUSIVE),  # loaded machine: within ±25%
  ],
)
def test_claim4_needs_measured_throughput_beyond_the_noise_band(throughput, load, expected):
  run = _compare({"dense": {}, "wide": {"inference_images_per_s": throughput}}, load=load)
  assert _verdict(4, [run]).verdict == expected


def test_claim4_is_inconclusive_when_the_run_did_not_widen_by_sqrt2():
  run = _compare({"dense": {}, "wide": {"inference_images_per_s": 2000.0}}, wide_factor=2.0)
  v = _verdict(4, [run])
  assert v.verdict == INCONCLUSIVE and "√2" in v.reason


def test_claim4_does_not_hold_when_wide_is_faster_but_much_less_accurate():
  run = _compare({"dense": {}, "wide": {"inference_images_per_s": 2000.0, "test_accuracy": 0.85}})
  assert _verdict(4, [run]).verdict == FAILS


# --- Claim 5: separable depth multiplier ----------------------------------------------------------------------


def test_claim5_holds_when_separable1_trails_the_wider_multipliers():
  run = _compare(
    {
      "separable_m1": {"test_accuracy": 0.80},
      "separable_m4": {"test_accuracy": 0.85},
      "separable_m8": {"test_accuracy": 0.84},
    }
  )
  v = _verdict(5, [run])
  assert v.verdict == HOLDS and v.checks[0].measured == "+5.00 points" and "separable_m4" in v.checks[0].name


def test_claim5_does_not_hold_when_separable1_trains_as_well():
  run = _compare(
    {
      "separable_m1": {"test_accuracy": 0.845},
      "separable_m4": {"test_accuracy": 0.85},
      "separable_m8": {"test_accuracy": 0.84},
    }
  )
  assert _verdict(5, [run]).verdict == FAILS


def test_claim5_is_inconclusive_without_separable8():
  v = _verdict(5, [_compare({"separable_m1": {}, "separable_m4": {}})])
  assert v.verdict == INCONCLUSIVE and v.missing == ("separable_m8",)


# --- Claim 6: CP + fine-tuning --------------------------------------------------------------------------------


def test_claim6_holds_when_some_cp_variant_is_fast_and_accurate():
  run = _compress({"cp_mac4": ("cp", 1.1, 0.90), "cp_mac8": ("cp", 5.0, 0.90), "tucker2_mac8": ("tucker2", 6.0, 0.5)})
  v = _verdict(6, compress=[run])
  assert v.verdict == HOLDS and "cp_mac8" in v.reason
  # The drop is against the dense model fine-tuned alike (90.50%), not the one before fine-tuning (90.12%).
  assert [c.measured for c in v.checks if "drop" in c.name] == ["+0.50 points", "+0.50 points"]


def test_claim6_does_not_hold_when_no_cp_variant_is_fast_enough():
  run = _compress({"cp_mac4": ("cp", 0.9, 0.90), "cp_mac8": ("cp", 3.0, 0.90)})
  v = _verdict(6, compress=[run])
  assert v.verdict == FAILS and "0.90×" in v.reason and "3.00×" in v.reason


def test_claim6_does_not_hold_when_the_fast_variant_loses_accuracy():
  run = _compress({"cp_mac8": ("cp", 5.0, 0.85)})
  assert _verdict(6, compress=[run]).verdict == FAILS


def test_claim6_is_inconclusive_without_cp_variants_or_runs():
  assert _verdict(6).verdict == INCONCLUSIVE
  v = _verdict(6, compress=[_compress({"tucker2_mac4": ("tucker2", 3.0, 0.9)})])
  assert v.verdict == INCONCLUSIVE and "CP variant" in v.reason


def test_claim6_undecided_reason_skips_variants_that_already_failed():
  run = _compress({"cp_mac4": ("cp", 0.5, 0.80), "cp_mac8": ("cp", 3.9, 0.90)})
  v = _verdict(6, compress=[run])
  assert v.verdict == INCONCLUSIVE
  assert "cp_mac8: measured inference speedup" in v.reason and "cp_mac4" not in v.reason


def test_claim6_uses_the_widest_network_then_the_longest_training():
  narrow_long = _compress({"cp_mac8": ("cp", 1.0, 0.90)}, steps=5000, macs=25_000_000)
  wide = _compress({"cp_mac8": ("cp", 6.0, 0.905)}, steps=936, macs=90_000_000)
  wide_short = _compress({"cp_mac8": ("cp", 6.0, 0.905)}, steps=64, macs=90_000_000)
  v = _verdict(6, compress=[narrow_long, wide_short, wide])
  assert v.run is wide and v.verdict == HOLDS
  assert _verdict(6, compress=[narrow_long]).verdict == FAILS
  # Otherwise equal runs: the one with the largest CP MAC ratio, then the most recent one.
  newer = _compress({"cp_mac8": ("cp", 2.0, 0.905)}, steps=936, macs=90_000_000)
  newer.payload["environment"]["date"] = "2030-01-03 00:00 UTC"
  assert _verdict(6, compress=[newer, wide]).run is newer and _verdict(6, compress=[wide, newer]).run is newer
  further = _compress({"cp_mac12": ("cp", 5.0, 0.90)}, steps=936, macs=90_000_000)
  further.payload["results"][0]["mac_ratio"] = 11.5
  assert _verdict(6, compress=[newer, further, wide]).run is further


# --- Run selection and Markdown -------------------------------------------------------------------------------


def test_the_longest_run_with_every_needed_scheme_is_used():
  short = _compare({"dense": {}, "wide": {"inference_images_per_s": 2000.0}}, steps=64)
  long = _compare({"dense": {}, "wide": {"inference_images_per_s": 700.0}}, steps=5000)
  incomplete = _compare({"dense": {}}, steps=90_000)
  v = _verdict(4, [short, incomplete, long])
  assert v.run is long and v.verdict == FAILS
  assert _verdict(4, [short, incomplete]).run is short


def test_markdown_shows_the_payloads_numbers_and_commands():
  run = _compare(
    {
      "dense": {"macs": 7_654_321, "params": 43_210, "test_accuracy": 0.8765},
      "bottleneck": {"macs": 1_234_567, "params": 12_345, "test_accuracy": 0.8712, "inference_images_per_s": 4321.0},
    }
  )
  compress = _compress({"cp_mac8": ("cp", 4.5, 0.9001)})
  found = evaluate_all([run], [compress])
  text = markdown(found, [run], [compress], Rules(), "python -m experiments.claims.verdicts --compare x")
  assert text.startswith("# Experiments: verdicts on the claims")
  assert "Generated by `python -m experiments.claims.verdicts --compare x`" in text
  assert "| bottleneck | 12,345 | 1,234,567 | 87.12% | 2000 | 4,321 |" in text
  assert "| dense | 43,210 | 7,654,321 | 87.65% |" in text
  assert "6.20×" in text  # the MAC cut 7,654,321 / 1,234,567
  assert f"made by `{COMMAND}`" in text and "made by `python -m experiments.claims.compress --preset full`" in text
  assert "| cp_mac8 | MacReduction(8) | 1,000,003 | 7.65× | 4.50× | 11.11% | 90.01% |" in text
  assert "| 3 | Bottleneck blocks keep the cost low | **holds** | `runs/handmade/compare.json` |" in text
  assert "| 6 | CP decomposition plus fine-tuning keeps accuracy at large speedups | **holds** |" in text


def test_main_reads_directories_and_writes_the_markdown(tmp_path, capsys):
  run = _compare({"dense": {}, "wide": {"inference_images_per_s": 1500.0}})
  (tmp_path / "runs" / "a").mkdir(parents=True)
  (tmp_path / "runs" / "a" / "compare.json").write_text(json.dumps(run.payload))
  (tmp_path / "c").mkdir()
  (tmp_path / "c" / "compress.json").write_text(json.dumps(_compress({"cp_mac8": ("cp", 0.5, 0.9)}).payload))
  out = tmp_path / "README.md"
  argv = ["--compare", str(tmp_path / "runs"), "--compress", str(tmp_path / "c"), "--out", str(out)]
  found = verdicts.main(argv)
  assert [v.verdict for v in found] == [INCONCLUSIVE, INCONCLUSIVE, INCONCLUSIVE, HOLDS, INCONCLUSIVE, FAILS]
  text = out.read_text()
  assert f"Generated by `{shlex.join(['python', '-m', 'experiments.claims.verdicts', *argv])}`" in text
  assert str(tmp_path / "runs" / "a" / "compare.json") in text
  assert "4. Fewer but wider layers run faster for the same power: holds" in capsys.readouterr().out


def test_bad_paths_and_payloads_name_the_argument(tmp_path):
  with pytest.raises(ValueError, match="--compare"):
    verdicts.main(["--compare", str(tmp_path / "nope"), "--out", str(tmp_path / "o.md")])
  with pytest.raises(ValueError, match="--compare"):
    verdicts.main(["--compare", str(tmp_path), "--out", str(tmp_path / "o.md")])  # no compare.json below
  bad = tmp_path / "compress.json"
  bad.write_text(json.dumps({"results": [{"scheme": "cp"}]}))
  with pytest.raises(ValueError, match="--compress"):
    verdicts.main(["--compress", str(bad), "--out", str(tmp_path / "o.md")])
  with pytest.raises(ValueError, match="--min-train-steps"):
    verdicts.main(["--min-train-steps", "-1", "--out", str(tmp_path / "o.md")])


def test_the_committed_readme_is_what_its_command_generates(tmp_path, monkeypatch):
  readme = REPO / "experiments" / "README.md"
  if not readme.exists():
    pytest.skip("experiments/README.md not generated yet")
  text = readme.read_text()
  command = text.split("Generated by `", 1)[1].split("`", 1)[0]
  argv = shlex.split(command)[3:]
  out = tmp_path / "README.md"
  argv[argv.index("--out") + 1] = str(out)
  monkeypatch.chdir(REPO)
  verdicts.main(argv)
  regenerated = out.read_text().replace(shlex.join(["python", "-m", "experiments.claims.verdicts", *argv]), command)
  assert regenerated == text
