"""The PyTorch peer: efficonv's op sequence of every scheme as plain ``torch.nn`` modules, NCHW and channels-last.

Each factorized scheme of :data:`experiments.bench.cases.SCHEMES` that applies to a shape is rebuilt in
PyTorch *from* efficonv's layer (same weights, same op sequence, see :func:`torch_sequence`), plus the dense
``Conv2d``, and timed in the default (NCHW) and the ``channels_last`` memory format (peers ``torch`` and
``torch_channels_last``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from experiments.bench.cases import SCHEMES, Shape
from experiments.bench.peers.base import PeerUnavailableError, Timer, as_numpy, check_no_bias, record, relu, same_pad


def import_torch() -> Any:
  """The ``torch`` module, or :class:`PeerUnavailableError` saying why not."""
  try:
    import torch
  except ImportError as e:
    raise PeerUnavailableError(f"torch is not importable ({e})") from e
  return torch


def conv2d(torch: Any, weight: np.ndarray, padding: tuple[int, int] = (0, 0), groups: int = 1) -> Any:
  """A bias-free ``nn.Conv2d`` holding ``weight`` (OIHW)."""
  out, in_per_group, kh, kw = weight.shape
  conv = torch.nn.Conv2d(in_per_group * groups, out, (kh, kw), padding=padding, groups=groups, bias=False)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(as_numpy(weight)))
  return conv


def pointwise(torch: Any, matrix: Any) -> Any:
  """A 1×1 conv from an efficonv ``(C_in, C_out)`` matrix."""
  return conv2d(torch, as_numpy(matrix).T[:, :, None, None])


def tt_module(torch: Any, layer: Any) -> Any:
  """Depthwise conv with the shared spatial core (multiplier ``r_0``), then one einsum per channel core."""
  fmt = layer.format
  spatial, cores = as_numpy(fmt.spatial), [as_numpy(c) for c in fmt.cores]
  in_modes = [c.shape[1] for c in cores]
  pad = same_pad(layer.kernel_size)
  letters = iter("abcdefgijklmopqrstuvxyz")  # n, h, w name the batch and spatial axes
  c_idx = [next(letters) for _ in in_modes]
  s_idx = [next(letters) for _ in in_modes]
  r_idx = [next(letters) for _ in range(len(in_modes) + 1)]
  # (lhs channels, core, out channels) of each contraction; spatial axes are placed per layout.
  steps = [
    (
      "".join(c_idx[k:]) + "".join(s_idx[:k]) + r_idx[k],
      r_idx[k] + c_idx[k] + s_idx[k] + r_idx[k + 1],
      "".join(c_idx[k + 1 :]) + "".join(s_idx[: k + 1]) + r_idx[k + 1],
    )
    for k in range(len(cores))
  ]
  nn = torch.nn

  class TTSequence(nn.Module):
    """efficonv's TT op sequence in PyTorch (see :func:`efficonv.kernels.tt_conv`)."""

    def __init__(self) -> None:
      super().__init__()
      self.spatial = nn.Parameter(torch.from_numpy(spatial.transpose(2, 0, 1).copy()))  # (r0, kh, kw)
      self.cores = nn.ParameterList([nn.Parameter(torch.from_numpy(c)) for c in cores])

    def forward(self, x: Any) -> Any:
      n, cin = x.shape[0], x.shape[1]
      r0, kh, kw = self.spatial.shape
      weight = self.spatial[None].expand(cin, r0, kh, kw).reshape(cin * r0, 1, kh, kw)
      y = torch.nn.functional.conv2d(x, weight, padding=pad, groups=cin)
      ho, wo = y.shape[2], y.shape[3]
      if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        t = y.permute(0, 2, 3, 1).reshape(n, ho, wo, *in_modes, r0)
        for (lhs, rhs, out), core in zip(steps, self.cores):
          t = torch.einsum(f"nhw{lhs},{rhs}->nhw{out}", t, core)
        return t.reshape(n, ho, wo, -1).permute(0, 3, 1, 2)
      t = y.reshape(n, *in_modes, r0, ho, wo)
      for (lhs, rhs, out), core in zip(steps, self.cores):
        t = torch.einsum(f"n{lhs}hw,{rhs}->n{out}hw", t, core)
      return t.reshape(n, -1, ho, wo)

  return TTSequence()


def torch_sequence(torch: Any, scheme: str, source: Any) -> Any:
  """The plain PyTorch module computing what efficonv's layer computes, with its weights.

  Args:
    torch: the imported ``torch`` module.
    scheme: a scheme name of :data:`experiments.bench.cases.SCHEMES`, or
      ``"dense"``.
    source: the efficonv layer of that scheme (built with ``use_bias=False``,
      ``SAME`` padding, stride 1, odd kernel), or for ``"dense"`` an HWIO kernel.

  Returns:
    An ``nn.Module`` mapping NCHW inputs to the layer's outputs (NCHW):
    ``dense`` one ``Conv2d``; ``cp`` 1×1 → ``(k,1)`` and ``(1,k)`` with
    ``groups=R`` → 1×1; ``tucker2`` 1×1 → ``k×k`` → 1×1; ``tt`` depthwise
    conv (multiplier ``r_0``) then one ``einsum`` per channel core;
    ``spatial`` ``(k,1)`` ``C→K`` then ``(1,k)`` ``K→C``; ``separable_m*``
    ``groups=C`` conv ``C→m·C`` then 1×1; ``bottleneck`` 1×1 → ReLU → ``k×k``
    → ReLU → 1×1; ``stacked`` the small convs with ReLU between, the first
    padded for the whole ``k×k`` field and the others unpadded (as efficonv
    does, which is exactly the ``k×k`` conv's geometry).

  Raises:
    ValueError: naming ``scheme`` when unknown, or ``layer`` when it has a bias
      or an activation other than ReLU.
  """
  nn = torch.nn
  if scheme == "dense":
    kernel = as_numpy(source)
    return conv2d(torch, kernel.transpose(3, 2, 0, 1), same_pad(kernel.shape[:2]))
  layer = source
  check_no_bias(layer)
  if scheme == "cp":
    f = layer.format
    ph, pw = same_pad(layer.kernel_size)
    r = f.rank
    return nn.Sequential(
      pointwise(torch, f.first),
      conv2d(torch, as_numpy(f.vertical).T[:, None, :, None], (ph, 0), groups=r),
      conv2d(torch, as_numpy(f.horizontal).T[:, None, None, :], (0, pw), groups=r),
      pointwise(torch, f.last),
    )
  if scheme in ("tucker2", "bottleneck"):
    f = layer.format if scheme == "tucker2" else layer.factors
    core = conv2d(torch, as_numpy(f.core).transpose(3, 2, 0, 1), same_pad(layer.kernel_size))
    if scheme == "tucker2":
      return nn.Sequential(pointwise(torch, f.first), core, pointwise(torch, f.last))
    if layer.activation is not relu():
      raise ValueError(f"layer must use the ReLU activation for the bottleneck peer, got {layer.activation}")
    return nn.Sequential(pointwise(torch, f.first), nn.ReLU(), core, nn.ReLU(), pointwise(torch, f.last))
  if scheme == "tt":
    return tt_module(torch, layer)
  if scheme == "spatial":
    f = layer.format
    ph, pw = same_pad(layer.kernel_size)
    return nn.Sequential(
      conv2d(torch, as_numpy(f.vertical).transpose(2, 1, 0)[:, :, :, None], (ph, 0)),
      conv2d(torch, as_numpy(f.horizontal).transpose(2, 1, 0)[:, :, None, :], (0, pw)),
    )
  if scheme.startswith("separable"):
    f = layer.format
    dw = as_numpy(f.depthwise)
    kh, kw, c, m = dw.shape
    return nn.Sequential(
      conv2d(torch, dw.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw), same_pad((kh, kw)), groups=c),
      pointwise(torch, f.pointwise),
    )
  if scheme == "stacked":
    if layer.activation not in (None, relu()):
      raise ValueError(f"layer must use the ReLU activation (or none) for the stacked peer, got {layer.activation}")
    mods: list[Any] = []
    for i, k in enumerate(layer.kernels):
      if i:
        mods.append(nn.ReLU() if layer.activation is not None else nn.Identity())
      pad = same_pad(layer.kernel_size) if i == 0 else (0, 0)
      mods.append(conv2d(torch, as_numpy(k[...]).transpose(3, 2, 0, 1), pad))
    return nn.Sequential(*mods)
  raise ValueError(f"scheme must be 'dense' or one of {[s.name for s in SCHEMES]}, got {scheme!r}")


def torch_passes(torch: Any, module: Any, x0: Any, channels_last: bool) -> dict[str, Callable[[], Any]]:
  """The forward and forward+backward calls of ``module`` on ``x0`` (in the chosen memory format)."""
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  m = module.to(memory_format=fmt)
  x = x0.contiguous(memory_format=fmt)
  with torch.no_grad():
    cot = torch.from_numpy(np.random.default_rng(1).standard_normal(tuple(m(x).shape), np.float32))
  cot = cot.contiguous(memory_format=fmt)
  xg = x.clone().requires_grad_(True)

  def forward() -> Any:
    with torch.no_grad():
      return m(x)

  def forward_backward() -> Any:
    m.zero_grad(set_to_none=True)
    xg.grad = None
    m(xg).backward(cot)
    return xg.grad

  return {"forward": forward, "forward_backward": forward_backward}


def nchw_input(torch: Any, shape: Shape, seed: int) -> Any:
  """The NHWC input efficonv gets for ``shape`` and ``seed``, as an NCHW tensor."""
  x = np.random.default_rng(seed).standard_normal(shape.input_shape, np.float32)  # NHWC, as efficonv's
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def run_torch(shape: Shape, layers: dict[str, Any], timer: Timer, seed: int) -> list[dict[str, Any]]:
  """Records of the dense conv and of every scheme in ``layers``, both memory formats, both passes."""
  torch = import_torch()
  x0 = nchw_input(torch, shape, seed)
  kernel = np.random.default_rng(seed + 1).standard_normal((shape.k, shape.k, shape.c, shape.c), np.float32)
  kernel /= np.sqrt(shape.k * shape.k * shape.c)
  modules = {"dense": torch_sequence(torch, "dense", kernel)}
  modules.update({name: torch_sequence(torch, name, layer) for name, layer in layers.items()})
  records = []
  for scheme, module in modules.items():
    for peer, channels_last in (("torch", False), ("torch_channels_last", True)):
      layout = "channels_last" if channels_last else "nchw"
      for pass_name, fn in torch_passes(torch, module, x0, channels_last).items():
        records.append(record(peer, scheme, "sequence", layout, shape, pass_name, timer(fn)))
  return records
