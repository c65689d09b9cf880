"""Forward and forward+backward timings of every scheme × implementation against the dense conv.

Run as ``python -m experiments.bench.layers [--quick] [--out DIR] [--peers torch,tltorch,keras|none]``.

For each shape (N ∈ {1, 8, 64} × 32×32×64, 16×16×128, 8×8×256 at 3×3 and
16×16×128 at 5×5, ``c → c``, SAME; ``--quick``: N = 8 only) and each pass, all
variants of :mod:`experiments.bench.cases` and every dense implementation of
:mod:`experiments.bench.dense_baselines` are compiled and timed *in the same
interleaved run*; the fastest dense one is the baseline of that shape and
pass. ``forward_backward`` is ``jax.vjp`` plus the pullback of a fixed random
cotangent: the output and the gradients with respect to the input and every
parameter.

Writes under ``experiments/results/<name>/`` (``--out`` to change):
``results.json`` (one record per measurement plus machine information),
``results.md`` (tables, including ``auto``'s choice against the measured
best, and efficonv against the peers of :mod:`experiments.bench.peers`) and
``speedup_vs_mac_ratio.png``.
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

from efficonv.nnx import set_objective
from experiments.bench import layers_report as bench_report
from experiments.bench import peers
from experiments.bench.cases import BATCHES_FULL, BATCHES_QUICK, SCHEMES, Scheme, Shape, Variant, shapes, variants_for
from experiments.bench.dense_baselines import PASSES, dense_methods, pass_args, with_pass
from experiments.bench.functional import as_pure_function
from experiments.cli import command_line
from experiments.common.environment import load_average, machine_info
from experiments.common.results import RESULTS_DIR
from experiments.common.timing import Stats, compile_fn, measure

DEFAULT_RESULTS = str(RESULTS_DIR)
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
  schemes: Sequence[Scheme] = SCHEMES,
) -> tuple[list[dict[str, Any]], list[str]]:
  """Times every dense method and variant of ``schemes`` on ``shape``, both passes.

  Returns:
    ``(records, skipped)``: one record per measurement, and a line per variant not timed.
  """
  kx, kk, kc = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, shape.input_shape, jnp.float32)
  kernel = (
    jax.random.normal(kk, (shape.k, shape.k, shape.c, shape.c), jnp.float32) / (shape.k * shape.k * shape.c) ** 0.5
  )
  cotangent = jax.random.normal(kc, shape.input_shape, jnp.float32)
  variants = variants_for(shape, schemes, seed)
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
      # `auto` optimises what this pass times: the forward pass, or forward+backward.
      set_objective(v.layer, "training" if pass_name == "forward_backward" else "inference")
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


def run(
  shape_list: Sequence[Shape],
  *,
  repeats: int,
  warmup: int,
  max_seconds: float,
  slow_seconds: float,
  skip_xla_depthwise_backward: bool,
  command: str,
  with_peers: bool = True,
  peer_names: Sequence[str] = peers.PEERS,
  schemes: Sequence[Scheme] = SCHEMES,
  deadline: float | None = None,
  config: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Times every shape of ``shape_list`` (see :func:`bench_shape`) and the optional PyTorch peers.

  Args:
    shape_list: the shapes, in the order timed.
    repeats: timed calls per function.
    warmup: untimed calls per function first.
    max_seconds: timing budget per function (slower ones get fewer repeats).
    slow_seconds: a function whose first call takes longer is timed once more only.
    skip_xla_depthwise_backward: leave out XLA's grouped depthwise backward (slow on CPU).
    command: the command line, recorded.
    with_peers: also time the peers (:mod:`experiments.bench.peers`).
    peer_names: which peers of :data:`experiments.bench.peers.PEERS` to time (missing ones are skipped with a note).
    schemes: the schemes whose variants are timed.
    deadline: a :func:`time.perf_counter` value after which no further shape starts (the first always runs;
      the others are listed in ``skipped``).
    config: extra entries for the result's ``config``.

  Returns:
    ``{"machine", "config", "records", "skipped", "peers", "peer_ratios"}``, as written by :func:`write`
    (``peer_ratios``: :func:`experiments.bench.layers_report.peer_ratios`).
  """
  machine = {
    **machine_info(command=command.strip()),
    "dense_compiler_options": {m.name: dict(m.compiler_options) for m in dense_methods() if m.compiler_options},
    "load_average_before": load_average(),
  }
  records: list[dict[str, Any]] = []
  skipped: list[str] = []
  start = time.perf_counter()
  timed: list[Shape] = []
  for shape in shape_list:
    if timed and deadline is not None and time.perf_counter() > deadline:
      skipped.append(f"{shape.label}: skipped, time budget spent")
      continue
    _log(f"{shape.label}")
    shape_records, shape_skipped = bench_shape(
      shape,
      repeats=repeats,
      warmup=warmup,
      max_seconds=max_seconds,
      slow_seconds=slow_seconds,
      skip_xla_depthwise_backward=skip_xla_depthwise_backward,
      schemes=schemes,
    )
    records.extend(shape_records)
    skipped.extend(shape_skipped)
    timed.append(shape)
  peer_records, peer_notes = (
    peers.run(timed, repeats=repeats, max_seconds=max_seconds, peers=peer_names, slow_seconds=slow_seconds)
    if with_peers
    else ([], ["skipped (--no-peers)"])
  )
  machine["load_average_after"] = load_average()
  machine["wall_seconds"] = time.perf_counter() - start
  return {
    "machine": machine,
    "config": {
      **(config or {}),
      "repeats": repeats,
      "warmup": warmup,
      "max_seconds_per_function": max_seconds,
      "slow_seconds": slow_seconds,
    },
    "records": records,
    "skipped": skipped,
    "peers": {"records": peer_records, "notes": peer_notes},
    "peer_ratios": bench_report.peer_ratios(records, peer_records),
  }


def write(result: dict[str, Any], out_dir: str) -> list[str]:
  """Writes ``results.json``, ``results.md`` and ``speedup_vs_mac_ratio.png`` (when plotted) into ``out_dir``.

  Returns:
    The paths written.
  """
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md")]
  with open(paths[0], "w") as f:
    json.dump(result, f, indent=1, default=str)
  with open(paths[1], "w") as f:
    f.write(bench_report.markdown(result))
  plot_path = bench_report.plot(result["records"], os.path.join(out_dir, "speedup_vs_mac_ratio.png"))
  return paths + ([plot_path] if plot_path else [])


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
  parser.add_argument("--no-peers", action="store_true", help="skip the optional peer timings (same as --peers none)")
  parser.add_argument(
    "--peers",
    default="all",
    help=f"comma-separated peers to time, of {','.join(peers.PEERS)} (default all available; 'none' for none)",
  )
  args = parser.parse_args(argv)
  try:
    peer_names = peers.parse_peers(args.peers)
  except ValueError as e:
    parser.error(str(e))
  out_dir = args.out or os.path.join(DEFAULT_RESULTS, "bench_layers_quick" if args.quick else "bench_layers")
  result = run(
    shapes(BATCHES_QUICK if args.quick else BATCHES_FULL),
    repeats=args.repeats or (15 if args.quick else 30),
    warmup=args.warmup,
    max_seconds=args.max_seconds or (0.5 if args.quick else 1.0),
    slow_seconds=args.slow_seconds or (3.0 if args.quick else 30.0),
    skip_xla_depthwise_backward=args.quick,
    command=command_line(__spec__.name, argv),
    with_peers=not args.no_peers and bool(peer_names),
    peer_names=peer_names,
    config={"quick": args.quick, "peers": list(peer_names) if not args.no_peers else []},
  )
  paths = write(result, out_dir)
  print(bench_report.summary_text(result))
  _log(f"wrote {', '.join(paths)}")
  return result


if __name__ == "__main__":
  main()
