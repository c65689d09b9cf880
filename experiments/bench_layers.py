"""Forward and forward+backward timings of every scheme × implementation against the dense conv.

Run as ``python -m experiments.bench_layers [--quick] [--out DIR]``.

For each shape (N ∈ {1, 8, 64} × 32×32×64, 16×16×128, 8×8×256 at 3×3 and
16×16×128 at 5×5, ``c → c``, SAME; ``--quick``: N = 8 only) and each pass, all
variants of :mod:`experiments.bench_cases` and every dense implementation of
:mod:`experiments.dense_baselines` are compiled and timed *in the same
interleaved run*; the fastest dense one is the baseline of that shape and
pass. ``forward_backward`` is ``jax.vjp`` plus the pullback of a fixed random
cotangent: the output and the gradients with respect to the input and every
parameter.

Writes under ``experiments/results/<name>/`` (``--out`` to change):
``results.json`` (one record per measurement plus machine information),
``results.md`` (tables, including ``auto``'s choice against the measured
best) and ``speedup_vs_mac_ratio.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from experiments import bench_report, peers
from experiments.bench_cases import BATCHES_FULL, BATCHES_QUICK, SCHEMES, Shape, Variant, shapes, variants_for
from experiments.dense_baselines import EIGEN_CONV_OPTIONS, PASSES, dense_methods, pass_args, with_pass
from experiments.functional import as_pure_function
from experiments.machine import load_average, machine_info
from experiments.timing import Stats, compile_fn, measure

DEFAULT_RESULTS = os.path.join(os.path.dirname(__file__), "results")
# Backward passes do about twice the forward's MACs (input and weight gradients).
PASS_MAC_FACTOR = {"forward": 1, "forward_backward": 3}
XLA_BACKWARD_SKIP_REASON = (
  "skipped in --quick: XLA's grouped-conv depthwise backward takes 1-15 s per call on 2 CPU cores "
  "(timed in the full run)"
)


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def _executed_macs(variant: Variant, shape: Shape, macs: int) -> int:
  """MACs the variant actually runs: the dense conv's when it reconstructs."""
  if variant.implementation == "reconstructed":
    return shape.dense_macs
  if variant.implementation == "auto" and variant.layer.plan(shape.input_shape).implementation == "reconstructed":
    return shape.dense_macs
  return macs


def _auto_choice(variant: Variant, shape: Shape) -> str | None:
  """The forced variant label that ``auto`` runs (e.g. ``"factorized/shift"``)."""
  if variant.implementation != "auto":
    return None
  plan = variant.layer.plan(shape.input_shape)
  return "/".join(p for p in (plan.implementation, plan.depthwise) if p)


def bench_shape(
  shape: Shape,
  *,
  repeats: int,
  warmup: int,
  max_seconds: float,
  slow_seconds: float,
  skip_xla_depthwise_backward: bool = False,
  seed: int = 0,
) -> tuple[list[dict[str, Any]], list[str]]:
  """Times every dense method and variant on ``shape``, both passes.

  Returns:
    ``(records, skipped)``: one record per measurement, and a line per variant not timed.
  """
  kx, kk, kc = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, shape.input_shape, jnp.float32)
  kernel = (
    jax.random.normal(kk, (shape.k, shape.k, shape.c, shape.c), jnp.float32) / (shape.k * shape.k * shape.c) ** 0.5
  )
  cotangent = jax.random.normal(kc, shape.input_shape, jnp.float32)
  variants = variants_for(shape, SCHEMES, seed)
  records: list[dict[str, Any]] = []
  skipped: list[str] = []
  for pass_name in PASSES:
    start = time.perf_counter()
    candidates: dict[str, tuple[Any, Any]] = {}
    cache: dict[tuple[str, str], Any] = {}
    meta: dict[str, dict[str, Any]] = {}
    for method in dense_methods():
      args = pass_args(x, kernel, pass_name, cotangent)
      candidates[f"dense/{method.name}"] = (
        compile_fn(with_pass(method.fn, pass_name), args, method.compiler_options, cache),
        args,
      )
      meta[f"dense/{method.name}"] = {
        "scheme": "dense",
        "implementation": method.name,
        "depthwise": None,
        "macs": shape.dense_macs,
        "executed_macs": shape.dense_macs,
        "compiler_options": dict(method.compiler_options),
        "note": "dense conv",
      }
    for v in variants:
      if skip_xla_depthwise_backward and pass_name == "forward_backward" and v.depthwise == "xla":
        skipped.append(f"{shape.label} {pass_name} {v.label}: {XLA_BACKWARD_SKIP_REASON}")
        continue
      fn, params = as_pure_function(v.layer)
      args = pass_args(x, params, pass_name, cotangent)
      candidates[v.label] = (compile_fn(with_pass(fn, pass_name), args, None, cache), args)
      macs = int(v.layer.cost_macs(shape.input_shape))
      meta[v.label] = {
        "scheme": v.scheme,
        "implementation": v.implementation,
        "depthwise": v.depthwise,
        "macs": macs,
        "executed_macs": _executed_macs(v, shape, macs),
        "compiler_options": {},
        "note": v.note,
        "auto_choice": _auto_choice(v, shape),
      }
    compiled_s = time.perf_counter() - start
    stats = measure(
      candidates, repeats=repeats, warmup=warmup, max_seconds=max_seconds, slow_seconds=slow_seconds, seed=seed
    )
    records.extend(_records(shape, pass_name, stats, meta))
    _log(
      f"  {shape.label} {pass_name}: {len(candidates)} functions, compile {compiled_s:.0f} s, "
      f"timing {time.perf_counter() - start - compiled_s:.0f} s, load {load_average()}"
    )
  return records, skipped


def _records(
  shape: Shape, pass_name: str, stats: dict[str, Stats], meta: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
  dense_names = [n for n in stats if n.startswith("dense/")]
  best = min(dense_names, key=lambda n: stats[n].median_ms)
  dense_ms = stats[best].median_ms
  out = []
  for name, s in stats.items():
    m = meta[name]
    mac_ratio = shape.dense_macs / m["macs"]
    speedup = dense_ms / s.median_ms
    out.append(
      {
        "variant": name,
        **m,
        "shape": {"n": shape.n, "h": shape.h, "w": shape.w, "c": shape.c, "k": shape.k},
        "shape_label": shape.label,
        "pass": pass_name,
        **s.as_dict(),
        "dense_macs": shape.dense_macs,
        "mac_ratio": mac_ratio,
        "gflops": 2 * PASS_MAC_FACTOR[pass_name] * m["executed_macs"] / (s.median_ms * 1e-3) / 1e9,
        "dense_median_ms": dense_ms,
        "dense_method": best,
        "speedup": speedup,
        "speedup_over_mac_ratio": speedup / mac_ratio,
      }
    )
  return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark and writes JSON, Markdown and the plot; returns the result dict."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="N = 8 only, fewer repeats (~3 min on 2 cores)")
  parser.add_argument("--out", help="output directory (default experiments/results/bench_layers[_quick])")
  parser.add_argument("--repeats", type=int, help="timed calls per function (default 30, quick 15)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls per function first (default 2)")
  parser.add_argument(
    "--max-seconds",
    type=float,
    default=None,
    help="timing budget per function; slower ones get fewer repeats (default 1.0, quick 0.5)",
  )
  parser.add_argument(
    "--slow-seconds",
    type=float,
    default=None,
    help="a function whose first call takes longer is timed once more only (default 30, quick 3)",
  )
  parser.add_argument("--no-peers", action="store_true", help="skip the optional PyTorch timings")
  args = parser.parse_args(argv)
  repeats = args.repeats or (15 if args.quick else 30)
  max_seconds = args.max_seconds or (0.5 if args.quick else 1.0)
  slow_seconds = args.slow_seconds or (3.0 if args.quick else 30.0)
  out_dir = args.out or os.path.join(DEFAULT_RESULTS, "bench_layers_quick" if args.quick else "bench_layers")
  os.makedirs(out_dir, exist_ok=True)
  command = "python -m experiments.bench_layers " + " ".join(sys.argv[1:] if argv is None else argv)
  machine = {
    **machine_info(command=command.strip()),
    "dense_compiler_options": {"lax_eigen": EIGEN_CONV_OPTIONS},
    "load_average_before": load_average(),
  }
  records: list[dict[str, Any]] = []
  skipped: list[str] = []
  start = time.perf_counter()
  for shape in shapes(BATCHES_QUICK if args.quick else BATCHES_FULL):
    _log(f"{shape.label}")
    shape_records, shape_skipped = bench_shape(
      shape,
      repeats=repeats,
      warmup=args.warmup,
      max_seconds=max_seconds,
      slow_seconds=slow_seconds,
      skip_xla_depthwise_backward=args.quick,
    )
    records.extend(shape_records)
    skipped.extend(shape_skipped)
  peer_records, peer_notes = (
    ([], ["skipped (--no-peers)"])
    if args.no_peers
    else peers.run(shapes(BATCHES_QUICK if args.quick else BATCHES_FULL), repeats=repeats, max_seconds=max_seconds)
  )
  machine["load_average_after"] = load_average()
  machine["wall_seconds"] = time.perf_counter() - start
  result = {
    "machine": machine,
    "config": {
      "quick": args.quick,
      "repeats": repeats,
      "warmup": args.warmup,
      "max_seconds_per_function": max_seconds,
      "slow_seconds": slow_seconds,
    },
    "records": records,
    "skipped": skipped,
    "peers": {"records": peer_records, "notes": peer_notes},
  }
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(result, f, indent=1, default=str)
  markdown = bench_report.markdown(result)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(markdown)
  plot_path = bench_report.plot(records, os.path.join(out_dir, "speedup_vs_mac_ratio.png"))
  print(bench_report.summary_text(result))
  _log(f"wrote {out_dir}/results.json, results.md{', ' + os.path.basename(plot_path) if plot_path else ''}")
  return result


if __name__ == "__main__":
  main()
