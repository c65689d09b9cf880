"""Small VGG-style and ResNet CNNs (Flax NNX) whose convs after the first (or all, see below) follow a scheme.

Both take NHWC images — 28×28×1 (Fashion-MNIST, MNIST) and 32×32×3 (CIFAR-10) alike. Every conv is followed
by BatchNorm; call with ``train=True`` to normalize with batch statistics and update the running ones,
``train=False`` (the default, so that :func:`efficonv.cost.macs` can trace the model) to use the running
averages.

Layouts (``w_i`` = ``stage_features[i]``, ``d`` = ``stage_depth``):

* VGG: ``stem 3×3 → [2×2 max-pool if stem_pool] → [d × (scheme conv → BN → ReLU), 2×2 max-pool] per stage →
  flatten → Linear`` (``d`` may differ per stage: VGG-11's layout is ``stem_pool`` with depths ``1, 2, 2``). The
  flattened head (as in VGG) learns much faster than global average pooling at these small widths — 81% vs
  68% Fashion-MNIST test accuracy after the same 64 steps (quick preset) — and is built for the given image
  size.
* ResNet: ``stem 3×3 → BN → ReLU → [d basic blocks per stage] → global average pool → Linear``; a basic block is
  ``conv → BN → ReLU → conv → BN``, plus the input (through a 1×1 conv and BN where the stride or width
  changes — this projection stays dense: a 1×1 conv has nothing to factorize), then ReLU. The first block of
  every stage after the first has stride 2.

The stem is a dense 3×3 except with ``spatial_stem`` or ``ModelConfig.factorize_stem``
(:func:`experiments.schemes.stem_conv`). See :mod:`experiments.schemes` for what each scheme puts in place of
the convs and how ``wide`` merges them.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from experiments.common.config import ModelConfig
  >>> from experiments.models import build_model
  >>> model = build_model(ModelConfig(scheme="cp", stage_features=(16, 32)), (28, 28, 1), rngs=nnx.Rngs(0))
  >>> model(jnp.zeros((2, 28, 28, 1))).shape
  (2, 10)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from efficonv.typing import Array
from experiments.common.config import ModelConfig
from experiments.schemes import check_scheme, scheme_conv, stem_conv, widen

ARCHS = ("vgg", "resnet")


def stage_layout(cfg: ModelConfig) -> list[list[int]]:
  """Output channels of the scheme convs (VGG) or blocks (ResNet) of each stage.

  ``wide`` widens every entry by ``wide_factor`` and, in a VGG, halves the convs per stage (rounding up);
  a ResNet keeps its blocks and merges the two convs inside each (:class:`ResidualBlock`).

  Returns:
    One list of widths per stage.
  """
  depths = (cfg.stage_depth,) * len(cfg.stage_features) if isinstance(cfg.stage_depth, int) else cfg.stage_depth
  if not cfg.stage_features or len(depths) != len(cfg.stage_features) or min(depths) < 1:
    raise ValueError(
      "stage_depth must be an int >= 1 or one such int per stage, and stage_features non-empty, got "
      f"{cfg.stage_depth} and {cfg.stage_features}"
    )
  if check_scheme(cfg.scheme) == "wide":
    widened = [math.ceil(d / 2) if cfg.arch == "vgg" else d for d in depths]
    return [[widen(w, cfg.wide_factor)] * d for w, d in zip(cfg.stage_features, widened)]
  return [[w] * d for w, d in zip(cfg.stage_features, depths)]


class ConvBN(nnx.Module):
  """``conv → BatchNorm`` (the ReLU is the caller's, so residual adds can come before it)."""

  def __init__(self, conv: nnx.Module, features: int, *, rngs: nnx.Rngs):
    self.conv = conv
    self.norm = nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)

  def __call__(self, x: Array, train: bool = False) -> Array:
    return self.norm(self.conv(x), use_running_average=not train)


class VGG(nnx.Module):
  """Stem, stages of conv-BN-ReLU each followed by 2×2 max-pooling, flatten, linear classifier.

  Args:
    cfg: the architecture (``cfg.arch`` is not read).
    in_features: input channels (1 or 3).
    image_hw: ``(H, W)`` of the input images (the classifier's input size depends on it).
    rngs: parameter initialization.
  """

  def __init__(self, cfg: ModelConfig, in_features: int, image_hw: tuple[int, int], *, rngs: nnx.Rngs):
    self.stem = ConvBN(stem_conv(cfg, in_features, rngs=rngs), cfg.stem_features, rngs=rngs)
    layers, pool_after, width = [], [], cfg.stem_features
    for stage in stage_layout(cfg):
      for features in stage:
        conv = scheme_conv(cfg.scheme, width, features, strides=1, cfg=cfg, rngs=rngs)
        layers.append(ConvBN(conv, features, rngs=rngs))
        width = features
      pool_after.append(len(layers) - 1)
    self.layers = nnx.List(layers)
    self.pool_after = tuple(pool_after)
    self.stem_pool = cfg.stem_pool
    height, width_pixels = image_hw
    for _ in range(len(self.pool_after) + int(cfg.stem_pool)):
      height, width_pixels = height // 2, width_pixels // 2
    if min(height, width_pixels) < 1:
      raise ValueError(f"input_shape must be at least {2 ** len(self.pool_after)} pixels per side, got {image_hw}")
    self.head = nnx.Linear(height * width_pixels * width, cfg.num_classes, rngs=rngs)

  def __call__(self, x: Array, train: bool = False) -> Array:
    """``(N, H, W, C)`` images → ``(N, num_classes)`` logits."""
    x = nnx.relu(self.stem(x, train))
    if self.stem_pool:
      x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    for i, layer in enumerate(self.layers):
      x = nnx.relu(layer(x, train))
      if i in self.pool_after:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    return self.head(x.reshape(x.shape[0], -1))


class ResidualBlock(nnx.Module):
  """Basic block: ``num_convs`` scheme convs with BN (ReLU between), plus the (projected) input, then ReLU.

  Args:
    cfg: scheme and ranks.
    in_features: input channels.
    features: output channels.
    strides: stride of the first conv (and of the projection).
    num_convs: 2 (basic block) or 1 (``wide``: the pair merged).
    rngs: parameter initialization.
  """

  def __init__(
    self, cfg: ModelConfig, in_features: int, features: int, strides: int, num_convs: int, *, rngs: nnx.Rngs
  ):
    convs = []
    for i in range(num_convs):
      conv = scheme_conv(
        cfg.scheme, in_features if i == 0 else features, features, strides=strides if i == 0 else 1, cfg=cfg, rngs=rngs
      )
      convs.append(ConvBN(conv, features, rngs=rngs))
    self.convs = nnx.List(convs)
    self.projection = (
      ConvBN(nnx.Conv(in_features, features, (1, 1), strides=strides, use_bias=False, rngs=rngs), features, rngs=rngs)
      if strides != 1 or in_features != features
      else None
    )

  def __call__(self, x: Array, train: bool = False) -> Array:
    shortcut = x if self.projection is None else self.projection(x, train)
    for i, conv in enumerate(self.convs):
      x = conv(x, train)
      if i < len(self.convs) - 1:
        x = nnx.relu(x)
    return nnx.relu(x + shortcut)


class ResNet(nnx.Module):
  """Stem, stages of residual blocks (stride 2 starting each later stage), global average pool, linear.

  Args:
    cfg: the architecture (``cfg.arch`` is not read).
    in_features: input channels (1 or 3).
    rngs: parameter initialization.
  """

  def __init__(self, cfg: ModelConfig, in_features: int, *, rngs: nnx.Rngs):
    self.stem = ConvBN(stem_conv(cfg, in_features, rngs=rngs), cfg.stem_features, rngs=rngs)
    num_convs = 1 if cfg.scheme == "wide" else 2
    blocks, width = [], cfg.stem_features
    for s, stage in enumerate(stage_layout(cfg)):
      for b, features in enumerate(stage):
        strides = 2 if s > 0 and b == 0 else 1
        blocks.append(ResidualBlock(cfg, width, features, strides, num_convs, rngs=rngs))
        width = features
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(width, cfg.num_classes, rngs=rngs)

  def __call__(self, x: Array, train: bool = False) -> Array:
    """``(N, H, W, C)`` images → ``(N, num_classes)`` logits."""
    x = nnx.relu(self.stem(x, train))
    for block in self.blocks:
      x = block(x, train)
    return self.head(jnp.mean(x, axis=(1, 2)))


def build_model(cfg: ModelConfig, input_shape: Sequence[int], *, rngs: nnx.Rngs) -> VGG | ResNet:
  """Builds ``cfg.arch`` with ``cfg.scheme`` for images of ``input_shape``.

  Args:
    cfg: the model config.
    input_shape: ``(H, W, C)`` of one image.
    rngs: parameter initialization.

  Returns:
    The model, mapping ``(N, H, W, C)`` to ``(N, num_classes)`` logits.

  Raises:
    ValueError: naming ``cfg.arch``, ``cfg.scheme``, ``cfg.factorize_stem`` or ``input_shape`` when
      unsupported.
  """
  check_scheme(cfg.scheme)
  if len(input_shape) != 3 or any(int(v) < 1 for v in input_shape):
    raise ValueError(f"input_shape must be (H, W, C) of one image, got {tuple(input_shape)}")
  if cfg.arch == "vgg":
    return VGG(cfg, int(input_shape[2]), (int(input_shape[0]), int(input_shape[1])), rngs=rngs)
  if cfg.arch == "resnet":
    return ResNet(cfg, int(input_shape[2]), rngs=rngs)
  raise ValueError(f"cfg.arch must be one of {ARCHS}, got {cfg.arch!r}")
