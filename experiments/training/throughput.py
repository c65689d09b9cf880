"""Throughput and latency of whole networks, timed with the one statistic of :mod:`experiments.common.timing`.

For each model three jitted functions are timed: inference on a batch of ``batch_size`` (throughput) and on
``bench.latency_batch_size`` images (latency), both on one device, and the training run's own step (forward,
backward, optimizer update; on the training mesh) on a batch of ``batch_size`` — ``bench.batch_size``, or the
training batch size when that is ``None``. Every function is compiled and called once before any timing;
then all functions of all models are timed together by :func:`experiments.common.timing.measure` (``bench``
warm-up, at least ``bench.repeats`` calls and ``bench.min_seconds`` each, interleaved so that load from
other processes hits all models alike), and each one's median call counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.common.config import BenchConfig
from experiments.common.timing import Stats, measure
from experiments.training.steps import Parallel, State, make_parallel, replicate, shard_batch


@dataclasses.dataclass
class Timing:
  """Timings of one model (median calls).

  Attributes:
    inference_images_per_s: inference throughput at ``batch_size``.
    inference_ms_per_image: ``1000 / inference_images_per_s``.
    latency_ms: time of one inference call on ``latency_batch_size`` images.
    train_images_per_s: training-step throughput at ``batch_size``.
    stats: the timing statistics of each measurement, ``{"inference": ..., "latency": ..., "train": ...}``
      (:meth:`experiments.common.timing.Stats.as_dict`).
  """

  inference_images_per_s: float
  inference_ms_per_image: float
  latency_ms: float
  train_images_per_s: float
  stats: dict[str, dict[str, float | int]]


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


def time_calls(
  calls: Mapping[str, Mapping[str, Callable[[], Any]]], cfg: BenchConfig, deadline: float | None = None
) -> dict[str, dict[str, Stats]]:
  """Calls every function once (compiling it), then times them all together with :func:`measure`.

  Args:
    calls: name → measurement → a function of no arguments (its result is waited for).
    cfg: warm-up, repeats and ``min_seconds``.
    deadline: a :func:`time.perf_counter` value after which no further round of timed calls starts (each
      function keeps at least one timed call).

  Returns:
    name → measurement → :class:`~experiments.common.timing.Stats`.
  """
  for fns in calls.values():  # compile everything before any timing
    for fn in fns.values():
      jax.block_until_ready(fn())
  flat = {(name, kind): fn for name, fns in calls.items() for kind, fn in fns.items()}
  keys = {f"{i}:{name}/{kind}": (name, kind) for i, (name, kind) in enumerate(flat)}  # unique labels
  stats = measure(
    {label: (flat[key], ()) for label, key in keys.items()},
    repeats=cfg.repeats,
    warmup=cfg.warmup,
    min_seconds=cfg.min_seconds,
    deadline=deadline,
  )
  out: dict[str, dict[str, Stats]] = {name: {} for name in calls}
  for label, (name, kind) in keys.items():
    out[name][kind] = stats[label]
  return out


def benchmark(
  subjects: Mapping[str, Subject], cfg: BenchConfig, image_shape: Sequence[int], batch_size: int
) -> dict[str, Timing]:
  """Times every subject (median calls, all interleaved; see the module docstring).

  Args:
    subjects: name → :class:`Subject`.
    cfg: latency batch size, warm-up, repeats and ``min_seconds``.
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
    ("bench.repeats", cfg.repeats),
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
  stats = time_calls(calls, cfg)
  out = {}
  for name, s in stats.items():
    inference = batch_size / (s["inference"].median_ms * 1e-3)
    out[name] = Timing(
      inference_images_per_s=inference,
      inference_ms_per_image=1e3 / inference,
      latency_ms=s["latency"].median_ms,
      train_images_per_s=batch_size / (s["train"].median_ms * 1e-3),
      stats={kind: v.as_dict() for kind, v in s.items()},
    )
  return out
