"""Tests of the interleaved timer."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax.numpy as jnp
import pytest

from experiments.common.timing import compile_fn, measure, summarize, time_call


def test_summarize_gives_quartiles_in_milliseconds() -> None:
  s = summarize([0.001, 0.002, 0.003, 0.004, 0.005])
  assert (s.min_ms, s.median_ms, s.repeats) == pytest.approx((1.0, 3.0, 5))
  assert s.q1_ms == pytest.approx(2.0) and s.q3_ms == pytest.approx(4.0)
  assert s.iqr_ms == pytest.approx(2.0) and s.relative_iqr == pytest.approx(2.0 / 3.0)
  with pytest.raises(ValueError, match="seconds"):
    summarize([])


def test_measure_times_every_candidate_and_caps_slow_ones() -> None:
  calls = {"fast": 0, "slow": 0, "very_slow": 0}

  def sleeper(name: str, seconds: float) -> Callable[[], None]:
    def fn() -> None:
      calls[name] += 1
      time.sleep(seconds)

    return fn

  stats = measure(
    {
      "fast": (sleeper("fast", 0.0), ()),
      "slow": (sleeper("slow", 0.02), ()),
      "very_slow": (sleeper("very_slow", 0.06), ()),
    },
    repeats=8,
    warmup=2,
    max_seconds=0.05,
    min_repeats=3,
    slow_seconds=0.05,
  )
  assert stats["fast"].repeats == 8
  assert stats["slow"].repeats == 3  # 0.05 s budget / 0.02 s per call, raised to min_repeats
  assert stats["very_slow"].repeats == 1 and calls["very_slow"] == 2  # one warm-up call, one timed
  assert stats["slow"].median_ms >= 20.0


@pytest.mark.parametrize(
  ("kwargs", "name"),
  [
    ({"repeats": 0}, "repeats"),
    ({"warmup": -1}, "warmup"),
    ({"max_seconds": 0.0}, "max_seconds"),
    ({"min_repeats": 0}, "min_repeats"),
    ({"min_seconds": -1.0}, "min_seconds"),
    ({"min_seconds": 0.1, "warmup": 0}, "warmup"),
    ({"slow_seconds": -1.0}, "slow_seconds"),
  ],
)
def test_measure_rejects_bad_options(kwargs: dict, name: str) -> None:
  with pytest.raises(ValueError, match=name):
    measure({"f": (lambda: None, ())}, **kwargs)


def test_compile_fn_reuses_identical_programs() -> None:
  cache: dict = {}
  x = jnp.ones((4,))
  a = compile_fn(lambda v: v * 2.0, (x,), cache=cache)
  b = compile_fn(lambda v: v * 2.0, (x,), cache=cache)
  c = compile_fn(lambda v: v * 3.0, (x,), cache=cache)
  assert a is b and a is not c and len(cache) == 2
  assert float(c(x)[0]) == 3.0


def test_min_seconds_adds_calls_to_fast_candidates() -> None:
  # The plan is min_seconds over the median warm-up call (the first excluded); sleep overshoots on a loaded
  # machine, so the median of three warm calls and a lower bound of 5 keep the test about the planning rule.
  stats = measure({"f": (lambda: time.sleep(0.005), ())}, repeats=2, warmup=4, min_seconds=0.05)
  assert 5 <= stats["f"].repeats <= 12  # ~0.05 s / 0.005 s per call, more than the 2 repeats asked for
  assert stats["f"].median_ms >= 5.0 and stats["f"].q1_ms <= stats["f"].median_ms <= stats["f"].q3_ms


def test_deadline_stops_after_the_first_round() -> None:
  stats = measure({"a": (lambda: None, ()), "b": (lambda: None, ())}, repeats=50, warmup=1, deadline=0.0)
  assert stats["a"].repeats == stats["b"].repeats == 1


def test_time_call_is_measure_of_one_candidate() -> None:
  calls = []
  stats = time_call(lambda: calls.append(1), repeats=4, warmup=3, rewarm_seconds=0.0)
  assert stats.repeats == 4 and len(calls) == 7


def test_fast_candidates_are_timed_right_after_a_call_of_their_own() -> None:
  order: list[str] = []

  def fn(name: str, seconds: float) -> Callable[[], None]:
    def call() -> None:
      order.append(name)
      time.sleep(seconds)

    return call

  stats = measure(
    {"fast": (fn("fast", 0.0), ()), "slow": (fn("slow", 0.03), ())}, repeats=6, warmup=1, rewarm_seconds=0.02
  )
  assert stats["fast"].repeats == stats["slow"].repeats == 6
  timed = order[2:]  # after the two warm-up calls
  assert timed.count("fast") == 12 and timed.count("slow") == 6  # one untimed call before each timed one
  # every fast call comes in a pair, so the timed one follows a call of its own, never the slow one's
  runs = "".join("f" if n == "fast" else "s" for n in timed).split("s")
  assert all(len(r) % 2 == 0 for r in runs)
  with pytest.raises(ValueError, match="rewarm_seconds"):
    measure({"f": (lambda: None, ())}, rewarm_seconds=-1.0)
