"""The experiment configuration: frozen dataclasses, one per concern, and how to load and override them.

A config file in :mod:`experiments.configs` (big_vision style) defines ``get_config(preset="quick")`` returning
an :class:`ExperimentConfig`. Command lines pick one with ``--config NAME --preset PRESET`` and change single
fields with ``--set section.field=value`` (the value is parsed as a Python literal, so ``--set
model.stage_features=16,32`` gives a tuple and ``--set train.num_devices=None`` gives ``None``).

Example:
  >>> from experiments.common import config
  >>> cfg = config.load("compare_fashion_mnist", "quick")
  >>> cfg = config.override(cfg, ["train.epochs=2", "model.scheme=cp"])
  >>> cfg.train.epochs, cfg.model.scheme
  (2, 'cp')
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import math
from collections.abc import Sequence
from typing import Any

DEFAULT_CONFIG = "compare_fashion_mnist"
PRESETS = ("tiny", "quick", "full")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and the convolution scheme (see :mod:`experiments.schemes` for what each scheme builds).

  Attributes:
    arch: ``"vgg"`` (stem, then stages of ``stage_depth`` conv-BN-ReLU and a 2×2 max-pool each, flatten,
      linear), ``"resnet"`` (stem, then stages of ``stage_depth`` basic blocks, stages after the first
      starting with stride 2, global average pooling, linear) or ``"resnet_bottleneck"`` (the same with
      bottleneck blocks 1×1 → 3×3 → 1×1 whose output is 4× ``stage_features``, as ResNet-50); see
      :mod:`experiments.models`.
    scheme: which layer replaces every conv after the stem (:data:`experiments.schemes.SCHEMES`).
    num_classes: classifier outputs.
    stem_features: channels of the stem conv (the first conv, a dense 3×3 unless ``factorize_stem``).
    stage_features: channels of each stage.
    stage_depth: convs per VGG stage, basic blocks per ResNet stage: one int, or one per stage.
    stem_pool: a 2×2 max-pool after the VGG stem (as VGG-11), so the first stage runs at half resolution.
    imagenet_stem: the ImageNet ResNet stem instead of the 3×3 one: a dense 7×7 stride-2 conv, BN, ReLU and a
      3×3 stride-2 max-pool (a 224×224 image reaches the first stage at 56×56).
    kernel_size: kernel of the scheme convs (the ``dense5``/``stacked`` schemes use ``large_kernel_size``).
    large_kernel_size: receptive field of the ``dense5`` and ``stacked`` schemes.
    spatial_rank: ``SpatialConv`` rank as a fraction of the layer's output channels.
    cp_rank: ``CPConv`` rank as a fraction of the output channels.
    tucker_rank: ``TuckerConv`` ranks ``(R1, R2)``, both this fraction of the output channels.
    bottleneck_width: ``Bottleneck`` width as a fraction of the output channels.
    tt_spatial_rank: TT rank ``r_0`` after the spatial core (at most ``kh·kw``).
    tt_rank: TT rank ``r_1`` as a fraction of the output channels (clipped to its bound).
    wide_factor: channel multiplier of the ``wide`` scheme (``√2`` keeps the MACs of a merged pair).
    implementation: ``implementation=`` of the factorized layers: ``"factorized"`` measures the schemes
      themselves; ``"auto"`` lets each layer run its reconstructed dense kernel where the cost model says
      that is faster.
    factorize_stem: build the stem with the scheme's layer too (only schemes of
      :data:`experiments.schemes.STEM_FACTORIZABLE`; the ``spatial_stem`` scheme is ``spatial`` with this on).
  """

  arch: str = "vgg"
  scheme: str = "dense"
  num_classes: int = 10
  stem_features: int = 32
  stage_features: tuple[int, ...] = (32, 64)
  stage_depth: int | tuple[int, ...] = 2
  stem_pool: bool = False
  imagenet_stem: bool = False
  kernel_size: int = 3
  large_kernel_size: int = 5
  spatial_rank: float = 0.5
  cp_rank: float = 1.0
  tucker_rank: float = 0.5
  bottleneck_width: float = 0.5
  tt_spatial_rank: int = 3
  tt_rank: float = 0.25
  wide_factor: float = math.sqrt(2.0)
  implementation: str = "factorized"
  factorize_stem: bool = False


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which data, how much of it, and its augmentation.

  Attributes:
    name: ``"fashion_mnist"``, ``"mnist"``, ``"cifar10"`` (read by :func:`experiments.data.load`) or
      ``"synthetic"`` (:mod:`experiments.data.synthetic`, for tests).
    train_examples: use only the first this many training examples (``None``: all).
    test_examples: use only the first this many test examples (``None``: all).
    augment: random crop (4-pixel zero padding) and horizontal flip of each training image.
    data_dir: data root searched first (see :mod:`experiments.data.locate`).
    synthetic_shape: image shape of the synthetic data ``(H, W, C)``; ``C`` picks the normalization
      statistics (1: Fashion-MNIST's, 3: CIFAR-10's).
    synthetic_train: synthetic training examples.
    synthetic_test: synthetic test examples.
  """

  name: str = "fashion_mnist"
  train_examples: int | None = None
  test_examples: int | None = None
  augment: bool = False
  data_dir: str | None = None
  synthetic_shape: tuple[int, int, int] = (28, 28, 1)
  synthetic_train: int = 512
  synthetic_test: int = 256


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimizer and learning-rate schedule (linear warm-up, then cosine decay to ``end_lr_fraction``).

  Attributes:
    name: ``"adamw"`` or ``"sgd"`` (heavy-ball / Nesterov momentum with coupled L2 weight decay).
    learning_rate: peak learning rate.
    warmup_fraction: fraction of all steps spent warming up linearly from 0.
    end_lr_fraction: final learning rate as a fraction of the peak.
    weight_decay: decay of the weights with two or more axes (kernels, factors); biases and BatchNorm
      parameters are not decayed.
    momentum: SGD momentum (``b1`` stays Adam's default).
    nesterov: Nesterov momentum for SGD.
    clip_norm: clip the global gradient norm to this (``None``: no clipping).
  """

  name: str = "adamw"
  learning_rate: float = 2e-3
  warmup_fraction: float = 0.05
  end_lr_fraction: float = 0.0
  weight_decay: float = 5e-4
  momentum: float = 0.9
  nesterov: bool = True
  clip_norm: float | None = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The training loop.

  Attributes:
    epochs: passes over the training data.
    batch_size: global batch size (split over all devices; a multiple of their number).
    eval_batch_size: batch size of evaluation (the last batch is padded); ``None``: ``batch_size``, which
      shares the compiled inference function with the throughput measurement.
    seed: seeds the parameters, the data order (:func:`experiments.data.batches`) and augmentation.
    log_every_steps: write averaged training metrics every this many steps (and at checkpoints and epoch
      ends).
    checkpoint_every_steps: save a checkpoint every this many steps, and always at the end of each epoch.
    keep_checkpoints: how many recent checkpoints to keep.
    num_devices: data-parallel devices (the first this many local devices; ``None``: all).
    progress: show a progress bar on stderr.
  """

  epochs: int = 1
  batch_size: int = 128
  eval_batch_size: int | None = None
  seed: int = 0
  log_every_steps: int = 50
  checkpoint_every_steps: int = 200
  keep_checkpoints: int = 2
  num_devices: int | None = None
  progress: bool = True


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """Throughput measurement (:mod:`experiments.training.throughput`, timed by :mod:`experiments.common.timing`).

  Attributes:
    batch_size: batch of the inference and training throughput measurements (``None``: the training batch
      size, whose compiled training step is then reused).
    latency_batch_size: batch of the latency measurement (1: one image at a time).
    warmup: untimed calls of each function before its timed ones (at least 1 when ``min_seconds > 0``).
    repeats: timed calls of each function, at least.
    min_seconds: each function's timed calls add up to at least this long (fast calls are repeated more
      often than ``repeats``, so their timings are not dominated by timer and scheduling noise).
  """

  batch_size: int | None = None
  latency_batch_size: int = 1
  warmup: int = 2
  repeats: int = 30
  min_seconds: float = 0.6


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """One experiment: a model family trained with every scheme in ``schemes`` on one dataset.

  Attributes:
    name: the config's name (its module in :mod:`experiments.configs`).
    preset: the preset it was built with.
    model: :class:`ModelConfig` (``model.scheme`` is set per run by :mod:`experiments.claims.compare`).
    data: :class:`DataConfig`.
    optim: :class:`OptimConfig`.
    train: :class:`TrainConfig`.
    bench: :class:`BenchConfig`.
    schemes: schemes :mod:`experiments.claims.compare` trains, in table order.
    baseline: the scheme the others are compared with.
    expected: the expected outcome, for the report header.
  """

  name: str
  preset: str
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  optim: OptimConfig = OptimConfig()
  train: TrainConfig = TrainConfig()
  bench: BenchConfig = BenchConfig()
  schemes: tuple[str, ...] = ()
  baseline: str = "dense"
  expected: str = ""

  def with_scheme(self, scheme: str) -> ExperimentConfig:
    """This config with ``model.scheme`` set to ``scheme``."""
    return dataclasses.replace(self, model=dataclasses.replace(self.model, scheme=scheme))


def load(name: str = DEFAULT_CONFIG, preset: str = "quick") -> ExperimentConfig:
  """Imports ``experiments.configs.<name>`` and calls its ``get_config(preset)``.

  Args:
    name: module name in :mod:`experiments.configs` (e.g. ``"compare_cifar10"``).
    preset: ``"tiny"`` (tests), ``"quick"`` (minutes on a laptop) or ``"full"`` (the real numbers).

  Returns:
    The :class:`ExperimentConfig`.

  Raises:
    ValueError: naming ``name`` when there is no such config, or ``preset`` when it is not one of
      :data:`PRESETS`.
  """
  if preset not in PRESETS:
    raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
  if not name.isidentifier():
    raise ValueError(f"name must be a module name in experiments/configs, got {name!r}")
  try:
    module = importlib.import_module(f"experiments.configs.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"experiments.configs.{name}":
      raise
    raise ValueError(f"name must be a config in experiments/configs, got {name!r}") from None
  return module.get_config(preset)


def override(cfg: Any, assignments: Sequence[str]) -> Any:
  """Returns ``cfg`` with ``section.field=value`` assignments applied (dataclasses are replaced, not mutated).

  Args:
    cfg: a (nested) frozen dataclass such as :class:`ExperimentConfig`.
    assignments: strings ``"dotted.path=value"``; ``value`` is parsed with :func:`ast.literal_eval` (a bare
      word stays a string); ints become floats where the field holds a float.

  Returns:
    The updated config.

  Raises:
    ValueError: naming the assignment when it has no ``=`` or its path is not a field.
  """
  for assignment in assignments:
    path, sep, text = assignment.partition("=")
    if not sep or not path:
      raise ValueError(f"assignments must look like 'section.field=value', got {assignment!r}")
    cfg = _replace_path(cfg, path.strip().split("."), _parse(text.strip()), assignment)
  return cfg


def _parse(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _replace_path(node: Any, path: list[str], value: Any, assignment: str) -> Any:
  names = {f.name for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else set()
  if path[0] not in names:
    raise ValueError(
      f"assignments must name a config field, {path[0]!r} is not one of {sorted(names)} ({assignment!r})"
    )
  current = getattr(node, path[0])
  if len(path) > 1:
    value = _replace_path(current, path[1:], value, assignment)
  elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  elif isinstance(current, tuple) and not isinstance(value, tuple):
    value = (value,)
  return dataclasses.replace(node, **{path[0]: value})
