"""Every conv scheme in a small ResNet on CIFAR-10.

Command::

  python -m experiments.claims.compare --config compare_cifar10                  # preset quick
  python -m experiments.claims.compare --config compare_cifar10 --preset full --workdir results/cifar_full

Needs the CIFAR-10 binary files (downloaded on first use, or see :mod:`experiments.data.locate`).

Network: ResNet-20 layout (He et al. 2016, §4.2) — stem 3×3 conv (3→16, dense in every scheme), three stages
of three basic blocks (16, 32, 64 channels; stride 2 at the start of stages 2 and 3), global average pooling,
linear classifier; the scheme replaces the 18 block convs. SGD with Nesterov momentum 0.9, peak learning rate
0.1, warm-up + cosine, weight decay 5e-4, batch 128, random crop + flip.

Expected results:

* ``full`` (50 000 images, 30 epochs): dense ResNet-20 ≈ 91% test accuracy; factorized schemes a few points
  lower; on a CPU the ranking by speed differs from the ranking by MACs.
* ``quick`` (5 000 images, 1 epoch, one block per stage, minutes on 2 CPU cores): ≈ 30–45% test accuracy; a
  smoke test of the pipeline and a first look at the timings.
* ``tiny`` (synthetic 32×32×3 data, three schemes; for tests).
"""

from __future__ import annotations

import dataclasses

from experiments.common.config import (
  BenchConfig,
  DataConfig,
  ExperimentConfig,
  ModelConfig,
  OptimConfig,
  TrainConfig,
)
from experiments.schemes import SCHEMES


def get_config(preset: str = "quick") -> ExperimentConfig:
  """The CIFAR-10 comparison.

  Args:
    preset: ``"tiny"``, ``"quick"`` or ``"full"``.

  Returns:
    The config.
  """
  cfg = ExperimentConfig(
    name="compare_cifar10",
    preset=preset,
    model=ModelConfig(arch="resnet", stem_features=16, stage_features=(16, 32, 64), stage_depth=3),
    data=DataConfig(name="cifar10", augment=True),
    optim=OptimConfig(name="sgd", learning_rate=0.1, weight_decay=5e-4, momentum=0.9, nesterov=True),
    train=TrainConfig(epochs=30, batch_size=128, log_every_steps=50, checkpoint_every_steps=500),
    bench=BenchConfig(repeats=30, min_seconds=0.6),
    schemes=SCHEMES,
    expected="dense ResNet-20 ≈ 91% test accuracy (full preset)",
  )
  if preset == "full":
    return cfg
  if preset == "quick":
    return dataclasses.replace(
      cfg,
      model=dataclasses.replace(cfg.model, stage_depth=1),
      data=dataclasses.replace(cfg.data, train_examples=5000, test_examples=2000),
      train=dataclasses.replace(cfg.train, epochs=1, log_every_steps=10, checkpoint_every_steps=100),
      bench=BenchConfig(warmup=1, repeats=6, min_seconds=0.4),
      expected="≈ 30–45% test accuracy after one epoch on 5 000 images",
    )
  if preset == "tiny":
    return dataclasses.replace(
      cfg,
      model=dataclasses.replace(cfg.model, stem_features=4, stage_features=(8, 8), stage_depth=1),
      data=DataConfig(
        name="synthetic", synthetic_shape=(32, 32, 3), synthetic_train=256, synthetic_test=64, augment=True
      ),
      optim=dataclasses.replace(cfg.optim, learning_rate=0.05),
      train=dataclasses.replace(
        cfg.train,
        epochs=2,
        batch_size=32,
        log_every_steps=4,
        checkpoint_every_steps=4,
        progress=False,
      ),
      bench=BenchConfig(warmup=1, repeats=2, min_seconds=0.0),
      schemes=("dense", "cp", "wide"),
      expected="a falling loss on the synthetic classes",
    )
  raise ValueError(f"preset must be one of ('tiny', 'quick', 'full'), got {preset!r}")
