"""Optional CPU peers of efficonv's layers: PyTorch sequences, TensorLy-Torch and Keras 3 (JAX backend).

Used by :mod:`experiments.bench.layers` (``--peers torch,tltorch,keras``,
default all); not a script of its own. A quick check of one small shape::

  python -c "from experiments import peers, bench_cases as b; \\
    print(peers.run([b.Shape(1, 8, 8, 16, 3)], repeats=3, max_seconds=0.1))"

For each shape it times, forward and forward+backward (gradients of the
input and of every weight, from a fixed cotangent), float32, no biases,
all cores:

* ``torch`` and ``torch_channels_last``: the plain PyTorch sequence of
  every factorized scheme of :data:`experiments.bench.cases.SCHEMES` that
  applies to the shape, with the ranks of efficonv's layer (the sequence is
  built *from* that layer, see :func:`torch_sequence`), plus the dense
  ``Conv2d``; in the default (NCHW) and the ``channels_last`` memory format.
* ``tltorch``: ``tltorch.FactorizedConv`` with CP (``factorized``,
  ``mobilenet`` and ``reconstructed`` implementations) and Tucker (spatial
  modes kept whole, i.e. Tucker-2; ``factorized`` and ``reconstructed``) at
  efficonv's ranks, NCHW only (its functions reshape the input to
  ``(N, C, H·W)``, which copies a ``channels_last`` tensor). TensorLy-Torch's
  TT convolution factorizes the kernel differently (no channel modes), so it
  has no counterpart of efficonv's TT at the same ranks and is not timed.
* ``keras``: ``keras.layers.SeparableConv2D`` (depth multipliers 1 and 4,
  channels last) on the JAX backend, called through ``stateless_call`` under
  ``jax.jit`` (forward, and ``jax.vjp`` for forward+backward, exactly as
  efficonv's layers are timed).

Every peer is optional: when its module cannot be imported, it contributes no
records and a note with the reason (printed too).

Each record has ``peer`` (``torch``, ``torch_channels_last``, ``tltorch``,
``keras_jax``), ``scheme`` (a scheme name of
:mod:`experiments.bench.cases`, or ``"dense"``), ``implementation``,
``layout``, ``shape_label``, ``pass``, the timing statistics and
``speedup_vs_torch_dense`` (the PyTorch dense conv in the same memory layout,
``None`` when PyTorch was not timed).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from experiments.bench.cases import SCHEMES, Shape
from experiments.common.timing import Stats, summarize

PEERS: tuple[str, ...] = ("torch", "tltorch", "keras")
"""Peer groups :func:`run` can time (``torch`` covers both memory formats)."""

TLTORCH_CASES: tuple[tuple[str, str], ...] = (
  ("cp", "factorized"),
  ("cp", "mobilenet"),
  ("cp", "reconstructed"),
  ("tucker2", "factorized"),
  ("tucker2", "reconstructed"),
)
"""``(efficonv scheme, tltorch implementation)`` pairs timed for TensorLy-Torch."""

KERAS_SCHEMES: tuple[str, ...] = ("separable_m1", "separable_m4")
"""efficonv schemes timed against ``keras.layers.SeparableConv2D``."""


class PeerUnavailableError(Exception):
  """A peer cannot run here (module missing, wrong Keras backend); the message says why."""


def parse_peers(text: str) -> tuple[str, ...]:
  """Parses a comma-separated peer list (``"all"``/``""`` for all, ``"none"`` for none).

  Args:
    text: e.g. ``"torch,keras"``.

  Returns:
    The peer names in :data:`PEERS` order.

  Raises:
    ValueError: naming ``peers`` and the valid names when one is unknown.
  """
  names = [n.strip() for n in text.split(",") if n.strip()]
  if not names or names == ["all"]:
    return PEERS
  if names == ["none"]:
    return ()
  unknown = [n for n in names if n not in PEERS]
  if unknown:
    raise ValueError(f"peers must be 'all', 'none' or a comma-separated subset of {list(PEERS)}, got {unknown}")
  return tuple(p for p in PEERS if p in names)


def _time(
  fn: Callable[[], Any], repeats: int, max_seconds: float, warmup: int = 2, slow_seconds: float | None = None
) -> Stats:
  """Times ``fn()``: ``warmup`` untimed calls, then up to ``repeats`` timed ones within ``max_seconds``.

  Args:
    fn: the call to time (it must block until its result is ready).
    repeats: most timed calls (at least 3 unless slow).
    max_seconds: timing budget; slower calls get fewer repeats (at least 3).
    warmup: untimed calls first (at least 1).
    slow_seconds: when the first call takes longer, ``fn`` is timed once more only.

  Returns:
    The statistics of the timed calls.
  """
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  if slow_seconds is not None and first > slow_seconds:
    start = time.perf_counter()
    fn()
    return summarize([time.perf_counter() - start])
  for _ in range(max(0, warmup - 1)):
    fn()
  start = time.perf_counter()
  fn()
  per_call = time.perf_counter() - start
  n = max(3, min(repeats, int(max_seconds / max(per_call, 1e-9))))
  times = []
  for _ in range(n):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return summarize(times)


def _np(a: Any) -> np.ndarray:
  """A writable, C-contiguous float32 copy (``torch.from_numpy`` warns on JAX's read-only buffers)."""
  return np.array(a, dtype=np.float32, order="C", copy=True)


def _same_pad(kernel_size: tuple[int, int]) -> tuple[int, int]:
  """``SAME`` padding of an odd kernel at stride 1 (what every benchmarked layer uses)."""
  kh, kw = kernel_size
  if kh % 2 == 0 or kw % 2 == 0:
    raise ValueError(f"kernel_size must be odd for symmetric SAME padding, got {kernel_size}")
  return kh // 2, kw // 2


def _conv(torch: Any, weight: np.ndarray, padding: tuple[int, int] = (0, 0), groups: int = 1) -> Any:
  """A bias-free ``nn.Conv2d`` holding ``weight`` (OIHW)."""
  out, in_per_group, kh, kw = weight.shape
  conv = torch.nn.Conv2d(in_per_group * groups, out, (kh, kw), padding=padding, groups=groups, bias=False)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(_np(weight)))
  return conv


def _pointwise(torch: Any, matrix: Any) -> Any:
  """A 1×1 conv from an efficonv ``(C_in, C_out)`` matrix."""
  return _conv(torch, _np(matrix).T[:, :, None, None])


def _check_no_bias(layer: Any) -> None:
  for name in ("bias", "first_bias", "core_bias"):
    if getattr(layer, name, None) is not None:
      raise ValueError(f"layer must be built with use_bias=False (the peers have no biases), got a {name}")


def _tt_module(torch: Any, layer: Any) -> Any:
  """Depthwise conv with the shared spatial core (multiplier ``r_0``), then one einsum per channel core."""
  fmt = layer.format
  spatial, cores = _np(fmt.spatial), [_np(c) for c in fmt.cores]
  in_modes = [c.shape[1] for c in cores]
  pad = _same_pad(layer.kernel_size)
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
    kernel = _np(source)
    return _conv(torch, kernel.transpose(3, 2, 0, 1), _same_pad(kernel.shape[:2]))
  layer = source
  _check_no_bias(layer)
  if scheme == "cp":
    f = layer.format
    ph, pw = _same_pad(layer.kernel_size)
    r = f.rank
    return nn.Sequential(
      _pointwise(torch, f.first),
      _conv(torch, _np(f.vertical).T[:, None, :, None], (ph, 0), groups=r),
      _conv(torch, _np(f.horizontal).T[:, None, None, :], (0, pw), groups=r),
      _pointwise(torch, f.last),
    )
  if scheme in ("tucker2", "bottleneck"):
    f = layer.format
    core = _conv(torch, _np(f.core).transpose(3, 2, 0, 1), _same_pad(layer.kernel_size))
    if scheme == "tucker2":
      return nn.Sequential(_pointwise(torch, f.first), core, _pointwise(torch, f.last))
    if layer.activation is not _relu():
      raise ValueError(f"layer must use the ReLU activation for the bottleneck peer, got {layer.activation}")
    return nn.Sequential(_pointwise(torch, f.first), nn.ReLU(), core, nn.ReLU(), _pointwise(torch, f.last))
  if scheme == "tt":
    return _tt_module(torch, layer)
  if scheme == "spatial":
    f = layer.format
    ph, pw = _same_pad(layer.kernel_size)
    return nn.Sequential(
      _conv(torch, _np(f.vertical).transpose(2, 1, 0)[:, :, :, None], (ph, 0)),
      _conv(torch, _np(f.horizontal).transpose(2, 1, 0)[:, :, None, :], (0, pw)),
    )
  if scheme.startswith("separable"):
    f = layer.format
    dw = _np(f.depthwise)
    kh, kw, c, m = dw.shape
    return nn.Sequential(
      _conv(torch, dw.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw), _same_pad((kh, kw)), groups=c),
      _pointwise(torch, f.pointwise),
    )
  if scheme == "stacked":
    if layer.activation not in (None, _relu()):
      raise ValueError(f"layer must use the ReLU activation (or none) for the stacked peer, got {layer.activation}")
    mods: list[Any] = []
    for i, k in enumerate(layer.kernels):
      if i:
        mods.append(nn.ReLU() if layer.activation is not None else nn.Identity())
      pad = _same_pad(layer.kernel_size) if i == 0 else (0, 0)
      mods.append(_conv(torch, _np(k[...]).transpose(3, 2, 0, 1), pad))
    return nn.Sequential(*mods)
  raise ValueError(f"scheme must be 'dense' or one of {[s.name for s in SCHEMES]}, got {scheme!r}")


def _relu() -> Any:
  from flax import nnx

  return nnx.relu


def tltorch_conv(tltorch: Any, torch: Any, scheme: str, layer: Any, implementation: str) -> Any:
  """``tltorch.FactorizedConv`` holding efficonv ``layer``'s factors.

  Args:
    tltorch: the imported ``tltorch`` module (call with TensorLy's PyTorch backend active).
    torch: the imported ``torch`` module.
    scheme: ``"cp"`` (``CPTensor``: weights 1, factors ``(last^T, first,
      vertical, horizontal)``) or ``"tucker2"`` (``TuckerTensor`` of rank
      ``(R2, R1, kh, kw)``: core ``(R2, R1, kh, kw)``, factors ``(last^T, first,
      I, I)``).
    layer: the efficonv layer (no bias).
    implementation: tltorch's ``"factorized"``, ``"reconstructed"`` or (CP) ``"mobilenet"``.

  Returns:
    The module (NCHW in and out).

  Raises:
    ValueError: naming ``scheme`` when not ``"cp"``/``"tucker2"``.
  """
  _check_no_bias(layer)
  f = layer.format
  kh, kw = layer.kernel_size
  cin, cout = layer.in_features, layer.out_features
  common = {"order": 2, "padding": _same_pad((kh, kw)), "bias": False, "implementation": implementation}
  if scheme == "cp":
    conv = tltorch.FactorizedConv(cin, cout, (kh, kw), rank=f.rank, factorization="cp", **common)
    factors = [_np(f.last).T, _np(f.first), _np(f.vertical), _np(f.horizontal)]
    with torch.no_grad():
      conv.weight.weights.fill_(1.0)
  elif scheme == "tucker2":
    r1, r2 = f.rank
    conv = tltorch.FactorizedConv(cin, cout, (kh, kw), rank=(r2, r1, kh, kw), factorization="tucker", **common)
    factors = [_np(f.last).T, _np(f.first), np.eye(kh, dtype=np.float32), np.eye(kw, dtype=np.float32)]
    with torch.no_grad():
      conv.weight.core.copy_(torch.from_numpy(_np(f.core).transpose(3, 2, 0, 1).copy()))
  else:
    raise ValueError(f"scheme must be 'cp' or 'tucker2' for tltorch, got {scheme!r}")
  with torch.no_grad():
    for i, a in enumerate(factors):
      conv.weight.factors[i].copy_(torch.from_numpy(np.ascontiguousarray(a)))
  return conv


def keras_separable(keras: Any, layer: Any, input_shape: Sequence[int]) -> Any:
  """A built ``keras.layers.SeparableConv2D`` (channels last, no bias) holding efficonv ``layer``'s factors.

  Args:
    keras: the imported ``keras`` module (JAX backend).
    layer: an efficonv :class:`~efficonv.nnx.SeparableConv` (no bias).
    input_shape: NHWC.

  Returns:
    The Keras layer.
  """
  _check_no_bias(layer)
  f = layer.format
  dw = _np(f.depthwise)
  k = keras.layers.SeparableConv2D(
    layer.out_features,
    tuple(layer.kernel_size),
    padding="same",
    depth_multiplier=dw.shape[3],
    use_bias=False,
    data_format="channels_last",
  )
  k.build(tuple(input_shape))
  k.depthwise_kernel.assign(dw)
  k.pointwise_kernel.assign(_np(f.pointwise)[None, None])
  return k


def _import_torch() -> Any:
  try:
    import torch
  except ImportError as e:
    raise PeerUnavailableError(f"torch is not importable ({e})") from e
  return torch


def _import_tltorch() -> tuple[Any, Any]:
  """``(tltorch, tensorly)``; TensorLy's backend is left as it was (importing tltorch sets it to PyTorch)."""
  try:
    import tensorly as tl
  except ImportError as e:
    raise PeerUnavailableError(f"tensorly is not importable ({e})") from e
  previous = tl.get_backend()
  try:
    import tltorch
  except ImportError as e:
    raise PeerUnavailableError(f"tltorch is not importable ({e})") from e
  finally:
    tl.set_backend(previous)
  return tltorch, tl


def _import_keras() -> Any:
  """Keras on the JAX backend.

  Raises:
    PeerUnavailableError: when Keras is not importable, or was imported before with another backend.
  """
  already = sys.modules.get("keras")
  if already is not None:
    backend = already.backend.backend()
    if backend != "jax":
      raise PeerUnavailableError(f"keras was already imported with the {backend!r} backend (the JAX backend is needed)")
    return already
  previous = os.environ.get("KERAS_BACKEND")
  os.environ["KERAS_BACKEND"] = "jax"
  try:
    import keras
  except ImportError as e:
    raise PeerUnavailableError(f"keras is not importable ({e})") from e
  finally:
    if previous is None:
      os.environ.pop("KERAS_BACKEND", None)
    else:
      os.environ["KERAS_BACKEND"] = previous
  if keras.backend.backend() != "jax":
    raise PeerUnavailableError(f"keras runs the {keras.backend.backend()!r} backend (the JAX backend is needed)")
  return keras


def efficonv_layers(shape: Shape, seed: int = 0) -> dict[str, Any]:
  """The ``auto`` (default) efficonv layer of every scheme that applies to ``shape``, by scheme name."""
  from flax import nnx

  rngs = nnx.Rngs(seed)
  return {s.name: s.build(shape, rngs) for s in SCHEMES if s.applies(shape)}


def _torch_passes(torch: Any, module: Any, x0: Any, channels_last: bool) -> dict[str, Callable[[], Any]]:
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


def _record(peer: str, scheme: str, implementation: str, layout: str, shape: Shape, pass_name: str, s: Stats) -> dict:
  return {
    "variant": "/".join((peer, scheme) + ((implementation,) if implementation != "sequence" else ())),
    "peer": peer,
    "scheme": scheme,
    "implementation": implementation,
    "layout": layout,
    "shape_label": shape.label,
    "pass": pass_name,
    **s.as_dict(),
  }


def _nchw_input(torch: Any, shape: Shape, seed: int) -> Any:
  x = np.random.default_rng(seed).standard_normal(shape.input_shape, np.float32)  # NHWC, as efficonv's
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _run_torch(shape: Shape, layers: dict[str, Any], timer: Callable[[Callable[[], Any]], Stats], seed: int) -> list:
  torch = _import_torch()
  x0 = _nchw_input(torch, shape, seed)
  kernel = np.random.default_rng(seed + 1).standard_normal((shape.k, shape.k, shape.c, shape.c), np.float32)
  kernel /= np.sqrt(shape.k * shape.k * shape.c)
  modules = {"dense": torch_sequence(torch, "dense", kernel)}
  modules.update({name: torch_sequence(torch, name, layer) for name, layer in layers.items()})
  records = []
  for scheme, module in modules.items():
    for peer, channels_last in (("torch", False), ("torch_channels_last", True)):
      layout = "channels_last" if channels_last else "nchw"
      for pass_name, fn in _torch_passes(torch, module, x0, channels_last).items():
        records.append(_record(peer, scheme, "sequence", layout, shape, pass_name, timer(fn)))
  return records


def _run_tltorch(shape: Shape, layers: dict[str, Any], timer: Callable[[Callable[[], Any]], Stats], seed: int) -> list:
  torch = _import_torch()
  tltorch, tl = _import_tltorch()
  x0 = _nchw_input(torch, shape, seed)
  records = []
  with tl.backend_context("pytorch"):
    for scheme, implementation in TLTORCH_CASES:
      if scheme not in layers:
        continue
      module = tltorch_conv(tltorch, torch, scheme, layers[scheme], implementation)
      for pass_name, fn in _torch_passes(torch, module, x0, channels_last=False).items():
        records.append(_record("tltorch", scheme, implementation, "nchw", shape, pass_name, timer(fn)))
  return records


def _run_keras(shape: Shape, layers: dict[str, Any], timer: Callable[[Callable[[], Any]], Stats], seed: int) -> list:
  keras = _import_keras()
  import jax
  import jax.numpy as jnp

  from experiments.bench.dense_baselines import PASSES, pass_args, with_pass
  from experiments.common.timing import compile_fn

  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(shape.input_shape, np.float32))
  cot = jnp.asarray(np.random.default_rng(1).standard_normal(shape.input_shape, np.float32))
  records = []
  for scheme in KERAS_SCHEMES:
    if scheme not in layers:
      continue
    k = keras_separable(keras, layers[scheme], shape.input_shape)
    trainable = [v.value for v in k.trainable_variables]
    frozen = [v.value for v in k.non_trainable_variables]

    def fn(x: Any, params: list[Any], k: Any = k, frozen: list[Any] = frozen) -> Any:
      return k.stateless_call(params, frozen, x)[0]

    for pass_name in PASSES:
      args = pass_args(x, trainable, pass_name, cot)
      compiled = compile_fn(with_pass(fn, pass_name), args)

      def call(compiled: Any = compiled, args: tuple[Any, ...] = args) -> Any:
        return jax.block_until_ready(compiled(*args))

      records.append(_record("keras_jax", scheme, "sequence", "nhwc", shape, pass_name, timer(call)))
  return records


_RUNNERS: dict[str, Callable[..., list]] = {"torch": _run_torch, "tltorch": _run_tltorch, "keras": _run_keras}


def versions(peers: Sequence[str] = PEERS) -> dict[str, str]:
  """Versions of the importable peer libraries (without importing a missing one twice)."""
  out = {}
  for name, mod in (("torch", "torch"), ("tltorch", "tltorch"), ("tensorly", "tensorly"), ("keras", "keras")):
    if (name in peers or (name == "tensorly" and "tltorch" in peers)) and sys.modules.get(mod) is not None:
      out[name] = str(getattr(sys.modules[mod], "__version__", "?"))
  return out


def add_speedups(records: list[dict[str, Any]]) -> None:
  """Sets ``speedup_vs_torch_dense``: PyTorch's dense conv in the same memory layout / the record's median.

  NCHW records use ``torch/dense``; ``channels_last`` and NHWC (Keras) ones
  ``torch_channels_last/dense``; ``None`` when that record is missing.
  """
  dense = {
    (r["peer"], r["shape_label"], r["pass"]): r["median_ms"]
    for r in records
    if r["scheme"] == "dense" and r["peer"] in ("torch", "torch_channels_last")
  }
  for r in records:
    ref = "torch" if r["layout"] == "nchw" else "torch_channels_last"
    ms = dense.get((ref, r["shape_label"], r["pass"]))
    r["speedup_vs_torch_dense"] = ms / r["median_ms"] if ms is not None else None


@contextlib.contextmanager
def _torch_threads() -> Iterator[None]:
  torch = sys.modules.get("torch")
  if torch is None:
    yield
    return
  previous = torch.get_num_threads()
  torch.set_num_threads(os.cpu_count() or 1)
  try:
    yield
  finally:
    torch.set_num_threads(previous)


def run(
  shapes: Sequence[Shape],
  *,
  repeats: int,
  max_seconds: float,
  peers: Sequence[str] = PEERS,
  slow_seconds: float | None = None,
  seed: int = 0,
) -> tuple[list[dict[str, Any]], list[str]]:
  """Times the peers on ``shapes``.

  Args:
    shapes: the benchmarked shapes.
    repeats: most timed calls per function.
    max_seconds: timing budget per function (at least 3 calls).
    peers: which of :data:`PEERS` to run.
    slow_seconds: a function whose first call takes longer is timed once more only.
    seed: seeds the inputs and efficonv's layers (whose weights the peers copy).

  Returns:
    ``(records, notes)``: one record per (peer, scheme, implementation,
    layout, shape, pass); the notes give the versions and threads, and for a
    peer that cannot run, the reason (that peer then has no records).

  Raises:
    ValueError: naming ``peers`` when one is not in :data:`PEERS`.
  """
  unknown = [p for p in peers if p not in PEERS]
  if unknown:
    raise ValueError(f"peers must be a subset of {list(PEERS)}, got {unknown}")
  records: list[dict[str, Any]] = []
  notes: list[str] = []
  available = []
  for peer in peers:
    try:
      {"torch": _import_torch, "tltorch": _import_tltorch, "keras": _import_keras}[peer]()
      available.append(peer)
    except PeerUnavailableError as e:
      note = f"{peer} peers skipped: {e}"
      print(note)
      notes.append(note)
  if not available:
    return records, notes

  def timer(fn: Callable[[], Any]) -> Stats:
    return _time(fn, repeats, max_seconds, slow_seconds=slow_seconds)

  with _torch_threads():
    if {"torch", "tltorch"} & set(available):
      torch = sys.modules["torch"]
      notes.append(f"PyTorch {torch.__version__}: {torch.get_num_threads()} threads, float32, no bias")
    for shape in shapes:
      layers = efficonv_layers(shape, seed)
      for peer in available:
        records.extend(_RUNNERS[peer](shape, layers, timer, seed))
  v = versions(available)
  notes.append("versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
  if "tltorch" in available:
    notes.append("tltorch: NCHW only (it reshapes inputs to (N, C, H·W)); its TT conv has no counterpart of efficonv's")
  if "keras" in available:
    notes.append("keras: SeparableConv2D on the JAX backend, stateless_call under jax.jit, channels last")
  add_speedups(records)
  return records, notes
