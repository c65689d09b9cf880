"""VGG-style and ResNet CNNs (Flax NNX) whose convs after the first (or all, see below) follow a scheme.

All take NHWC images — 28×28×1 (Fashion-MNIST, MNIST), 32×32×3 (CIFAR-10) and 224×224×3 (ImageNet geometry,
for timing) alike. Every conv is followed by BatchNorm; call with ``train=True`` to normalize with batch
statistics and update the running ones, ``train=False`` (the default, so that :func:`efficonv.cost.macs` can
trace the model) to use the running averages.

Layouts (``w_i`` = ``stage_features[i]``, ``d`` = ``stage_depth``):

* VGG: ``stem 3×3 → [2×2 max-pool if stem_pool] → [d × (scheme conv → BN → ReLU), 2×2 max-pool] per stage →
  flatten → Linear`` (``d`` may differ per stage: VGG-11's layout is ``stem_pool`` with depths ``1, 2, 2``). The
  flattened head (as in VGG) learns much faster than global average pooling at these small widths — 81% vs
  68% Fashion-MNIST test accuracy after the same 64 steps (quick preset) — and is built for the given image
  size.
* ResNet (``arch="resnet"``): ``stem → [d basic blocks per stage] → global average pool → Linear``; a basic
  block is ``conv → BN → ReLU → conv → BN``, plus the input (through a 1×1 conv and BN where the stride or
  width changes — this projection stays dense: a 1×1 conv has nothing to factorize), then ReLU. The first
  block of every stage after the first has stride 2.
* Bottleneck ResNet (``arch="resnet_bottleneck"``, ResNet-50): as the ResNet with bottleneck blocks
  ``1×1 (w_i) → BN → ReLU → scheme 3×3 (w_i, the block's stride) → BN → ReLU → 1×1 (4·w_i) → BN``, plus the
  (projected) input, then ReLU. The 1×1 convs are dense ``nnx.Conv`` (the scheme switch concerns the
  ``k×k`` convs); :func:`efficonv.compress` may still factorize them.

The stem is a dense 3×3 (``stem 3×3 → BN → ReLU``) except with ``spatial_stem`` or ``ModelConfig.factorize_stem``
(:func:`experiments.schemes.stem_conv`), or with ``ModelConfig.imagenet_stem`` (ResNets only): a dense 7×7
stride-2 conv, BN, ReLU, then a 3×3 stride-2 max-pool. See :mod:`experiments.schemes` for what each scheme
puts in place of the convs and how ``wide`` merges them.

:data:`NETWORKS` names the realistic networks the benchmarks time (VGG-11/16 and ResNet-18 at CIFAR
geometry, ResNet-18/50 at ImageNet geometry); :func:`network_config` returns one.

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

import dataclasses
import math
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from efficonv.typing import Array
from experiments.common.config import ModelConfig
from experiments.schemes import check_scheme, factorizes_stem, scheme_conv, stem_conv, widen

ARCHS = ("vgg", "resnet", "resnet_bottleneck")
BOTTLENECK_EXPANSION = 4
"""Output channels of a bottleneck block per channel of its 3×3 conv (ResNet-50's)."""

NETWORKS: dict[str, tuple[ModelConfig, tuple[int, int, int]]] = {
  "vgg11_cifar": (
    ModelConfig(
      arch="vgg", stem_features=64, stage_features=(128, 256, 512, 512), stage_depth=(1, 2, 2, 2), stem_pool=True
    ),
    (32, 32, 3),
  ),
  "vgg16_cifar": (
    ModelConfig(arch="vgg", stem_features=64, stage_features=(64, 128, 256, 512, 512), stage_depth=(1, 2, 3, 3, 3)),
    (32, 32, 3),
  ),
  "resnet18_cifar": (
    ModelConfig(arch="resnet", stem_features=64, stage_features=(64, 128, 256, 512), stage_depth=2),
    (32, 32, 3),
  ),
  "resnet18_imagenet": (
    ModelConfig(
      arch="resnet",
      num_classes=1000,
      stem_features=64,
      stage_features=(64, 128, 256, 512),
      stage_depth=2,
      imagenet_stem=True,
    ),
    (224, 224, 3),
  ),
  "resnet50_imagenet": (
    ModelConfig(
      arch="resnet_bottleneck",
      num_classes=1000,
      stem_features=64,
      stage_features=(64, 128, 256, 512),
      stage_depth=(3, 4, 6, 3),
      imagenet_stem=True,
    ),
    (224, 224, 3),
  ),
}
"""The realistic networks: name → ``(model config, (H, W, C) of one image)``. VGG-11 is ``stem 64, pool, 128,
pool, 256×2, pool, 512×2, pool, 512×2, pool``; VGG-16 ``stem 64, 64, pool, 128×2, pool, 256×3, pool, 512×3,
pool, 512×3, pool``; ResNet-18 two basic blocks per stage at widths 64–512 (CIFAR: 3×3 stem, no max-pool);
ResNet-50 bottleneck blocks ``3, 4, 6, 3`` at widths 64–512 (outputs 256–2048)."""


def network_config(
  name: str, scheme: str = "dense", width_divisor: int = 1
) -> tuple[ModelConfig, tuple[int, int, int]]:
  """One of :data:`NETWORKS` with ``scheme``, its widths divided by ``width_divisor`` (for fast tests).

  Args:
    name: a key of :data:`NETWORKS`.
    scheme: the scheme of its convs (:data:`experiments.schemes.SCHEMES`).
    width_divisor: divides ``stem_features`` and every ``stage_features`` (at least 4 channels each).

  Returns:
    ``(model config, (H, W, C))``.

  Raises:
    ValueError: naming ``name`` when it is not a network, or ``width_divisor`` when it is not positive.

  Example:
    >>> cfg, shape = network_config("vgg11_cifar", "cp")
    >>> cfg.stage_features, cfg.scheme, shape
    ((128, 256, 512, 512), 'cp', (32, 32, 3))
  """
  if name not in NETWORKS:
    raise ValueError(f"name must be one of {tuple(NETWORKS)}, got {name!r}")
  if width_divisor < 1:
    raise ValueError(f"width_divisor must be a positive int, got {width_divisor!r}")
  cfg, shape = NETWORKS[name]
  narrow = lambda w: max(4, w // width_divisor)  # noqa: E731
  cfg = dataclasses.replace(
    cfg,
    scheme=check_scheme(scheme),
    stem_features=narrow(cfg.stem_features),
    stage_features=tuple(narrow(w) for w in cfg.stage_features),
  )
  return cfg, shape


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
    if cfg.arch == "resnet_bottleneck":
      raise ValueError(
        "cfg.scheme 'wide' merges conv pairs, which a bottleneck block has not; got arch 'resnet_bottleneck'"
      )
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


class BottleneckBlock(nnx.Module):
  """Bottleneck block: dense 1×1, scheme 3×3 (strided), dense 1×1 to ``4·features``, each with BN, plus the input.

  Args:
    cfg: scheme and ranks.
    in_features: input channels.
    features: channels of the 3×3 conv (the block outputs :data:`BOTTLENECK_EXPANSION` times as many).
    strides: stride of the 3×3 conv (and of the projection).
    rngs: parameter initialization.
  """

  def __init__(self, cfg: ModelConfig, in_features: int, features: int, strides: int, *, rngs: nnx.Rngs):
    out = BOTTLENECK_EXPANSION * features
    self.convs = nnx.List(
      [
        ConvBN(nnx.Conv(in_features, features, (1, 1), use_bias=False, rngs=rngs), features, rngs=rngs),
        ConvBN(scheme_conv(cfg.scheme, features, features, strides=strides, cfg=cfg, rngs=rngs), features, rngs=rngs),
        ConvBN(nnx.Conv(features, out, (1, 1), use_bias=False, rngs=rngs), out, rngs=rngs),
      ]
    )
    self.projection = (
      ConvBN(nnx.Conv(in_features, out, (1, 1), strides=strides, use_bias=False, rngs=rngs), out, rngs=rngs)
      if strides != 1 or in_features != out
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
    cfg: the architecture (``cfg.arch`` picks basic or bottleneck blocks; ``cfg.imagenet_stem`` the stem).
    in_features: input channels (1 or 3).
    rngs: parameter initialization.
  """

  def __init__(self, cfg: ModelConfig, in_features: int, *, rngs: nnx.Rngs):
    if cfg.imagenet_stem:
      if factorizes_stem(cfg):
        raise ValueError(f"cfg.imagenet_stem is a dense 7×7 stem, which scheme {cfg.scheme!r} would factorize")
      stem = nnx.Conv(in_features, cfg.stem_features, (7, 7), strides=2, padding=3, use_bias=False, rngs=rngs)
    else:
      stem = stem_conv(cfg, in_features, rngs=rngs)
    self.stem = ConvBN(stem, cfg.stem_features, rngs=rngs)
    self.stem_pool = cfg.imagenet_stem
    num_convs = 1 if cfg.scheme == "wide" else 2
    blocks, width = [], cfg.stem_features
    for s, stage in enumerate(stage_layout(cfg)):
      for b, features in enumerate(stage):
        strides = 2 if s > 0 and b == 0 else 1
        if cfg.arch == "resnet_bottleneck":
          blocks.append(BottleneckBlock(cfg, width, features, strides, rngs=rngs))
          width = BOTTLENECK_EXPANSION * features
        else:
          blocks.append(ResidualBlock(cfg, width, features, strides, num_convs, rngs=rngs))
          width = features
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(width, cfg.num_classes, rngs=rngs)

  def __call__(self, x: Array, train: bool = False) -> Array:
    """``(N, H, W, C)`` images → ``(N, num_classes)`` logits."""
    x = nnx.relu(self.stem(x, train))
    if self.stem_pool:
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
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
    ValueError: naming ``cfg.arch``, ``cfg.scheme``, ``cfg.factorize_stem``, ``cfg.imagenet_stem`` or
      ``input_shape`` when unsupported.
  """
  check_scheme(cfg.scheme)
  if len(input_shape) != 3 or any(int(v) < 1 for v in input_shape):
    raise ValueError(f"input_shape must be (H, W, C) of one image, got {tuple(input_shape)}")
  if cfg.arch == "vgg":
    if cfg.imagenet_stem:
      raise ValueError("cfg.imagenet_stem is the ResNet stem; a VGG has none (got arch 'vgg')")
    return VGG(cfg, int(input_shape[2]), (int(input_shape[0]), int(input_shape[1])), rngs=rngs)
  if cfg.arch in ("resnet", "resnet_bottleneck"):
    return ResNet(cfg, int(input_shape[2]), rngs=rngs)
  raise ValueError(f"cfg.arch must be one of {ARCHS}, got {cfg.arch!r}")
