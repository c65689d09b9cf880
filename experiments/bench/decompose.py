"""Wall time and error of efficonv's decompositions against TensorLy on one conv kernel.

Run as ``python -m experiments.bench.decompose [--out PATH] [--repeats N] [--no-tensorly-jax]``.

For a ``3×3×64×64`` kernel — a trained-like one (a decaying-weight CP structure of rank 48 plus 20%
Gaussian noise, He-scaled) and a pure Gaussian one — this measures:

* CP at rank 32, 100 sweeps, SVD init, no early stop (``tol=0`` on both sides, so both do exactly 100
  sweeps): :func:`efficonv.decompose.cp` compiled with ``jax.jit`` (compile time reported separately,
  then the median of ``--repeats`` calls) against :func:`tensorly.decomposition.parafac` with the NumPy
  backend in float32 and float64 and with TensorLy's JAX backend (float32, eager — ``parafac`` cannot be
  jitted; after one untimed warm-up call);
* Tucker-2 at ranks (32, 32), 10 HOOI sweeps, against ``partial_tucker`` (NumPy, float32);
* TT with ``in_modes = out_modes = (8, 8)``, ranks (9, 32), against ``tensor_train`` on the same reordered
  tensor (NumPy, float32);
* Spatial (rank 32) and Separable (multiplier 2), efficonv only (TensorLy has no such fit);
* CP by Levenberg–Marquardt (``method="lm"``, 1 ALS sweep + 99 steps), efficonv only.

efficonv and the NumPy TensorLy runs are timed interleaved (:func:`experiments.common.timing.measure`: warm-up,
then the median of the timed calls) so that load from other processes hits both alike; the TensorLy side is
:mod:`experiments.bench.peers.tensorly_decompositions`; the machine's load average is recorded. Prints a table
and writes JSON (default ``experiments/results/bench_decompose.json``) with machine information.
TensorLy is skipped, with a printed reason, when it is not installed.

On a CPU shared with other processes, run it with ``OPENBLAS_NUM_THREADS=1`` as well: both NumPy's
OpenBLAS (TensorLy) and the SciPy OpenBLAS behind jaxlib's LAPACK kernels (the small Cholesky solves of
CP-ALS) spin-wait for busy cores and slow down several-fold under contention; the JSON records the
thread settings.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from efficonv.decompose import cp, separable, spatial, tt, tucker2
from experiments.bench.peers import tensorly_decompositions
from experiments.cli import command_line
from experiments.common.environment import load_average, machine_info
from experiments.common.results import RESULTS_DIR
from experiments.common.timing import measure

DEFAULT_OUT = os.path.join(RESULTS_DIR, "bench_decompose.json")
SHAPE = (3, 3, 64, 64)
CP_RANK, CP_SWEEPS = 32, 100
TUCKER_RANKS, TUCKER_SWEEPS = (32, 32), 10
TT_MODES, TT_RANKS = ((8, 8), (8, 8)), (9, 32)
SPATIAL_RANK, SEPARABLE_M = 32, 2
SEEDS = range(5)
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def kernels(seed: int) -> dict[str, np.ndarray]:
  """The benchmark kernels, float32, He-scaled (std ``sqrt(2 / (kh·kw·C_in))``)."""
  rng = np.random.default_rng(seed)
  kh, kw, cin, _ = SHAPE
  he = np.sqrt(2.0 / (kh * kw * cin))
  structure_rank = 48
  factors = [rng.standard_normal((size, structure_rank)) for size in SHAPE]
  weights = 0.8 ** np.arange(structure_rank)  # decaying spectrum, like a trained layer's
  low_rank = np.einsum("r,xr,yr,cr,sr->xycs", weights, *factors)
  low_rank *= he / low_rank.std()
  noise = 0.2 * he * rng.standard_normal(SHAPE)
  return {
    "trained_like": (low_rank + noise).astype(np.float32),
    "random": (he * rng.standard_normal(SHAPE)).astype(np.float32),
  }


def _compiled(fn: Callable[[jax.Array], Any], kernel: np.ndarray) -> tuple[Callable[..., Any], float]:
  """AOT-compiles ``fn`` for ``kernel``; returns the executable and the compile time (s)."""
  start = time.perf_counter()
  exe = jax.jit(fn).lower(jnp.asarray(kernel)).compile()
  return exe, time.perf_counter() - start


def bench_kernel(name: str, kernel: np.ndarray, *, repeats: int, tensorly_jax_repeats: int) -> dict[str, Any]:
  """All measurements on one kernel."""
  ours = {
    "cp/efficonv": functools.partial(cp, rank=CP_RANK, n_iter=CP_SWEEPS, tol=0.0, init="svd"),
    "cp-lm/efficonv": functools.partial(cp, rank=CP_RANK, n_iter=CP_SWEEPS, tol=0.0, init="svd", method="lm"),
    "tucker2/efficonv": functools.partial(tucker2, rank=TUCKER_RANKS, n_iter=TUCKER_SWEEPS, tol=0.0),
    "tt/efficonv": functools.partial(tt, rank=TT_RANKS, in_modes=TT_MODES[0], out_modes=TT_MODES[1]),
    "spatial/efficonv": functools.partial(spatial, rank=SPATIAL_RANK),
    "separable/efficonv": functools.partial(separable, depth_multiplier=SEPARABLE_M),
  }
  w = jnp.asarray(kernel)
  candidates: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
  records: dict[str, dict[str, Any]] = {}
  for label, fn in ours.items():
    exe, compile_s = _compiled(fn, kernel)
    _, info = exe(w)
    candidates[label] = (exe, (w,))
    records[label] = {
      "compile_s": compile_s,
      "relative_error": float(info.relative_error),
      "n_iter": int(info.n_iter),
      "degeneracy": float(info.degeneracy),
    }
    _log(f"[{name}] compiled {label} in {compile_s:.2f}s, error {float(info.relative_error):.5f}")

  have_tensorly = tensorly_decompositions.version() is not None
  skipped = None if have_tensorly else "tensorly is not installed (pip install tensorly): TensorLy columns skipped"
  if skipped:
    print(skipped)
  else:
    with warnings.catch_warnings():
      # parafac's SVD init warns that the 3-long spatial modes have fewer than 32 singular vectors.
      warnings.simplefilter("ignore", UserWarning)
      cases = tensorly_decompositions.numpy_cases(
        kernel,
        cp_rank=CP_RANK,
        cp_sweeps=CP_SWEEPS,
        tucker_ranks=TUCKER_RANKS,
        tucker_sweeps=TUCKER_SWEEPS,
        tt_modes=TT_MODES,
        tt_ranks=TT_RANKS,
      )
      for label, (call, err) in cases.items():
        result = call()
        records[label] = {"relative_error": err(result)}
        candidates[label] = (call, ())
        _log(f"[{name}] {label}: error {records[label]['relative_error']:.5f}")
  stats = measure(candidates, repeats=repeats, warmup=1, max_seconds=20.0, min_repeats=3)
  for label, s in stats.items():
    records[label].update(s.as_dict())
  if have_tensorly and tensorly_jax_repeats > 0:
    s, err = tensorly_decompositions.jax_parafac(
      kernel, cp_rank=CP_RANK, cp_sweeps=CP_SWEEPS, repeats=tensorly_jax_repeats
    )
    records["cp/tensorly-jax-f32"] = {"relative_error": err, **s.as_dict()}
    _log(f"[{name}] cp/tensorly-jax-f32: {s.median_ms:.0f} ms, error {err:.5f}")
  return {
    "kernel": name,
    "load_average_after": load_average(),
    "records": records,
    "cp_error_over_init_seeds": _cp_seed_spread(kernel, have_tensorly),
    "tensorly_skipped": skipped,
  }


def _cp_seed_spread(kernel: np.ndarray, have_tensorly: bool) -> dict[str, list[float]]:
  """CP errors over 5 seeds of the SVD init's random columns (the 3-long modes need 29 of the 32).

  Which local optimum ALS reaches depends on those columns; the spread shows how much of an error
  difference between the libraries is just the draw.
  """
  fit = jax.jit(lambda w, key: cp(w, CP_RANK, n_iter=CP_SWEEPS, tol=0.0, init="svd", key=key)[1].relative_error)
  spread = {"efficonv": [float(fit(jnp.asarray(kernel), jax.random.key(seed))) for seed in SEEDS]}
  if have_tensorly:
    spread["tensorly-numpy-f32"] = tensorly_decompositions.cp_errors_over_seeds(
      kernel, cp_rank=CP_RANK, cp_sweeps=CP_SWEEPS, seeds=SEEDS
    )
  return spread


def _speedups(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
  """TensorLy time over efficonv's (medians, and fastest calls), and the error difference, per peer.

  On a loaded machine the medians of both sides inflate; the fastest calls are the closest to the
  unloaded cost, so both ratios are reported. ``error_difference`` is efficonv's relative error minus
  the peer's (negative: efficonv fits better).
  """
  out = {}
  for label, rec in records.items():
    method, impl = label.split("/")
    if impl == "efficonv" or f"{method}/efficonv" not in records:
      continue
    ours = records[f"{method}/efficonv"]
    out[label] = {
      "speedup": rec["median_ms"] / ours["median_ms"],
      "speedup_fastest": rec["min_ms"] / ours["min_ms"],
      "error_difference": ours["relative_error"] - rec["relative_error"],
    }
  return out


def _table(result: dict[str, Any]) -> str:
  lines = [f"kernel {result['kernel']}  (load average after: {result['load_average_after']})"]
  lines.append(
    f"{'method/implementation':28s} {'median ms':>10s} {'min ms':>9s} {'compile s':>9s} {'rel. error':>10s} "
    f"{'speedup (median/min)':>21s}"
  )
  for label, rec in result["records"].items():
    compile_s = f"{rec['compile_s']:.2f}" if "compile_s" in rec else "-"
    ratio = result["speedups"].get(label)
    speedup = f"{ratio['speedup']:.1f}x / {ratio['speedup_fastest']:.1f}x" if ratio else "-"
    lines.append(
      f"{label:28s} {rec['median_ms']:10.2f} {rec['min_ms']:9.2f} {compile_s:>9s} "
      f"{rec['relative_error']:10.6f} {speedup:>21s}"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=DEFAULT_OUT, help="JSON output path")
  parser.add_argument("--repeats", type=int, default=20, help="timed calls per efficonv variant")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--tensorly-jax-repeats",
    type=int,
    default=3,
    help="timed calls of TensorLy parafac on its JAX backend, after one untimed warm-up (0: skip)",
  )
  args = parser.parse_args(argv)
  results = []
  for name, kernel in kernels(args.seed).items():
    result = bench_kernel(name, kernel, repeats=args.repeats, tensorly_jax_repeats=args.tensorly_jax_repeats)
    result["speedups"] = _speedups(result["records"])
    spread = "; ".join(
      f"{impl} median {np.median(errs):.6f} (min {min(errs):.6f}, max {max(errs):.6f})"
      for impl, errs in result["cp_error_over_init_seeds"].items()
    )
    print(_table(result) + f"\nCP error over {len(SEEDS)} init seeds: {spread}\n", flush=True)
    results.append(result)
  tensorly_version = tensorly_decompositions.version()
  report = {
    "benchmark": "bench_decompose",
    "shape": SHAPE,
    "settings": {
      "cp": {"rank": CP_RANK, "sweeps": CP_SWEEPS, "init": "svd", "tol": 0},
      "tucker2": {"ranks": TUCKER_RANKS, "hooi_sweeps": TUCKER_SWEEPS, "tol": 0},
      "tt": {"in_modes": TT_MODES[0], "out_modes": TT_MODES[1], "ranks": TT_RANKS},
      "spatial": {"rank": SPATIAL_RANK},
      "separable": {"depth_multiplier": SEPARABLE_M},
      "repeats": args.repeats,
      "seed": args.seed,
    },
    "machine": {
      **machine_info(command=command_line(__spec__.name, argv)),
      "tensorly": tensorly_version,
      "numpy": np.__version__,
      # BLAS threading changes both sides: TensorLy's NumPy calls and the LAPACK kernels jaxlib uses.
      "thread_env": {name: os.environ.get(name) for name in THREAD_ENV},
    },
    "results": results,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.out}")
  return report


if __name__ == "__main__":
  main()
