"""Wall-clock timing of jitted JAX functions on a shared machine.

Several candidates are timed *interleaved*: every round calls each candidate
once, in a fresh random order, so that a burst of load from other processes
slows all of them alike instead of the one that happened to be running. Each
call is timed to ``block_until_ready``; the statistics are robust ones
(median, quartiles), because on a shared CPU the distribution has a long
right tail.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Stats:
  """Summary of repeated timings of one function, in milliseconds.

  Attributes:
    median_ms: median time of one call.
    q1_ms: first quartile.
    q3_ms: third quartile.
    min_ms: fastest call.
    repeats: number of timed calls.
  """

  median_ms: float
  q1_ms: float
  q3_ms: float
  min_ms: float
  repeats: int

  @property
  def iqr_ms(self) -> float:
    """Interquartile range ``q3 - q1``."""
    return self.q3_ms - self.q1_ms

  @property
  def relative_iqr(self) -> float:
    """``iqr / median``: how noisy the measurement is (0.1 = 10%)."""
    return self.iqr_ms / self.median_ms if self.median_ms > 0 else float("inf")

  def as_dict(self) -> dict[str, float | int]:
    """The fields plus ``iqr_ms``, for JSON output."""
    return {**dataclasses.asdict(self), "iqr_ms": self.iqr_ms}


def summarize(seconds: Sequence[float]) -> Stats:
  """Turns raw per-call times (seconds) into :class:`Stats` (milliseconds).

  Raises:
    ValueError: when ``seconds`` is empty.
  """
  if len(seconds) == 0:
    raise ValueError("seconds must hold at least one timing, got none")
  ms = np.asarray(seconds, dtype=np.float64) * 1e3
  q1, median, q3 = np.percentile(ms, [25, 50, 75])
  return Stats(float(median), float(q1), float(q3), float(ms.min()), int(ms.size))


def compile_fn(
  fn: Callable[..., Any],
  args: Sequence[Any],
  compiler_options: Mapping[str, str] | None = None,
  cache: dict[tuple[str, str], Any] | None = None,
) -> Any:
  """Ahead-of-time compiles ``jax.jit(fn)`` for ``args``, with optional XLA compiler options.

  Args:
    fn: a JAX-traceable function.
    args: example arguments (their shapes and dtypes fix the compilation).
    compiler_options: per-executable XLA options, e.g.
      ``{"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}``.
    cache: when given, executables are reused for identical lowered programs
      and options (e.g. a layer with ``implementation="auto"`` and the forced
      implementation it resolves to lower to the same program).

  Returns:
    The compiled executable, callable with ``*args``.
  """
  lowered = jax.jit(fn).lower(*args)
  options = dict(compiler_options or {})
  key = (lowered.as_text(), repr(sorted(options.items())))
  if cache is not None and key in cache:
    return cache[key]
  compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
  if cache is not None:
    cache[key] = compiled
  return compiled


def measure(
  candidates: Mapping[str, tuple[Callable[..., Any], Sequence[Any]]],
  *,
  repeats: int = 50,
  warmup: int = 3,
  max_seconds: float | None = None,
  min_repeats: int = 5,
  slow_seconds: float | None = None,
  seed: int = 0,
) -> dict[str, Stats]:
  """Times every candidate ``fn(*args)``, interleaved, after ``warmup`` untimed calls each.

  Args:
    candidates: ``name -> (fn, args)``; ``fn`` should be compiled already
      (see :func:`compile_fn`) so that no call pays for tracing.
    repeats: timed calls per candidate.
    warmup: untimed calls per candidate before timing (at least 1 with ``max_seconds``).
    max_seconds: when given, a candidate whose warm-up calls suggest that
      ``repeats`` calls would take longer gets fewer, but at least
      ``min_repeats`` (slow baselines such as XLA's grouped depthwise conv on
      CPU would otherwise dominate the run). It takes part in the first rounds only.
    min_repeats: lower bound on the timed calls under ``max_seconds``.
    slow_seconds: a candidate whose first warm-up call takes longer than
      this is called only once more, timed (``Stats.repeats == 1``): XLA's
      grouped depthwise backward with a depth multiplier takes ~15 s per call
      on 2 CPU cores, and a dozen of those would be most of a run.
    seed: seeds the per-round order.

  Returns:
    ``name -> Stats``.

  Raises:
    ValueError: naming ``repeats``, ``warmup``, ``max_seconds``, ``min_repeats`` or
      ``slow_seconds`` when out of range.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  if warmup < 0 or (max_seconds is not None and warmup < 1):
    raise ValueError(f"warmup must be >= 0 (>= 1 with max_seconds), got {warmup}")
  if max_seconds is not None and max_seconds <= 0:
    raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
  if min_repeats < 1:
    raise ValueError(f"min_repeats must be >= 1, got {min_repeats}")
  if slow_seconds is not None and (slow_seconds <= 0 or warmup < 1):
    raise ValueError(f"slow_seconds must be > 0 and needs warmup >= 1, got {slow_seconds} with warmup={warmup}")
  names = list(candidates)
  planned: dict[str, int] = {}
  for name in names:
    fn, args = candidates[name]
    warm: list[float] = []
    for _ in range(warmup):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      warm.append(time.perf_counter() - start)
      if slow_seconds is not None and warm[0] > slow_seconds:
        break
    planned[name] = repeats
    if slow_seconds is not None and warm and warm[0] > slow_seconds:
      planned[name] = 1
    elif max_seconds is not None:
      per_call = float(np.median(warm[1:] if len(warm) > 1 else warm))  # the first call may still be cold
      planned[name] = max(min(min_repeats, repeats), min(repeats, int(max_seconds / max(per_call, 1e-9))))
  times: dict[str, list[float]] = {name: [] for name in names}
  order = random.Random(seed)
  for round_index in range(max(planned.values())):
    order.shuffle(names)
    for name in names:
      if round_index >= planned[name]:
        continue
      fn, args = candidates[name]
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: summarize(times[name]) for name in candidates}
