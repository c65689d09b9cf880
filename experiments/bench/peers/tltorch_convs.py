"""The TensorLy-Torch peer: ``tltorch.FactorizedConv`` holding efficonv's CP and Tucker-2 factors.

CP (``factorized``, ``mobilenet`` and ``reconstructed`` implementations) and Tucker (spatial modes kept
whole, i.e. Tucker-2; ``factorized`` and ``reconstructed``) at efficonv's ranks, NCHW only (its functions
reshape the input to ``(N, C, H·W)``, which copies a ``channels_last`` tensor). TensorLy-Torch's TT
convolution factorizes the kernel differently (no channel modes), so it has no counterpart of efficonv's TT
at the same ranks and is not timed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.bench.cases import Shape
from experiments.bench.peers.base import PeerUnavailableError, Timer, as_numpy, check_no_bias, record, same_pad
from experiments.bench.peers.torch_sequences import import_torch, nchw_input, torch_passes

TLTORCH_CASES: tuple[tuple[str, str], ...] = (
  ("cp", "factorized"),
  ("cp", "mobilenet"),
  ("cp", "reconstructed"),
  ("tucker2", "factorized"),
  ("tucker2", "reconstructed"),
)
"""``(efficonv scheme, tltorch implementation)`` pairs timed for TensorLy-Torch."""


def import_tltorch() -> tuple[Any, Any]:
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
  check_no_bias(layer)
  f = layer.format
  kh, kw = layer.kernel_size
  cin, cout = layer.in_features, layer.out_features
  common = {"order": 2, "padding": same_pad((kh, kw)), "bias": False, "implementation": implementation}
  if scheme == "cp":
    conv = tltorch.FactorizedConv(cin, cout, (kh, kw), rank=f.rank, factorization="cp", **common)
    factors = [as_numpy(f.last).T, as_numpy(f.first), as_numpy(f.vertical), as_numpy(f.horizontal)]
    with torch.no_grad():
      conv.weight.weights.fill_(1.0)
  elif scheme == "tucker2":
    r1, r2 = f.rank
    conv = tltorch.FactorizedConv(cin, cout, (kh, kw), rank=(r2, r1, kh, kw), factorization="tucker", **common)
    factors = [as_numpy(f.last).T, as_numpy(f.first), np.eye(kh, dtype=np.float32), np.eye(kw, dtype=np.float32)]
    with torch.no_grad():
      conv.weight.core.copy_(torch.from_numpy(as_numpy(f.core).transpose(3, 2, 0, 1).copy()))
  else:
    raise ValueError(f"scheme must be 'cp' or 'tucker2' for tltorch, got {scheme!r}")
  with torch.no_grad():
    for i, a in enumerate(factors):
      conv.weight.factors[i].copy_(torch.from_numpy(np.ascontiguousarray(a)))
  return conv


def run_tltorch(shape: Shape, layers: dict[str, Any], timer: Timer, seed: int) -> list[dict[str, Any]]:
  """Records of every :data:`TLTORCH_CASES` pair whose scheme is in ``layers``, both passes."""
  torch = import_torch()
  tltorch, tl = import_tltorch()
  x0 = nchw_input(torch, shape, seed)
  records = []
  with tl.backend_context("pytorch"):
    for scheme, implementation in TLTORCH_CASES:
      if scheme not in layers:
        continue
      module = tltorch_conv(tltorch, torch, scheme, layers[scheme], implementation)
      for pass_name, fn in torch_passes(torch, module, x0, channels_last=False).items():
        records.append(record("tltorch", scheme, implementation, "nchw", shape, pass_name, timer(fn)))
  return records
