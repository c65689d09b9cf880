"""The one way every experiment times a function: warm-up, then the median of interleaved timed calls.

The statistic (used by the layer, network, decomposition, peer and sweep benchmarks and by the throughput
measurement of the claims):

1. **Warm-up.** Each candidate is called ``warmup`` times untimed (the first call may still compile or fill
   caches). The warm-up calls after the first give the per-call estimate that plans the timed calls.
2. **Timed calls.** Each candidate gets at least ``repeats`` timed calls, and at least as many as fill
   ``min_seconds`` of timed time (a fast call is repeated often enough that timer and scheduling noise
   average out). ``max_seconds`` caps a slow candidate's timed time (but not below ``min_repeats`` calls);
   a candidate whose first warm-up call exceeds ``slow_seconds`` is timed once.
3. **Interleaving.** The timed calls run in rounds; every round calls each candidate that still needs calls
   once, in a fresh random order, so that a burst of load from other processes slows all candidates alike
   instead of the one that happened to be running.
3b. **Warm calls.** A candidate whose call takes less than ``rewarm_seconds`` is called once, untimed, right
   before each of its timed calls, so that it is timed warm — its weights, activations and code in cache — as
   a model runs when it is served, not cold after another candidate has evicted it. Interleaving alone
   times every call cold; on a CPU that doubled a compressed network's batch-1 latency when the call before
   was its dense baseline (a few MiB of weights), and so favoured the larger candidates.
4. **Statistic.** Every call is timed on its own to ``jax.block_until_ready``. A candidate's time is the
   **median** call; its spread is given by the quartiles (``q1_ms``, ``q3_ms``, their difference
   ``iqr_ms``) and the fastest call (``min_ms``). Medians and quartiles, not means, because on a shared CPU
   the distribution has a long right tail.

Example:
  >>> import jax.numpy as jnp
  >>> x = jnp.ones((64, 64))
  >>> f = compile_fn(lambda a: a @ a, (x,))
  >>> stats = measure({"matmul": (f, (x,))}, repeats=5, warmup=2)
  >>> stats["matmul"].repeats >= 5 and stats["matmul"].q1_ms <= stats["matmul"].median_ms
  True
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Stats:
  """Summary of the timed calls of one function, in milliseconds.

  Attributes:
    median_ms: median time of one call (the statistic every speedup uses).
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
    """The fields plus ``iqr_ms``, for JSON output (:class:`experiments.common.results.TimingStats`)."""
    return {**dataclasses.asdict(self), "iqr_ms": self.iqr_ms}


def summarize(seconds: Sequence[float]) -> Stats:
  """Turns raw per-call times (seconds) into :class:`Stats` (milliseconds).

  Args:
    seconds: the time of every timed call.

  Returns:
    Median, quartiles, minimum and count.

  Raises:
    ValueError: when ``seconds`` is empty.

  Example:
    >>> summarize([0.001, 0.002, 0.003]).median_ms
    2.0
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


def _check(
  repeats: int,
  warmup: int,
  min_seconds: float,
  max_seconds: float | None,
  min_repeats: int,
  slow_seconds: float | None,
) -> None:
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  needs_estimate = min_seconds > 0 or max_seconds is not None
  if warmup < 0 or (needs_estimate and warmup < 1):
    raise ValueError(f"warmup must be >= 0 (>= 1 with min_seconds or max_seconds), got {warmup}")
  if min_seconds < 0:
    raise ValueError(f"min_seconds must be >= 0, got {min_seconds}")
  if max_seconds is not None and max_seconds <= 0:
    raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
  if min_repeats < 1:
    raise ValueError(f"min_repeats must be >= 1, got {min_repeats}")
  if slow_seconds is not None and (slow_seconds <= 0 or warmup < 1):
    raise ValueError(f"slow_seconds must be > 0 and needs warmup >= 1, got {slow_seconds} with warmup={warmup}")


def _per_call(warm: Sequence[float]) -> float:
  """A candidate's per-call estimate from its warm-up calls: their median, without the first (it may still be
  cold) when there are others."""
  return float(np.median(warm[1:] if len(warm) > 1 else warm))


def _planned_calls(
  warm: Sequence[float], repeats: int, min_seconds: float, max_seconds: float | None, min_repeats: int
) -> int:
  """Timed calls for a candidate whose warm-up calls took ``warm`` seconds (see the module docstring)."""
  if not warm:
    return repeats
  per_call = max(_per_call(warm), 1e-9)
  planned = max(repeats, math.ceil(min_seconds / per_call))
  if max_seconds is not None:
    planned = max(min(min_repeats, planned), min(planned, int(max_seconds / per_call)))
  return planned


def measure(
  candidates: Mapping[str, tuple[Callable[..., Any], Sequence[Any]]],
  *,
  repeats: int = 50,
  warmup: int = 3,
  min_seconds: float = 0.0,
  max_seconds: float | None = None,
  min_repeats: int = 5,
  slow_seconds: float | None = None,
  seed: int = 0,
  deadline: float | None = None,
  rewarm_seconds: float = 0.1,
) -> dict[str, Stats]:
  """Times every candidate ``fn(*args)``: warm-up, then interleaved timed calls (see the module docstring).

  Args:
    candidates: ``name -> (fn, args)``; ``fn`` should be compiled already
      (see :func:`compile_fn`) so that no call pays for tracing.
    repeats: timed calls per candidate, at least.
    warmup: untimed calls per candidate first (at least 1 with ``min_seconds``, ``max_seconds`` or
      ``slow_seconds``: the warm-up calls give the per-call estimate).
    min_seconds: each candidate's timed calls add up to at least about this many seconds.
    max_seconds: a candidate whose planned calls would take longer gets fewer, but at least
      ``min_repeats`` (slow baselines such as XLA's grouped depthwise conv on CPU would otherwise dominate
      the run).
    min_repeats: lower bound on the timed calls under ``max_seconds``.
    slow_seconds: a candidate whose first warm-up call takes longer than this is called only once more,
      timed (``Stats.repeats == 1``): XLA's grouped depthwise backward with a depth multiplier takes many
      seconds per call on a small CPU, and a dozen of those would be most of a run.
    seed: seeds the per-round order.
    deadline: a :func:`time.perf_counter` value after which no further round starts once every candidate
      has one timed call (its :class:`Stats` then has fewer repeats than planned).
    rewarm_seconds: a candidate whose warm-up calls took less than this (median) gets one untimed call right
      before each timed call (step 3b of the module docstring); ``0`` times every call as it comes.

  Returns:
    ``name -> Stats``, in the order of ``candidates``.

  Raises:
    ValueError: naming ``repeats``, ``warmup``, ``min_seconds``, ``max_seconds``, ``min_repeats`` or
      ``slow_seconds`` when out of range; ``rewarm_seconds`` when negative.
  """
  _check(repeats, warmup, min_seconds, max_seconds, min_repeats, slow_seconds)
  if not rewarm_seconds >= 0:
    raise ValueError(f"rewarm_seconds must be >= 0, got {rewarm_seconds!r}")
  names = list(candidates)
  planned: dict[str, int] = {}
  rewarm: dict[str, bool] = {}
  for name in names:
    fn, args = candidates[name]
    warm: list[float] = []
    for _ in range(warmup):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      warm.append(time.perf_counter() - start)
      if slow_seconds is not None and warm[0] > slow_seconds:
        break
    if slow_seconds is not None and warm and warm[0] > slow_seconds:
      planned[name], rewarm[name] = 1, False
    else:
      planned[name] = _planned_calls(warm, repeats, min_seconds, max_seconds, min_repeats)
      rewarm[name] = bool(warm) and _per_call(warm) < rewarm_seconds
  times: dict[str, list[float]] = {name: [] for name in names}
  order = random.Random(seed)
  for round_index in range(max(planned.values(), default=0)):
    if round_index and deadline is not None and time.perf_counter() > deadline:
      break
    order.shuffle(names)
    for name in names:
      if round_index >= planned[name]:
        continue
      fn, args = candidates[name]
      if rewarm[name]:
        jax.block_until_ready(fn(*args))
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: summarize(times[name]) for name in candidates}


def time_call(fn: Callable[[], Any], **options: Any) -> Stats:
  """Times one function of no arguments with :func:`measure` (same options, same statistic).

  Args:
    fn: the call (its result is waited for with ``jax.block_until_ready``; other results pass through).
    **options: keyword arguments of :func:`measure`.

  Returns:
    Its :class:`Stats`.

  Example:
    >>> time_call(lambda: sum(range(100)), repeats=3, warmup=1).repeats
    3
  """
  return measure({"call": (fn, ())}, **options)["call"]
