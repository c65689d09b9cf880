"""Optional CPU peers of efficonv's layers: PyTorch sequences, TensorLy-Torch and Keras 3 (JAX backend).

Used by :mod:`experiments.bench.layers` (``--peers torch,tltorch,keras``, default all); not a script of its
own. One module per peer, each with its importer, its translation of efficonv's layers and its runner; this
module is the driver (:func:`run`). A quick check of one small shape::

  python -c "from experiments.bench import peers, cases; \\
    print(peers.run([cases.Shape(1, 8, 8, 16, 3)], repeats=3, max_seconds=0.1))"

For each shape it times, forward and forward+backward (gradients of the input and of every weight, from a
fixed cotangent), float32, no biases, all cores, with :func:`experiments.common.timing.time_call`:

* ``torch`` and ``torch_channels_last`` (:mod:`~experiments.bench.peers.torch_sequences`): the plain PyTorch
  sequence of every factorized scheme of :data:`experiments.bench.cases.SCHEMES` that applies to the shape,
  built from efficonv's layer, plus the dense ``Conv2d``; NCHW and ``channels_last``.
* ``tltorch`` (:mod:`~experiments.bench.peers.tltorch_convs`): ``tltorch.FactorizedConv`` with CP and
  Tucker-2 at efficonv's ranks, NCHW only.
* ``keras`` (:mod:`~experiments.bench.peers.keras_separable`): ``keras.layers.SeparableConv2D`` on the JAX
  backend, under ``jax.jit``.

(TensorLy's decompositions, the peer of :mod:`experiments.bench.decompose`, are in
:mod:`~experiments.bench.peers.tensorly_decompositions`.)

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
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from experiments.bench.cases import SCHEMES, Shape
from experiments.bench.peers import keras_separable, tltorch_convs, torch_sequences
from experiments.bench.peers.base import PeerUnavailableError, Timer
from experiments.common.timing import Stats, time_call

PEERS: tuple[str, ...] = ("torch", "tltorch", "keras")
"""Peer groups :func:`run` can time (``torch`` covers both memory formats)."""

_PEER_MODULES: dict[
  str, tuple[Callable[[], Any], Callable[[Shape, dict[str, Any], Timer, int], list[dict[str, Any]]]]
] = {
  "torch": (torch_sequences.import_torch, torch_sequences.run_torch),
  "tltorch": (tltorch_convs.import_tltorch, tltorch_convs.run_tltorch),
  "keras": (keras_separable.import_keras, keras_separable.run_keras),
}
"""Each peer's importer (raises :class:`PeerUnavailableError`) and runner, one module per peer."""


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


def efficonv_layers(shape: Shape, seed: int = 0) -> dict[str, Any]:
  """The ``auto`` (default) efficonv layer of every scheme that applies to ``shape``, by scheme name."""
  from flax import nnx

  rngs = nnx.Rngs(seed)
  return {s.name: s.build(shape, rngs) for s in SCHEMES if s.applies(shape)}


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
      _PEER_MODULES[peer][0]()
      available.append(peer)
    except PeerUnavailableError as e:
      note = f"{peer} peers skipped: {e}"
      print(note)
      notes.append(note)
  if not available:
    return records, notes

  def timer(fn: Callable[[], Any]) -> Stats:
    return time_call(fn, repeats=repeats, warmup=2, max_seconds=max_seconds, min_repeats=3, slow_seconds=slow_seconds)

  with _torch_threads():
    if {"torch", "tltorch"} & set(available):
      torch = sys.modules["torch"]
      notes.append(f"PyTorch {torch.__version__}: {torch.get_num_threads()} threads, float32, no bias")
    for shape in shapes:
      layers = efficonv_layers(shape, seed)
      for peer in available:
        records.extend(_PEER_MODULES[peer][1](shape, layers, timer, seed))
  v = versions(available)
  notes.append("versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
  if "tltorch" in available:
    notes.append("tltorch: NCHW only (it reshapes inputs to (N, C, H·W)); its TT conv has no counterpart of efficonv's")
  if "keras" in available:
    notes.append("keras: SeparableConv2D on the JAX backend, stateless_call under jax.jit, channels last")
  add_speedups(records)
  return records, notes
