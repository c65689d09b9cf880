"""Whole-network timing of ``vgg16_cifar`` (:data:`experiments.models.NETWORKS`), dense against compressed.

Command::

  python -m experiments.bench.network --config bench_vgg16_cifar --preset full --compress cp:4 cp:8 tucker2:4 tucker2:8
"""

from __future__ import annotations

from experiments.common.config import ExperimentConfig
from experiments.configs._bench_network import bench_config


def get_config(preset: str = "full") -> ExperimentConfig:
  """The ``vgg16_cifar`` benchmark config (see :func:`experiments.configs._bench_network.bench_config`)."""
  return bench_config("bench_vgg16_cifar", "vgg16_cifar", preset)
