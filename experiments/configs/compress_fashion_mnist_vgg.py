"""Compress-and-fine-tune at realistic width: a VGG-11-style network (64–512 channels) on Fashion-MNIST.

Command::

  python -m experiments.claims.compress --config compress_fashion_mnist_vgg --preset full \
    --workdir experiments/results/compress_fashion_mnist_vgg

Network (VGG-11's layout without its last, 1×1 stage): stem 3×3 conv 1→64 at 28×28, 2×2 max-pool; 128 at
14×14; two 256 at 7×7; two 512 at 3×3; a 2×2 max-pool after each stage; flatten; linear. Every conv is
followed by BatchNorm and ReLU. 90.1 M MACs and 4.5 M parameters per image; the compressed convs (all but
the stem) hold 99.5% of the MACs, and most of them run on 7×7 and 3×3 maps, where a dense conv on XLA:CPU
runs far below its large-map throughput.

Training: AdamW (2e-3, weight decay 0.05), warm-up + cosine, batch 128, 2 epochs of the 60 000 training
images (938 steps).

Expected results (``full``): the dense baseline ≥ 92% test accuracy; CP and Tucker-2 at 4–8× fewer MACs
recover to within about 1 point after fine-tuning, and run several times faster than the fastest dense
build of the same network on a CPU. ``quick`` (4 096 images, 1 epoch, 25 fine-tuning steps) checks the
pipeline end to end in minutes; ``tiny`` (synthetic data) is for tests.
"""

from __future__ import annotations

import dataclasses

from experiments.common.config import BenchConfig, DataConfig, ExperimentConfig, ModelConfig, OptimConfig, TrainConfig


def get_config(preset: str = "full") -> ExperimentConfig:
  """The realistic-width compression experiment.

  Args:
    preset: ``"tiny"``, ``"quick"`` or ``"full"``.

  Returns:
    The config.

  Raises:
    ValueError: naming ``preset`` when it is unknown.
  """
  cfg = ExperimentConfig(
    name="compress_fashion_mnist_vgg",
    preset=preset,
    model=ModelConfig(
      arch="vgg", stem_features=64, stage_features=(128, 256, 512), stage_depth=(1, 2, 2), stem_pool=True
    ),
    data=DataConfig(name="fashion_mnist"),
    optim=OptimConfig(name="adamw", learning_rate=2e-3, weight_decay=0.05, warmup_fraction=0.05),
    train=TrainConfig(epochs=2, batch_size=128, log_every_steps=25, checkpoint_every_steps=100, progress=False),
    bench=BenchConfig(batch_size=32, repeats=20, min_seconds=1.0),
    schemes=("dense",),
    expected="dense ≥ 92% test accuracy; CP/Tucker-2 within ~1 point after fine-tuning at several times the speed",
  )
  if preset == "full":
    return cfg
  if preset == "quick":
    return dataclasses.replace(
      cfg,
      data=dataclasses.replace(cfg.data, train_examples=4096, test_examples=2000),
      train=dataclasses.replace(cfg.train, epochs=1, batch_size=64, log_every_steps=8, checkpoint_every_steps=32),
      bench=BenchConfig(batch_size=32, warmup=1, repeats=6, min_seconds=0.4),
      expected="the pipeline end to end on 4 096 images",
    )
  if preset == "tiny":
    return dataclasses.replace(
      cfg,
      model=dataclasses.replace(cfg.model, stem_features=8, stage_features=(8, 16, 16)),
      data=DataConfig(name="synthetic", synthetic_shape=(28, 28, 1), synthetic_train=128, synthetic_test=64),
      train=dataclasses.replace(cfg.train, epochs=1, batch_size=32, log_every_steps=2, checkpoint_every_steps=4),
      bench=BenchConfig(warmup=1, repeats=2, min_seconds=0.0),
      expected="runs",
    )
  raise ValueError(f"preset must be one of ('tiny', 'quick', 'full'), got {preset!r}")
