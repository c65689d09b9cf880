"""The configs of the realistic-network benchmarks (``bench_<network>``): one per :data:`experiments.models.NETWORKS`.

Presets: ``full`` and ``quick`` build the real widths (``quick`` times fewer calls); ``tiny`` divides every
width by 16 and times few calls, for tests. Nothing is trained and no data is read: the benchmark times
freshly initialized networks (:mod:`experiments.bench.network`).
"""

from __future__ import annotations

from experiments.common.config import PRESETS, BenchConfig, DataConfig, ExperimentConfig, OptimConfig
from experiments.models import network_config


def bench_config(name: str, network: str, preset: str) -> ExperimentConfig:
  """The benchmark config ``name`` of ``network`` (a key of :data:`experiments.models.NETWORKS`).

  Args:
    name: the config's name.
    network: the network.
    preset: ``"tiny"``, ``"quick"`` or ``"full"``.

  Returns:
    The config: throughput batch 32, latency batch 1, the network's image shape as synthetic data (CIFAR-10's
    normalization for 3-channel images), SGD with momentum for the training step.

  Raises:
    ValueError: naming ``preset`` when it is unknown.
  """
  if preset not in PRESETS:
    raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
  model, shape = network_config(network, width_divisor=16 if preset == "tiny" else 1)
  bench = {
    "full": BenchConfig(batch_size=32, latency_batch_size=1, warmup=2, repeats=10, min_seconds=1.0),
    "quick": BenchConfig(batch_size=32, latency_batch_size=1, warmup=2, repeats=5, min_seconds=0.5),
    "tiny": BenchConfig(batch_size=4, latency_batch_size=1, warmup=1, repeats=2, min_seconds=0.0),
  }[preset]
  return ExperimentConfig(
    name=name,
    preset=preset,
    model=model,
    data=DataConfig(name="synthetic", synthetic_shape=shape),
    optim=OptimConfig(name="sgd", learning_rate=0.05, weight_decay=5e-4),
    bench=bench,
    schemes=("dense",),
    expected="compressed networks (CP, Tucker-2 at MacReduction 4/8) faster than the fastest dense build",
  )
