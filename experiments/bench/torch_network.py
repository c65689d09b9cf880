"""The PyTorch whole-network peer: a VGG or ResNet of :mod:`experiments.models` rebuilt in ``torch.nn``.

Every conv of the network (dense ``nnx.Conv``/:class:`efficonv.nnx.Conv`, or the ``CPConv``/``TuckerConv``
that :func:`efficonv.compress` put in its place) becomes the plain PyTorch op sequence of
:func:`experiments.bench.peers.torch_sequences.torch_sequence` with the same weights, its strides set on the
sequence's spatial convs; BatchNorm, ReLU, pooling, residual adds and the head follow the model's layout. The
peer runs in eval mode in the ``channels_last`` memory format, under ``torch.no_grad``, on as many threads as
this process may use — the CPU library a user would otherwise run the same network with.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import nnx

from efficonv.nnx import CPConv, TuckerConv
from experiments.bench.peers.base import as_numpy
from experiments.bench.peers.torch_sequences import import_torch, torch_sequence
from experiments.models import VGG, BottleneckBlock, ResidualBlock, ResNet

__all__ = ["import_torch", "torch_conv", "torch_network", "torch_inference"]


def torch_conv(torch: Any, layer: Any) -> Any:
  """A conv layer of the network (dense, CP or Tucker-2; bias-free, odd kernel) as a PyTorch module.

  Raises:
    ValueError: naming ``layer`` when it is another kind of layer.
  """
  strides = tuple(int(s) for s in np.broadcast_to(np.asarray(layer.strides), (2,)))
  if isinstance(layer, nnx.Conv):
    kernel = as_numpy(layer.kernel[...])
    module = torch_sequence(torch, "dense", kernel)
    module.stride = strides
    if isinstance(layer.padding, int):  # the ImageNet stem's explicit padding
      module.padding = (layer.padding, layer.padding)
    return module
  if isinstance(layer, CPConv):
    module = torch_sequence(torch, "cp", layer)
    module[1].stride, module[2].stride = (strides[0], 1), (1, strides[1])
    return module
  if isinstance(layer, TuckerConv):
    module = torch_sequence(torch, "tucker2", layer)
    module[1].stride = strides
    return module
  raise ValueError(f"layer must be an nnx.Conv, CPConv or TuckerConv, got {type(layer).__name__}")


def torch_network(torch: Any, model: VGG | ResNet) -> Any:
  """``model`` (a :class:`~experiments.models.VGG` or :class:`~experiments.models.ResNet`) as an ``nn.Module``.

  The module maps NCHW images to logits; the weights of the convs and of the head are the model's, the
  BatchNorms keep PyTorch's initial statistics (timing does not depend on them).

  Raises:
    ValueError: naming ``model`` when it is neither.
  """
  nn = torch.nn

  def conv_bn(unit: Any) -> Any:
    return nn.Sequential(torch_conv(torch, unit.conv), nn.BatchNorm2d(unit.norm.num_features))

  def linear(head: nnx.Linear) -> Any:
    out = nn.Linear(head.in_features, head.out_features)
    with torch.no_grad():
      out.weight.copy_(torch.from_numpy(as_numpy(head.kernel[...]).T.copy()))
    return out

  class Block(nn.Module):
    def __init__(self, block: ResidualBlock | BottleneckBlock) -> None:
      super().__init__()
      self.convs = nn.ModuleList([conv_bn(c) for c in block.convs])
      self.projection = None if block.projection is None else conv_bn(block.projection)

    def forward(self, x: Any) -> Any:
      shortcut = x if self.projection is None else self.projection(x)
      for i, conv in enumerate(self.convs):
        x = conv(x)
        if i < len(self.convs) - 1:
          x = torch.relu(x)
      return torch.relu(x + shortcut)

  class Network(nn.Module):
    def __init__(self) -> None:
      super().__init__()
      self.stem = conv_bn(model.stem)
      self.head = linear(model.head)
      if isinstance(model, VGG):
        self.layers = nn.ModuleList([conv_bn(layer) for layer in model.layers])
        self.pool_after, self.stem_pool = model.pool_after, model.stem_pool
      else:
        self.blocks = nn.ModuleList([Block(b) for b in model.blocks])
        self.stem_pool = model.stem_pool

    def forward(self, x: Any) -> Any:
      x = torch.relu(self.stem(x))
      if isinstance(model, VGG):
        if self.stem_pool:
          x = torch.nn.functional.max_pool2d(x, 2)
        for i, layer in enumerate(self.layers):
          x = torch.relu(layer(x))
          if i in self.pool_after:
            x = torch.nn.functional.max_pool2d(x, 2)
        return self.head(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))  # NHWC flatten order, as the model
      if self.stem_pool:
        x = torch.nn.functional.max_pool2d(x, 3, stride=2, padding=1)
      for block in self.blocks:
        x = block(x)
      return self.head(x.mean(dim=(2, 3)))

  if not isinstance(model, (VGG, ResNet)):
    raise ValueError(f"model must be an experiments.models VGG or ResNet, got {type(model).__name__}")
  return Network().eval()


def torch_inference(torch: Any, model: VGG | ResNet, x_nhwc: np.ndarray) -> Callable[[], Any]:
  """The call of no arguments running the PyTorch peer of ``model`` on ``x_nhwc`` (channels_last, no grad)."""
  try:
    threads = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    threads = os.cpu_count() or 1
  torch.set_num_threads(threads)
  module = torch_network(torch, model).to(memory_format=torch.channels_last)
  x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).contiguous(
    memory_format=torch.channels_last
  )

  def call() -> Any:
    with torch.no_grad():
      return module(x)

  return call
