"""The accelerator benchmarks in one run under a time budget: depthwise paths, layers, whole networks.

Usage::

  python -m experiments.bench.gpu_suite [--out experiments/results/gpu_<device>/] [--budget-s 270]
                                  [--parts depthwise layers network] [--allow-cpu] [--smoke]

Meant for one GPU: on JAX's CPU backend it refuses unless ``--allow-cpu`` is given (``--allow-cpu --smoke``:
tiny shapes, well under a minute, for the tests). The parts, in order:

1. ``depthwise``: :func:`efficonv.kernels.depthwise` through XLA's grouped convolution (``"xla"``) and
   shift-and-add (``"shift"``), forward and forward+backward (:func:`experiments.bench.dense_baselines.with_pass`),
   on N ∈ {8, 64} × 32×32×64, 16×16×128, 8×8×256, 3×3, depth multipliers 1 and 4, float32 and bfloat16; both
   paths of a case timed interleaved (:func:`experiments.common.timing.measure`) → ``depthwise.json``, ``depthwise.md``.
2. ``layers``: :func:`experiments.bench.layers.run` on the N = 8 and N = 64 shapes (every spatial shape at both
   batch sizes before the next shape), no PyTorch peers → ``bench_layers/results.{json,md}`` and plot.
3. ``network``: :mod:`experiments.bench.network`, quick preset, every scheme → ``bench_network/…``.

Every part's JSON carries ``device_kind``, ``versions`` (jax, jaxlib, ...), ``command`` and ``wall_s``;
``suite.json`` lists the parts with ``status`` (``done``, ``partial``: the budget cut it short, ``skipped``,
``failed``) and the reason.

Budget: part ``i`` stops starting new cases (a depthwise case, a layer shape, a network, a timing round; the
first of each always runs) once ``--budget-s`` × its cumulative share has passed (depthwise 25%, layers 60%,
network 100%; time a part leaves unused goes to the later ones), and a part starts only while at least
``MIN_PART_S`` of the budget is left, otherwise it is recorded as skipped. A case that has started runs to
its end, so the run can overshoot the budget by about one case; the default 270 s aims at under 5 minutes
in all, JAX start-up included. A part that raises is recorded as ``failed`` (with the error) and the next
one still runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from efficonv import kernels
from experiments.bench import layers as bench_layers
from experiments.bench import network as bench_network
from experiments.bench.cases import SCHEMES as LAYER_SCHEMES
from experiments.bench.cases import SPATIAL_SHAPES, Shape
from experiments.bench.dense_baselines import PASSES, pass_args, with_pass
from experiments.cli import command_line
from experiments.common.config import load
from experiments.common.environment import machine_info
from experiments.common.timing import compile_fn, measure
from experiments.schemes import SCHEMES as NETWORK_SCHEMES

PARTS = ("depthwise", "layers", "network")
SHARES = {"depthwise": 0.25, "layers": 0.60, "network": 1.0}
MIN_PART_S = 15.0
DEPTHWISE_SPATIAL = ((32, 32, 64), (16, 16, 128), (8, 8, 256))
BATCHES = (8, 64)
MULTIPLIERS = (1, 4)
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the parts time and how long.

  Attributes:
    depthwise_shapes: ``(N, H, W, C)`` inputs of the depthwise part (3×3 kernels).
    layer_shapes: shapes of the layer part.
    layer_schemes: names of :data:`experiments.bench.cases.SCHEMES` timed in the layer part.
    network_preset: preset of ``compare_fashion_mnist`` for the network part.
    network_schemes: schemes of the network part.
    network_batch_sizes: inference batch sizes of the network part (``None``: the preset's).
    repeats: timed calls per function.
    warmup: untimed calls per function first.
    max_seconds: timing budget per function (slower ones get fewer repeats).
    slow_seconds: a function whose first call takes longer is timed once more only.
  """

  depthwise_shapes: tuple[tuple[int, int, int, int], ...]
  layer_shapes: tuple[Shape, ...]
  layer_schemes: tuple[str, ...]
  network_preset: str
  network_schemes: tuple[str, ...]
  network_batch_sizes: tuple[int, ...] | None
  repeats: int
  warmup: int
  max_seconds: float
  slow_seconds: float


def settings(smoke: bool) -> Settings:
  """The real settings, or tiny ones for ``--smoke``."""
  if smoke:
    return Settings(
      depthwise_shapes=((2, 8, 8, 16),),
      layer_shapes=(Shape(2, 8, 8, 16, 3),),
      layer_schemes=("cp",),
      network_preset="tiny",
      network_schemes=("dense", "cp"),
      network_batch_sizes=(2,),
      repeats=3,
      warmup=1,
      max_seconds=0.05,
      slow_seconds=2.0,
    )
  return Settings(
    depthwise_shapes=tuple((n, h, w, c) for n in BATCHES for (h, w, c) in DEPTHWISE_SPATIAL),
    layer_shapes=tuple(Shape(n, h, w, c, k) for (h, w, c, k) in SPATIAL_SHAPES for n in BATCHES),
    layer_schemes=tuple(s.name for s in LAYER_SCHEMES),
    network_preset="quick",
    network_schemes=NETWORK_SCHEMES,
    network_batch_sizes=None,
    repeats=30,
    warmup=3,
    max_seconds=0.3,
    slow_seconds=5.0,
  )


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def stamp(command: str, start: float) -> dict[str, Any]:
  """``device_kind``, ``versions``, ``command`` and ``wall_s`` (since ``start``) for a part's JSON."""
  return {
    "device_kind": jax.devices()[0].device_kind,
    "versions": bench_network.library_versions(),
    "command": command,
    "wall_s": time.perf_counter() - start,
  }


def depthwise_part(s: Settings, deadline: float, command: str, out_dir: str) -> tuple[str, list[str]]:
  """Times XLA's grouped depthwise conv against shift-and-add (see the module docstring).

  Returns:
    ``(status, files written)``.
  """
  start = time.perf_counter()
  records, skipped = [], []
  for (n, h, w, c), m, dtype, pass_name in (
    (shape, m, dtype, p) for shape in s.depthwise_shapes for m in MULTIPLIERS for dtype in DTYPES for p in PASSES
  ):
    case = {"n": n, "h": h, "w": w, "c": c, "k": 3, "multiplier": m, "dtype": dtype, "pass": pass_name}
    if records and time.perf_counter() > deadline:
      skipped.append(case)
      continue
    kx, kk, kc = jax.random.split(jax.random.key(len(records)), 3)
    x = jax.random.normal(kx, (n, h, w, c), dtype)
    kernel = (jax.random.normal(kk, (3, 3, c, m), jnp.float32) / 3.0).astype(dtype)
    args = pass_args(x, kernel, pass_name, jax.random.normal(kc, (n, h, w, c * m), dtype))
    candidates: dict[str, tuple[Callable[..., Any], Any]] = {}
    for impl in ("xla", "shift"):

      def fn(x: jax.Array, k: jax.Array, impl: str = impl) -> jax.Array:
        return kernels.depthwise(x, k, implementation=impl)  # type: ignore[arg-type]

      candidates[impl] = (compile_fn(with_pass(fn, pass_name), args), args)
    stats = measure(
      candidates,
      repeats=s.repeats,
      warmup=s.warmup,
      max_seconds=s.max_seconds,
      slow_seconds=s.slow_seconds,
    )
    records.append(
      {
        **case,
        "macs": n * h * w * 9 * c * m,
        "xla": stats["xla"].as_dict(),
        "shift": stats["shift"].as_dict(),
        "shift_speedup_over_xla": stats["xla"].median_ms / stats["shift"].median_ms,
      }
    )
  result = {
    "part": "depthwise",
    **stamp(command, start),
    "machine": machine_info(command=command),
    "config": {"repeats": s.repeats, "warmup": s.warmup, "max_seconds": s.max_seconds, "kernel": "3x3"},
    "records": records,
    "skipped": skipped,
  }
  paths = [os.path.join(out_dir, "depthwise.json"), os.path.join(out_dir, "depthwise.md")]
  with open(paths[0], "w") as f:
    json.dump(result, f, indent=1)
  lines = [
    f"# Depthwise 3×3: XLA grouped conv vs shift-and-add on {result['device_kind']}",
    "",
    f"Command: `{command}`; jax {result['versions']['jax']}; wall {result['wall_s']:.0f} s; "
    f"{len(skipped)} cases skipped (budget).",
    "",
    "| input | m | dtype | pass | xla ms | shift ms | shift speedup |",
    "|---|---:|---|---|---:|---:|---:|",
  ]
  for r in records:
    lines.append(
      f"| {r['n']}×{r['h']}×{r['w']}×{r['c']} | {r['multiplier']} | {r['dtype']} | {r['pass']} | "
      f"{r['xla']['median_ms']:.3f} | {r['shift']['median_ms']:.3f} | {r['shift_speedup_over_xla']:.2f} |"
    )
  with open(paths[1], "w") as f:
    f.write("\n".join(lines) + "\n")
  return ("partial" if skipped else "done"), paths


def layers_part(s: Settings, deadline: float, command: str, out_dir: str) -> tuple[str, list[str]]:
  """The layer benchmark (:func:`experiments.bench.layers.run`) on the suite's shapes.

  Returns:
    ``(status, files written)``.
  """
  start = time.perf_counter()
  result = bench_layers.run(
    s.layer_shapes,
    repeats=s.repeats,
    warmup=s.warmup,
    max_seconds=s.max_seconds,
    slow_seconds=s.slow_seconds,
    skip_xla_depthwise_backward=jax.default_backend() == "cpu",
    command=command,
    with_peers=False,
    schemes=[x for x in LAYER_SCHEMES if x.name in s.layer_schemes],
    deadline=deadline,
    config={"suite": "gpu_suite", "batches": sorted({shape.n for shape in s.layer_shapes})},
  )
  result.update(part="layers", **stamp(command, start))
  budget_cut = any("time budget" in line for line in result["skipped"])
  return ("partial" if budget_cut else "done"), bench_layers.write(result, os.path.join(out_dir, "bench_layers"))


def network_part(s: Settings, deadline: float, command: str, out_dir: str) -> tuple[str, list[str]]:
  """The whole-network benchmark (:func:`experiments.bench.network.run`).

  Returns:
    ``(status, files written)``.
  """
  start = time.perf_counter()
  payload = bench_network.run(
    load("compare_fashion_mnist", s.network_preset),
    schemes=s.network_schemes,
    batch_sizes=s.network_batch_sizes,
    command=command,
    deadline=deadline,
  )
  payload.update(part="network", **stamp(command, start))
  return ("partial" if payload["skipped"] else "done"), bench_network.write(
    payload, os.path.join(out_dir, "bench_network")
  )


PART_FUNCTIONS: dict[str, Callable[[Settings, float, str, str], tuple[str, list[str]]]] = {
  "depthwise": depthwise_part,
  "layers": layers_part,
  "network": network_part,
}


def default_out() -> str:
  """``experiments/results/gpu_<device kind>`` (lower case, runs of other characters as ``_``)."""
  slug = re.sub(r"[^a-z0-9]+", "_", jax.devices()[0].device_kind.lower()).strip("_")
  return os.path.join(bench_network.DEFAULT_RESULTS, f"gpu_{slug}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command line; returns the contents of ``suite.json``.

  Raises:
    SystemExit: on the CPU backend without ``--allow-cpu``.
    ValueError: naming ``--budget-s`` when it is not positive.
  """
  start = time.perf_counter()
  parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=None, help="output directory (default experiments/results/gpu_<device>)")
  parser.add_argument("--budget-s", type=float, default=270.0, help="time budget of all parts (default 270)")
  parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default all)")
  parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU backend too (smoke tests)")
  parser.add_argument("--smoke", action="store_true", help="tiny shapes and networks (well under a minute)")
  args = parser.parse_args(argv)
  backend = jax.default_backend()
  if backend == "cpu" and not args.allow_cpu:
    raise SystemExit(
      "gpu_suite: JAX's backend is cpu (no GPU visible); this suite is meant for a GPU. "
      "Pass --allow-cpu (with --smoke for a quick check) to run it on the CPU anyway."
    )
  if not args.budget_s > 0:
    raise ValueError(f"--budget-s must be positive, got {args.budget_s}")
  command = command_line(__spec__.name, argv)
  out_dir = args.out or default_out()
  os.makedirs(out_dir, exist_ok=True)
  s = settings(args.smoke)
  min_part_s = 0.0 if args.smoke else MIN_PART_S
  end = start + args.budget_s
  parts = []
  for name in PARTS:
    part: dict[str, Any] = {"name": name, "status": "skipped", "reason": None, "wall_s": 0.0, "files": []}
    parts.append(part)
    left = end - time.perf_counter()
    if name not in args.parts:
      part["reason"] = "not selected (--parts)"
      continue
    if left < min_part_s:
      part["reason"] = f"time budget spent: {left:.0f} s of {args.budget_s:.0f} s left, a part needs {min_part_s:.0f}"
      continue
    _log(f"gpu_suite: {name} ({left:.0f} s of the budget left)")
    t0 = time.perf_counter()
    try:
      part["status"], part["files"] = PART_FUNCTIONS[name](s, start + SHARES[name] * args.budget_s, command, out_dir)
      if part["status"] == "partial":
        part["reason"] = "time budget: later cases skipped (listed in the part's JSON)"
    except Exception as e:  # one failing part must not cost the others their turn on the device
      traceback.print_exc()
      part.update(status="failed", reason=f"{type(e).__name__}: {e}")
    part["wall_s"] = time.perf_counter() - t0
  suite = {
    **stamp(command, start),
    "backend": backend,
    "budget_s": args.budget_s,
    "smoke": args.smoke,
    "out": out_dir,
    "parts": parts,
  }
  with open(os.path.join(out_dir, "suite.json"), "w") as f:
    json.dump(suite, f, indent=1)
  for p in parts:
    _log(f"  {p['name']}: {p['status']} in {p['wall_s']:.0f} s{' (' + p['reason'] + ')' if p['reason'] else ''}")
  return suite


if __name__ == "__main__":
  main()
