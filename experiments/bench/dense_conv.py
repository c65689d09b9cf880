"""Times every dense-conv formulation of :mod:`efficonv.kernels.dense` on CIFAR and ImageNet layer shapes.

Each case is one conv layer (random weights, float32, default compile options). For every case the
formulations are compiled, warmed up, then timed in interleaved rounds (one call of each per round) so
that load from other jobs on a shared machine hits them alike; the median of the rounds is kept. Timing is
:func:`experiments.common.timing.measure` (warm-up, then at least ``--rounds`` interleaved calls each, in a
fresh random order per round, the median call counting). The ``auto`` column is the time of the formulation
:func:`efficonv.kernels.dense_implementation` picks, with its ratio to the fastest formulation.

Run from the repository root::

  python -m experiments.bench.dense_conv                 # all cases, JSON to experiments/results/bench_dense_conv/
  python -m experiments.bench.dense_conv --suite cifar --rounds 5 --name quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from efficonv.kernels import conv, dense_implementation
from efficonv.kernels.dense import DENSE_IMPLEMENTATIONS
from experiments.cli import command_line
from experiments.common.environment import environment, load_average
from experiments.common.results import RESULTS_DIR
from experiments.common.timing import compile_fn, measure

# (suite, H=W, C_in, C_out, kernel, stride) of one layer; every conv is SAME-padded.
_CIFAR = [
  (32, 64, 64, 3, 1),
  (16, 128, 128, 3, 1),
  (8, 256, 256, 3, 1),
  (4, 512, 512, 3, 1),
  (2, 512, 512, 3, 1),
  (32, 64, 128, 3, 2),
  (16, 128, 256, 3, 2),
  (8, 256, 512, 3, 2),
  (4, 512, 512, 3, 2),
  (32, 64, 128, 1, 2),
  (16, 128, 256, 1, 2),
  (8, 256, 512, 1, 2),
  (4, 512, 512, 1, 1),
]
_IMAGENET = [
  (224, 3, 64, 7, 2),
  (56, 64, 64, 3, 1),
  (28, 128, 128, 3, 1),
  (14, 256, 256, 3, 1),
  (7, 512, 512, 3, 1),
  (56, 128, 128, 3, 2),
  (28, 256, 256, 3, 2),
  (14, 512, 512, 3, 2),
  (56, 64, 256, 1, 1),
  (56, 256, 64, 1, 1),
  (28, 512, 128, 1, 1),
  (14, 1024, 256, 1, 1),
  (7, 2048, 512, 1, 1),
  (7, 512, 2048, 1, 1),
  (56, 256, 512, 1, 2),
  (28, 512, 1024, 1, 2),
  (14, 1024, 2048, 1, 2),
]
_SUITES = {"cifar": (_CIFAR, (1, 32)), "imagenet": (_IMAGENET, (1, 8))}


def _time_case(n: int, hw: int, cin: int, cout: int, k: int, stride: int, rounds: int) -> dict[str, Any]:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, hw, hw, cin), np.float32))
  kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32) / np.sqrt(k * k * cin))
  fns, compile_s, ref = {}, {}, None
  for impl in DENSE_IMPLEMENTATIONS:
    t0 = time.perf_counter()
    fns[impl] = compile_fn(
      lambda x, w, impl=impl: conv(x, w, strides=stride, padding="SAME", implementation=impl), (x, kernel)
    )
    out = jax.block_until_ready(fns[impl](x, kernel))
    compile_s[impl] = time.perf_counter() - t0
    ref = out if ref is None else ref
    err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
    if err > 1e-3:
      raise AssertionError(f"{impl} differs from xla by {err:.2e} (relative) on {(n, hw, cin, cout, k, stride)}")
  stats = measure({impl: (fn, (x, kernel)) for impl, fn in fns.items()}, repeats=rounds, warmup=1)
  medians = {impl: s.median_ms for impl, s in stats.items()}
  auto, reason = dense_implementation(x.shape, kernel.shape, stride, "SAME", backend=jax.default_backend())
  best = min(medians, key=medians.__getitem__)
  return {
    "batch": n,
    "hw": hw,
    "c_in": cin,
    "c_out": cout,
    "kernel": k,
    "stride": stride,
    "median_ms": {impl: round(v, 4) for impl, v in medians.items()},
    "stats": {impl: s.as_dict() for impl, s in stats.items()},
    "first_call_s": {impl: round(v, 3) for impl, v in compile_s.items()},
    "fastest": best,
    "auto": auto,
    "auto_reason": reason,
    "auto_over_fastest": round(medians[auto] / medians[best], 3),
    "load_average": load_average(),
  }


def _row(r: dict[str, Any]) -> str:
  case = f"{r['batch']:>3} {r['hw']:>3}² {r['c_in']:>4}→{r['c_out']:<4} {r['kernel']}×{r['kernel']} s{r['stride']}"
  cells = " ".join(f"{r['median_ms'][i]:>9.2f}" for i in DENSE_IMPLEMENTATIONS)
  return (
    f"{case:<30} {cells}  {r['fastest']:>9} {r['auto']:>9} {r['auto_over_fastest']:>5.2f}  {(r['load_average'] or [float('nan')])[0]:.1f}"
  )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark; returns (and writes) the results dict.

  Args:
    argv: the command-line arguments (``sys.argv[1:]`` when ``None``).

  Returns:
    ``{"machine", "rounds", "cases", "auto_worst_ratio"}``, as written to ``<out>/<name>.json``.
  """
  parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
  parser.add_argument("--suite", choices=[*_SUITES, "all"], default="all")
  parser.add_argument("--rounds", type=int, default=7, help="timed calls per formulation and case, at least")
  parser.add_argument("--batches", type=int, nargs="*", help="override the suite's batch sizes")
  parser.add_argument("--name", default="default", help="results file stem")
  parser.add_argument("--out", default=str(RESULTS_DIR / "bench_dense_conv"))
  args = parser.parse_args(argv)
  suites = list(_SUITES) if args.suite == "all" else [args.suite]
  header = f"{'batch H² Cin→Cout k s':<30} " + " ".join(f"{i:>9}" for i in DENSE_IMPLEMENTATIONS)
  print(f"{header}  {'fastest':>9} {'auto':>9} {'ratio':>5}  load (ms, median of {args.rounds})", flush=True)
  machine = {**environment(command_line(__spec__.name, argv)), "compiler_options": "default"}
  results: dict[str, Any] = {"machine": machine, "rounds": args.rounds, "cases": []}
  results["machine"]["load_average_start"] = load_average()
  for suite in suites:
    shapes, batches = _SUITES[suite]
    for n in args.batches or batches:
      for shape in shapes:
        r = {"suite": suite, **_time_case(n, *shape, rounds=args.rounds)}
        results["cases"].append(r)
        print(_row(r), flush=True)
  ratios = [r["auto_over_fastest"] for r in results["cases"]]
  results["auto_worst_ratio"] = max(ratios)
  results["machine"]["load_average_end"] = load_average()
  print(f"auto / fastest: worst {max(ratios):.2f}, median {statistics.median(ratios):.2f}")
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"{args.name}.json"
  path.write_text(json.dumps(results, indent=1) + "\n")
  print(f"wrote {path}")
  return results


if __name__ == "__main__":
  main()
