"""Whole-network timing of ``resnet50_imagenet`` (:data:`experiments.models.NETWORKS`), dense against compressed.

Command::

  python -m experiments.bench.network --config bench_resnet50_imagenet --preset full --compress cp:4 cp:8 tucker2:4 tucker2:8
"""

from __future__ import annotations

from experiments.common.config import ExperimentConfig
from experiments.configs._bench_network import bench_config


def get_config(preset: str = "full") -> ExperimentConfig:
  """The ``resnet50_imagenet`` benchmark config (see :func:`experiments.configs._bench_network.bench_config`)."""
  return bench_config("bench_resnet50_imagenet", "resnet50_imagenet", preset)
