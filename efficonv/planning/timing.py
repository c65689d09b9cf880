"""How efficonv times a compiled call: one statistic, shared by autotune and the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def median_seconds(
  fn: Callable[[], Any],
  *,
  repeats: int = 5,
  min_seconds: float = 0.02,
  max_call_seconds: float = 1.0,
) -> tuple[float, list[float]]:
  """Median wall time of ``fn()`` after one warm-up call, waiting for its results each time.

  Runs at least ``repeats`` timed calls and keeps going until ``min_seconds`` have passed, so short calls
  get more samples; stops early after a call longer than ``max_call_seconds`` (a slow candidate must not
  stall its caller).

  Args:
    fn: a call with no arguments (a compiled function applied to fixed inputs).
    repeats: at least this many timed calls.
    min_seconds: and at least this long in total.
    max_call_seconds: stop after one call this long.

  Returns:
    ``(median seconds, every timed call's seconds)``.

  Raises:
    ValueError: naming ``repeats`` or ``min_seconds`` when out of range.

  Example:
    >>> import jax.numpy as jnp
    >>> from efficonv.planning import median_seconds
    >>> median, samples = median_seconds(lambda: jnp.ones(8) * 2, repeats=3, min_seconds=0.0)
    >>> median >= 0 and len(samples) >= 3
    True
  """
  if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
    raise ValueError(f"repeats must be a positive int, got {repeats!r}")
  if not min_seconds >= 0:
    raise ValueError(f"min_seconds must be >= 0, got {min_seconds!r}")
  jax.block_until_ready(fn())  # warm-up: first-call allocations
  times: list[float] = []
  deadline = time.perf_counter() + min_seconds
  while len(times) < repeats or time.perf_counter() < deadline:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
    if times[-1] > max_call_seconds:
      break
  return statistics.median(times), times


def median_time_ratio(
  fn: Callable[[], Any],
  reference: Callable[[], Any],
  *,
  repeats: int = 10,
  min_seconds: float = 0.2,
) -> tuple[float, list[float]]:
  """Median over alternating pairs of calls of ``fn()``'s time over ``reference()``'s.

  Each pair runs the two calls back to back, so a machine that slows down or speeds up (another tenant, a
  clock change) slows both alike and the ratio holds where either time alone would drift.

  Args:
    fn: a call with no arguments.
    reference: another, the yardstick.
    repeats: at least this many pairs.
    min_seconds: and at least this long in total.

  Returns:
    ``(median ratio, every pair's ratio)``.

  Raises:
    ValueError: naming ``repeats`` or ``min_seconds`` when out of range.

  Example:
    >>> import jax.numpy as jnp
    >>> from efficonv.planning import median_time_ratio
    >>> ratio, pairs = median_time_ratio(lambda: jnp.ones(8) * 2, lambda: jnp.ones(8) * 3, repeats=3, min_seconds=0.0)
    >>> ratio > 0 and len(pairs) >= 3
    True
  """
  if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
    raise ValueError(f"repeats must be a positive int, got {repeats!r}")
  if not min_seconds >= 0:
    raise ValueError(f"min_seconds must be >= 0, got {min_seconds!r}")
  jax.block_until_ready(fn())  # warm-up: first-call allocations
  jax.block_until_ready(reference())
  ratios: list[float] = []
  deadline = time.perf_counter() + min_seconds
  while len(ratios) < repeats or time.perf_counter() < deadline:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    middle = time.perf_counter()
    jax.block_until_ready(reference())
    ratios.append((middle - start) / max(time.perf_counter() - middle, 1e-12))
  return statistics.median(ratios), ratios
