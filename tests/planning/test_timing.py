"""``efficonv.planning.timing``: the timing statistics."""

import time

import pytest

from efficonv.planning import median_seconds, median_time_ratio


def _sleeping(seconds: float):
  def call() -> None:
    time.sleep(seconds)

  return call


def test_median_time_ratio_is_the_ratio_of_the_two_calls() -> None:
  ratio, pairs = median_time_ratio(_sleeping(0.004), _sleeping(0.001), repeats=9, min_seconds=0.0)
  assert len(pairs) == 9 and 2.0 < ratio < 6.0  # sleeps overshoot a little, the shorter one relatively more
  inverse, _ = median_time_ratio(_sleeping(0.001), _sleeping(0.004), repeats=9, min_seconds=0.0)
  assert 1 / 6.0 < inverse < 0.5
  seconds, samples = median_seconds(_sleeping(0.002), repeats=3, min_seconds=0.0)
  assert len(samples) == 3 and 0.002 <= seconds < 0.05


@pytest.mark.parametrize(
  ("kwargs", "match"), [({"repeats": 0}, "repeats must be"), ({"min_seconds": -1}, "min_seconds")]
)
def test_median_time_ratio_rejects_bad_arguments(kwargs, match) -> None:
  with pytest.raises(ValueError, match=match):
    median_time_ratio(_sleeping(0.0), _sleeping(0.0), **kwargs)
