"""The dense-conv formulation benchmark: one small case is timed with the common statistic and checked."""

from __future__ import annotations

import pytest

from efficonv.kernels.dense import DENSE_IMPLEMENTATIONS
from experiments.bench import dense_conv


def test_one_case_times_every_formulation_and_the_auto_choice() -> None:
  r = dense_conv._time_case(2, 4, 8, 16, 3, 2, rounds=3)
  assert (r["batch"], r["hw"], r["c_in"], r["c_out"], r["kernel"], r["stride"]) == (2, 4, 8, 16, 3, 2)
  assert set(r["median_ms"]) == set(DENSE_IMPLEMENTATIONS) == set(r["stats"])
  for impl, stats in r["stats"].items():
    assert stats["repeats"] >= 3 and stats["median_ms"] == pytest.approx(r["median_ms"][impl], abs=1e-4)
  assert r["fastest"] == min(r["median_ms"], key=r["median_ms"].__getitem__)
  assert r["auto"] in DENSE_IMPLEMENTATIONS and r["auto_reason"]
  assert r["auto_over_fastest"] == pytest.approx(r["median_ms"][r["auto"]] / r["median_ms"][r["fastest"]], rel=1e-2)
  assert dense_conv._row(r).split()[-1]  # the printed row ends in the load average


def test_it_is_a_module_with_a_command_line() -> None:
  with pytest.raises(SystemExit):
    dense_conv.main(["--suite", "nope"])
