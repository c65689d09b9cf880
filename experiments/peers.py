"""Optional PyTorch CPU peers of the JAX layers (skipped when PyTorch is not importable).

Times, per shape, forward and forward+backward (gradients of input and
weights) of: the dense ``Conv2d``; depthwise-separable (``groups=C`` then
1×1); and the CP sequence (1×1 → ``(k,1)`` and ``(1,k)`` with ``groups=R`` →
1×1, ``R = C/4``), each in the default (NCHW) and ``channels_last`` memory
formats. No biases, float32, all cores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from experiments.bench_cases import Shape
from experiments.timing import summarize


def _time(fn: Callable[[], Any], repeats: int, max_seconds: float, warmup: int = 2) -> Any:
  for _ in range(warmup):
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


def _modules(torch: Any, shape: Shape) -> dict[str, Any]:
  nn = torch.nn
  c, k, r = shape.c, shape.k, shape.c // 4
  pad = k // 2
  return {
    "torch_dense": nn.Conv2d(c, c, k, padding=pad, bias=False),
    "torch_separable": nn.Sequential(
      nn.Conv2d(c, c, k, padding=pad, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False)
    ),
    "torch_cp": nn.Sequential(
      nn.Conv2d(c, r, 1, bias=False),
      nn.Conv2d(r, r, (k, 1), padding=(pad, 0), groups=r, bias=False),
      nn.Conv2d(r, r, (1, k), padding=(0, pad), groups=r, bias=False),
      nn.Conv2d(r, c, 1, bias=False),
    ),
  }


def run(shapes: Sequence[Shape], *, repeats: int, max_seconds: float) -> tuple[list[dict[str, Any]], list[str]]:
  """Times the PyTorch peers on ``shapes``.

  Returns:
    ``(records, notes)``; no records and the reason in ``notes`` when PyTorch
    cannot be imported.
  """
  try:
    import torch
  except ImportError as e:
    note = f"PyTorch peers skipped: torch is not importable ({e})"
    print(note)
    return [], [note]
  torch.set_num_threads(os.cpu_count() or 1)
  notes = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, no bias"]
  records = []
  for shape in shapes:
    x0 = torch.from_numpy(np.random.default_rng(0).standard_normal((shape.n, shape.c, shape.h, shape.w), np.float32))
    for name, module in _modules(torch, shape).items():
      for layout in ("nchw", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        m = module.to(memory_format=fmt)
        x = x0.contiguous(memory_format=fmt)

        def forward(m: Any = m, x: Any = x) -> Any:
          with torch.no_grad():
            return m(x)

        xg = x.clone().requires_grad_(True)
        cot = torch.ones_like(m(x)).contiguous(memory_format=fmt)

        def forward_backward(m: Any = m, xg: Any = xg, cot: Any = cot) -> Any:
          m.zero_grad(set_to_none=True)
          xg.grad = None
          m(xg).backward(cot)
          return xg.grad

        for pass_name, fn in (("forward", forward), ("forward_backward", forward_backward)):
          s = _time(fn, repeats, max_seconds)
          records.append(
            {
              "variant": f"{name}/{layout}",
              "layout": layout,
              "shape_label": shape.label,
              "pass": pass_name,
              **s.as_dict(),
            }
          )
  for r in records:
    dense = next(
      d
      for d in records
      if d["variant"] == f"torch_dense/{r['layout']}"
      and d["shape_label"] == r["shape_label"]
      and d["pass"] == r["pass"]
    )
    r["speedup_vs_torch_dense"] = dense["median_ms"] / r["median_ms"]
  return records, notes
