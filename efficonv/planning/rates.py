"""The cost model's throughput tables, per backend, as data.

``RATES[backend][kind]`` is the sustained throughput (multiply-accumulates per second) of one kind of step
(:data:`efficonv.planning.STEP_KINDS`, with the depthwise kind split by path: ``depthwise_shift``,
``depthwise_xla``), and ``RATES[backend]["step"]`` a fixed cost in seconds per launched step. Only the ratios
matter for ``implementation="auto"``; the values are those of the model, not peak hardware numbers.

``TRAINING_FACTORS[backend][kind]`` is forward+backward time over forward time of each kind of step (the
gradients of the input and of the weights), for ``objective="training"``. They are a joint fit, not
per-kind physics: ``dot`` comes out low because the forward model already over-charges the small matmuls
of factorized layers, and ``step`` carries the per-operation overhead of the backward pass.

Provenance. CPU: least-squares fits (relative errors) to the median times of every forced implementation
in the layer benchmarks; ``python -m experiments.planner.fit_rates`` refits both tables from results files
and reports how often ``auto`` then picks the faster path (the results, with machine and versions, are in
``experiments/results/bench_layers_quick/`` and ``experiments/results/auto_sweep/``). GPU and TPU: guesses
until the GPU suite measures them; a backend not listed uses the GPU row.
"""

from __future__ import annotations

from collections.abc import Mapping

RATES: Mapping[str, Mapping[str, float]] = {
  "cpu": {"conv": 5.5e10, "dot": 9e10, "depthwise_shift": 7.5e9, "depthwise_xla": 0.5e9, "step": 1.4e-4},
  "gpu": {"conv": 2e13, "dot": 3e13, "depthwise_shift": 1e12, "depthwise_xla": 1e12, "step": 5e-6},
  "tpu": {"conv": 5e13, "dot": 5e13, "depthwise_shift": 1e12, "depthwise_xla": 1e12, "step": 5e-6},
}

TRAINING_FACTORS: Mapping[str, Mapping[str, float]] = {
  "cpu": {
    "conv": 2.12,
    "dot": 0.19,
    "depthwise_shift": 7.37,
    "depthwise_shift_multiplier": 9.53,
    "depthwise_xla": 3.0,
    "step": 3.51,
  },
  # A backward pass costing about twice the forward for every kind, until measured.
  "gpu": dict.fromkeys(("conv", "dot", "depthwise_shift", "depthwise_shift_multiplier", "depthwise_xla", "step"), 3.0),
}


def rates_for(backend: str) -> Mapping[str, float]:
  """The throughput row of ``backend`` (the GPU row for a backend not measured)."""
  return RATES.get(backend, RATES["gpu"])


def training_factors_for(backend: str) -> Mapping[str, float]:
  """The forward+backward factors of ``backend`` (the GPU row for a backend not measured)."""
  return TRAINING_FACTORS.get(backend, TRAINING_FACTORS["gpu"])
