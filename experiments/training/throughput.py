"""Throughput and latency of whole networks, measured fairly on a shared machine.

For each model three jitted functions are timed: inference on a batch of ``batch_size`` (throughput) and on
``bench.latency_batch_size`` images (latency), both on one device, and the training run's own step (forward,
backward, optimizer update; on the training mesh) on a batch of ``batch_size`` — ``bench.batch_size``, or the
training batch size when that is ``None``. Every function is compiled and called once before any timing;
each measurement then runs ``warmup`` untimed calls and times at least ``iterations`` calls, and at least
``min_seconds``, back to back, waiting for each result.

Other processes on the machine slow some measurements down. So the models are measured round-robin, every
model once per round, ``rounds`` times, and the fastest round counts: load spikes hit all models alike, and
the best round is the one least disturbed (as :mod:`timeit` recommends).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.common.config import BenchConfig
from experiments.training.steps import Parallel, State, make_parallel, replicate, shard_batch


@dataclasses.dataclass
class Timing:
  """Best-round timings of one model.

  Attributes:
    inference_images_per_s: inference throughput at ``batch_size``.
    inference_ms_per_image: ``1000 / inference_images_per_s``.
    latency_ms: time of one inference call on ``latency_batch_size`` images.
    train_images_per_s: training-step throughput at ``batch_size``.
    rounds: every round's seconds per call, ``{"inference": [...], "latency": [...], "train": [...]}``.
  """

  inference_images_per_s: float
  inference_ms_per_image: float
  latency_ms: float
  train_images_per_s: float
  rounds: dict[str, list[float]]


@dataclasses.dataclass
class Subject:
  """What is timed of one model: its split states and its training step.

  Attributes:
    graphdef: the model's graph.
    params: parameters.
    rest: BatchNorm statistics.
    opt_state: optimizer state for ``train_step``.
    train_step: a step from :func:`experiments.training.steps.make_train_step` (reusing the training run's own jitted
      step saves its compilation); it runs on its ``parallel`` mesh.
    parallel: the mesh of ``train_step``; the timed training batch is sharded over it.
    predict: a function from :func:`experiments.training.steps.make_predict` (the run's own saves compiling it again
      at the training batch size).
  """

  graphdef: nnx.GraphDef
  params: State
  rest: State
  opt_state: Any
  train_step: Callable[..., Any]
  parallel: Parallel
  predict: Callable[..., Any]


def _seconds_per_call(fn: Callable[[], Any], warmup: int, iterations: int, min_seconds: float) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  calls, start = 0, time.perf_counter()
  while calls < iterations or time.perf_counter() - start < min_seconds:
    jax.block_until_ready(fn())
    calls += 1
  return (time.perf_counter() - start) / calls


def round_robin(
  calls: Mapping[str, Mapping[str, Callable[[], Any]]], cfg: BenchConfig, deadline: float | None = None
) -> dict[str, dict[str, list[float]]]:
  """Calls every function once (compiling it), then times them all round-robin, ``cfg.rounds`` rounds.

  Args:
    calls: name → measurement → a function of no arguments (its result is waited for).
    cfg: warm-up, iterations, ``min_seconds`` and rounds.
    deadline: a :func:`time.perf_counter` value after which no further round starts (the first always runs).

  Returns:
    name → measurement → seconds per call in each round that ran.
  """
  for fns in calls.values():  # compile everything before any timing
    for fn in fns.values():
      jax.block_until_ready(fn())
  rounds: dict[str, dict[str, list[float]]] = {name: {k: [] for k in fns} for name, fns in calls.items()}
  for index in range(cfg.rounds):
    if index and deadline is not None and time.perf_counter() > deadline:
      break
    for name, fns in calls.items():
      for kind, fn in fns.items():
        rounds[name][kind].append(_seconds_per_call(fn, cfg.warmup, cfg.iterations, cfg.min_seconds))
  return rounds


def benchmark(
  subjects: Mapping[str, Subject], cfg: BenchConfig, image_shape: Sequence[int], batch_size: int
) -> dict[str, Timing]:
  """Times every subject (round-robin, best round; see the module docstring).

  Args:
    subjects: name → :class:`Subject`.
    cfg: latency batch size, warm-up, iterations and rounds.
    image_shape: ``(H, W, C)`` of one image.
    batch_size: batch of the throughput measurements (the training batch size reuses the compiled step).

  Returns:
    name → :class:`Timing`.

  Raises:
    ValueError: naming a ``cfg`` field that is not positive.
  """
  for name, value in (
    ("batch_size", batch_size),
    ("bench.latency_batch_size", cfg.latency_batch_size),
    ("bench.iterations", cfg.iterations),
    ("bench.rounds", cfg.rounds),
  ):
    if value < 1:
      raise ValueError(f"{name} must be positive, got {value}")
  single = make_parallel(1)
  rng = np.random.default_rng(0)
  x = replicate(single, jnp.asarray(rng.normal(size=(batch_size, *image_shape)), jnp.float32))
  x_latency = replicate(single, jnp.asarray(rng.normal(size=(cfg.latency_batch_size, *image_shape)), jnp.float32))
  images = rng.integers(0, 256, (batch_size, *image_shape)).astype(np.uint8)
  labels = rng.integers(0, 10, batch_size).astype(np.int32)
  key = jax.random.PRNGKey(0)

  calls: dict[str, dict[str, Callable[[], Any]]] = {}
  for name, s in subjects.items():
    params, rest = replicate(single, (s.params, s.rest))
    predict = s.predict
    batch = shard_batch(s.parallel, images, labels)
    calls[name] = {
      "inference": lambda predict=predict, p=params, r=rest: predict(p, r, x),
      "latency": lambda predict=predict, p=params, r=rest: predict(p, r, x_latency),
      # The same state every call: each call is one full step; the update is computed and discarded.
      "train": lambda s=s, batch=batch: s.train_step(
        s.params, s.rest, s.opt_state, *batch, replicate(s.parallel, key), 0
      ),
    }
  rounds = round_robin(calls, cfg)
  out = {}
  for name, r in rounds.items():
    inference = batch_size / min(r["inference"])
    out[name] = Timing(
      inference_images_per_s=inference,
      inference_ms_per_image=1e3 / inference,
      latency_ms=1e3 * min(r["latency"]),
      train_images_per_s=batch_size / min(r["train"]),
      rounds=r,
    )
  return out
