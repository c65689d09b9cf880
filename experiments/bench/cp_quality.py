"""CP decomposition quality and speed of efficonv against TensorLy ``parafac`` (issue 11, item 6).

Run as ``python -m experiments.bench.cp_quality [--out PATH] [--tensorly-seeds N] [--checkpoint DIR] ...``.

**Quality.** On each kernel, at the same rank and number of ALS sweeps (``tol=0`` on both sides, so both do
exactly ``--sweeps`` sweeps), the relative error ``‖W − Ŵ‖ / ‖W‖`` of

* :func:`efficonv.decompose.cp` with its defaults (``init="svd"``, ``n_restarts`` restarts — the second
  from the deterministic ``"svd_terms"`` start — best kept), and with ``n_restarts=1`` (the single fit
  from the SVD init);
* :func:`tensorly.decomposition.parafac` (NumPy backend, float32, ``init="svd"``) over ``--tensorly-seeds``
  seeds of its SVD init's random columns (``random_state=0, 1, ...``): TensorLy's error is a draw, and the
  record keeps every draw, their median and their best.

The kernels:

* **synthetic**: ``3×3×64×64`` kernels with a CP structure of rank 48 (term weights ``decay**r``) plus 20%
  Gaussian noise, He-scaled, fitted at rank 32 (the construction of :mod:`experiments.bench.decompose`,
  over a few decays and seeds, the ones where a single efficonv fit lost to TensorLy);
* **trained**: the convs (16–32 channels) of a small CNN trained here on Fashion-MNIST for a few hundred
  steps (cached as ``trained_kernels.npz`` next to the output, reused when present), and with
  ``--checkpoint`` the ``3×3`` convs of a checkpointed network (an orbax checkpoint directory, e.g. the
  compress pipeline's VGG baseline) up to ``--max-channels`` channels; each at the CP rank of
  ``rank.ParamFraction(0.25)``.

**Speed.** ``3×3×64×64`` at rank 32, ``--sweeps`` sweeps, on the first synthetic kernel: eager efficonv
calls (``n_restarts=1`` and the default, as a user calls ``cp``) against TensorLy float32, timed interleaved
(:func:`experiments.common.timing.measure`: warm-up, then the median of the timed calls). The first
efficonv call of each (trace and compile plus one fit) is reported separately. ``mttkrp_gemm_floor`` times a
loop of only the two GEMMs every ALS sweep needs (the MTTKRPs of the two channel modes, each contracting
all of ``W`` with one factor), ``--sweeps`` times: no exact ALS fit of that many sweeps can run faster on
this machine, so ``max_speedup`` bounds what any implementation of the same sweeps can reach against
TensorLy here. Thread settings are recorded; by
default both sides use every core.

Writes JSON (default ``experiments/results/cp_quality/cp_quality.json``) with the command, the machine and the
versions. TensorLy is an optional peer: without it, only efficonv's errors are recorded, with the reason.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from efficonv import rank as rank_rules
from efficonv.decompose import cp
from efficonv.decompose.cp import DEFAULT_RESTARTS
from experiments.bench.peers import tensorly_decompositions
from experiments.cli import command_line
from experiments.common import results
from experiments.common.environment import environment, load_average
from experiments.common.results import RESULTS_DIR
from experiments.common.timing import measure

DEFAULT_OUT = os.path.join(RESULTS_DIR, "cp_quality", "cp_quality.json")
SHAPE = (3, 3, 64, 64)
SYNTHETIC_RANK = 32
# (decay, seed) of the synthetic kernels.
SYNTHETIC_CASES = ((0.8, 0), (0.93, 1), (0.95, 2), (0.97, 1), (1.0, 1), (1.0, 2))
TRAINED_FRACTION = 0.25
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def synthetic_kernel(decay: float, seed: int) -> np.ndarray:
  """Rank-48 CP structure with weights ``decay**r`` plus 20% noise, He-scaled, float32 (``SHAPE``)."""
  rng = np.random.default_rng(seed)
  kh, kw, cin, _ = SHAPE
  he = np.sqrt(2.0 / (kh * kw * cin))
  factors = [rng.standard_normal((size, 48)) for size in SHAPE]
  low_rank = np.einsum("r,xr,yr,cr,sr->xycs", decay ** np.arange(48), *factors)
  low_rank *= he / low_rank.std()
  return (low_rank + 0.2 * he * rng.standard_normal(SHAPE)).astype(np.float32)


def train_small_cnn(steps: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Trains a 4-conv CNN (1→16→16, pool, →32→32, global pool, dense) on Fashion-MNIST; returns its 3×3 kernels.

  Adam, batch 64: long enough for the kernels to leave their random init (a real trained structure), short
  enough for a shared CPU.
  """
  import optax

  from experiments.data.load import load

  data = load("fashion_mnist", "train", download=False)
  images = (np.asarray(data.images, np.float32).reshape(-1, 28, 28, 1) / 255.0 - 0.286) / 0.353
  labels = np.asarray(data.labels)
  widths = [(1, 16), (16, 16), (16, 32), (32, 32)]
  keys = jax.random.split(jax.random.key(seed), len(widths) + 1)
  params = {
    f"conv{i}": jax.random.normal(k, (3, 3, cin, cout)) * np.sqrt(2.0 / (9 * cin))
    for i, (k, (cin, cout)) in enumerate(zip(keys, widths))
  }
  params["dense"] = jax.random.normal(keys[-1], (32, 10)) / np.sqrt(32)

  def forward(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    for i in range(len(widths)):
      x = jax.lax.conv_general_dilated(x, p[f"conv{i}"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
      x = jax.nn.relu(x)
      if i == 1:
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return x.mean(axis=(1, 2)) @ p["dense"]

  def loss(p: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean()

  optimizer = optax.adam(2e-3)
  state = optimizer.init(params)

  @jax.jit
  def step(p: Any, s: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
    value, grads = jax.value_and_grad(loss)(p, x, y)
    updates, s = optimizer.update(grads, s, p)
    return optax.apply_updates(p, updates), s, value

  rng = np.random.default_rng(seed)
  for i in range(steps):
    batch = rng.integers(0, len(labels), 64)
    params, state, value = step(params, state, images[batch], labels[batch])
    if i % 100 == 0 or i == steps - 1:
      _log(f"train step {i}: loss {float(value):.3f}")
  return {f"small_cnn/conv{i}": np.asarray(params[f"conv{i}"]) for i in range(1, len(widths))}


def trained_kernels(cache: Path, steps: int) -> dict[str, np.ndarray]:
  """The small CNN's kernels from ``cache`` (an ``.npz``), training it and writing the cache when missing."""
  if cache.is_file():
    with np.load(cache) as f:
      return {name: f[name] for name in f.files}
  kernels = train_small_cnn(steps)
  cache.parent.mkdir(parents=True, exist_ok=True)
  np.savez(cache, **kernels)
  return kernels


def checkpoint_kernels(directory: str, max_channels: int) -> dict[str, np.ndarray]:
  """The ``3×3`` conv kernels (``C_in, C_out >= 2`` and ``<= max_channels``) of an orbax checkpoint."""
  import orbax.checkpoint as ocp

  def leaves(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, np.ndarray]]:
    if isinstance(tree, dict):
      for key, value in tree.items():
        yield from leaves(value, (*path, str(key)))
    else:
      yield "/".join(path), np.asarray(tree)

  tree = ocp.PyTreeCheckpointer().restore(os.path.abspath(directory))
  return {
    f"checkpoint/{name}": a.astype(np.float32)
    for name, a in leaves(tree)
    if a.ndim == 4 and a.shape[:2] == (3, 3) and 2 <= min(a.shape[2:]) and max(a.shape[2:]) <= max_channels
  }


def compare(kernel: np.ndarray, rank: int, *, sweeps: int, tensorly_seeds: int) -> dict[str, Any]:
  """efficonv's errors (default and single fit) and TensorLy's over seeds, at the same rank and sweeps."""
  w = jnp.asarray(kernel)
  record: dict[str, Any] = {"shape": list(kernel.shape), "rank": rank, "sweeps": sweeps}
  for label, restarts in (("efficonv", DEFAULT_RESTARTS), ("efficonv_single", 1)):
    _, info = cp(w, rank, n_iter=sweeps, tol=0.0, n_restarts=restarts)
    record[label] = float(info.relative_error)
  if tensorly_decompositions.version() is not None and tensorly_seeds > 0:
    errors = tensorly_decompositions.cp_errors_over_seeds(
      kernel, cp_rank=rank, cp_sweeps=sweeps, seeds=range(tensorly_seeds)
    )
    record["tensorly"] = {"errors": errors, "median": float(np.median(errors)), "best": min(errors)}
    record["efficonv_minus_tensorly_median"] = record["efficonv"] - record["tensorly"]["median"]
    record["efficonv_minus_tensorly_best"] = record["efficonv"] - record["tensorly"]["best"]
  return record


def speed(kernel: np.ndarray, *, sweeps: int, repeats: int) -> dict[str, Any]:
  """Wall time of eager efficonv fits against TensorLy float32 at ``SYNTHETIC_RANK``, same sweeps."""
  w = jnp.asarray(kernel)
  candidates: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
  first_call: dict[str, float] = {}
  jax.clear_caches()  # the quality runs compiled these fits: the first call is to pay for its compile
  for label, restarts in (("efficonv_single", 1), ("efficonv", DEFAULT_RESTARTS)):
    # Eager calls, as a user makes them (each compiles its fit once, with the library's CPU options).
    fn = functools.partial(cp, rank=SYNTHETIC_RANK, n_iter=sweeps, tol=0.0, n_restarts=restarts)
    start = time.perf_counter()
    jax.block_until_ready(fn(w))
    first_call[label] = (time.perf_counter() - start) * 1e3
    candidates[label] = (fn, (w,))
  candidates["mttkrp_gemm_floor"] = (jax.jit(functools.partial(mttkrp_gemm_loop, sweeps=sweeps)), (w,))
  if tensorly_decompositions.version() is not None:
    import tensorly as tl
    from tensorly.decomposition import parafac

    tl.set_backend("numpy")

    def tensorly_call() -> Any:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the 3-long modes have fewer than 32 singular vectors
        return parafac(kernel, SYNTHETIC_RANK, n_iter_max=sweeps, tol=0, init="svd")

    candidates["tensorly_f32"] = (tensorly_call, ())
  stats = measure(candidates, repeats=repeats, warmup=1, min_repeats=3, max_seconds=60.0)
  record: dict[str, Any] = {
    "shape": list(SHAPE),
    "rank": SYNTHETIC_RANK,
    "sweeps": sweeps,
    "first_call_ms": first_call,
    "stats": {label: s.as_dict() for label, s in stats.items()},
  }
  if "tensorly_f32" in stats:
    peer = stats["tensorly_f32"]
    record["speedup"] = {
      label: {"median": peer.median_ms / stats[label].median_ms, "fastest": peer.min_ms / stats[label].min_ms}
      for label in first_call
    }
    record["speedup_first_call"] = {label: peer.median_ms / ms for label, ms in first_call.items()}
    floor = stats["mttkrp_gemm_floor"].median_ms
    record["max_speedup"] = {
      "efficonv_single": peer.median_ms / floor,
      "efficonv": peer.median_ms / (DEFAULT_RESTARTS * floor),
    }
  return record


def mttkrp_gemm_loop(w: jax.Array, *, sweeps: int) -> jax.Array:
  """``sweeps`` iterations of the two channel-mode MTTKRP GEMMs of an ALS sweep at ``SYNTHETIC_RANK``, nothing else.

  ``W_rows A_out`` (``(kh·kw·C_in) × C_out`` times ``C_out × R``) and ``W_rows^T K`` (the Khatri–Rao
  product of the other factors, ``(kh·kw·C_in) × R``), each fed by the other so that XLA cannot hoist them
  out of the loop: the floor under the same number of sweeps of any exact CP-ALS of ``W``.
  """
  kh, kw, cin, cout = w.shape
  w_rows = w.reshape(kh * kw * cin, cout)
  w_cols = jnp.transpose(w_rows).copy()
  highest = jax.lax.Precision.HIGHEST

  def sweep(_: jax.Array, factors: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    a_out, _ = factors
    # tanh keeps the iterates bounded (no overflow, no denormals) at the cost of one small fusion each.
    khatri_rao = jnp.tanh(jnp.dot(w_rows, a_out, precision=highest))
    return jnp.tanh(jnp.dot(w_cols, khatri_rao, precision=highest)), khatri_rao

  start = (jnp.ones((cout, SYNTHETIC_RANK), w.dtype), jnp.zeros((kh * kw * cin, SYNTHETIC_RANK), w.dtype))
  return jax.lax.fori_loop(0, sweeps, sweep, start)[0]


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=DEFAULT_OUT, help="JSON output path")
  parser.add_argument("--sweeps", type=int, default=100, help="ALS sweeps on both sides (tol=0)")
  parser.add_argument("--tensorly-seeds", type=int, default=3, help="TensorLy SVD-init seeds per kernel")
  parser.add_argument("--synthetic", type=int, default=len(SYNTHETIC_CASES), help="how many synthetic cases")
  parser.add_argument("--train-steps", type=int, default=300, help="training steps of the small CNN (if not cached)")
  parser.add_argument("--checkpoint", default=None, help="orbax checkpoint directory with more trained convs")
  parser.add_argument("--max-channels", type=int, default=128, help="largest channel count taken from --checkpoint")
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per candidate in the speed test (0: skip)")
  args = parser.parse_args(argv)
  out = Path(args.out)
  have_tensorly = tensorly_decompositions.version() is not None
  skipped = None if have_tensorly else "tensorly is not installed (pip install tensorly): TensorLy columns skipped"
  if skipped:
    _log(skipped)

  kernels: dict[str, tuple[np.ndarray, int]] = {}
  for decay, seed in SYNTHETIC_CASES[: args.synthetic]:
    kernels[f"synthetic/decay{decay}/seed{seed}"] = (synthetic_kernel(decay, seed), SYNTHETIC_RANK)
  trained = trained_kernels(out.parent / "trained_kernels.npz", args.train_steps)
  if args.checkpoint:
    trained.update(checkpoint_kernels(args.checkpoint, args.max_channels))
  for name, kernel in trained.items():
    choice = rank_rules.choose_rank("cp", kernel.shape, rank_rules.ParamFraction(TRAINED_FRACTION))
    kernels[f"trained/{name}"] = (kernel, int(choice.rank))

  records = []
  for name, (kernel, rank) in kernels.items():
    record = {"kernel": name, **compare(kernel, rank, sweeps=args.sweeps, tensorly_seeds=args.tensorly_seeds)}
    records.append(record)
    peer = record.get("tensorly", {})
    _log(
      f"{name} {tuple(kernel.shape)} rank {rank}: efficonv {record['efficonv']:.5f} "
      f"(single fit {record['efficonv_single']:.5f}), tensorly median {peer.get('median', float('nan')):.5f} "
      f"best {peer.get('best', float('nan')):.5f}"
    )
  timing = None
  if args.repeats > 0:
    timing = speed(synthetic_kernel(*SYNTHETIC_CASES[0]), sweeps=args.sweeps, repeats=args.repeats)
  if timing:
    _log(f"speed: {timing.get('speedup')}, first call {timing['first_call_ms']}")
  report = {
    "benchmark": "cp_quality",
    "settings": {
      "sweeps": args.sweeps,
      "tol": 0,
      "init": "svd",
      "n_restarts": DEFAULT_RESTARTS,
      "tensorly_seeds": args.tensorly_seeds,
      "trained_rank_rule": f"ParamFraction({TRAINED_FRACTION})",
      "train_steps": args.train_steps,
      "checkpoint": args.checkpoint,
    },
    "machine": {
      **environment(command=command_line(__spec__.name if __spec__ else "experiments.bench.cp_quality", argv)),
      "tensorly": tensorly_decompositions.version(),
      "numpy": np.__version__,
      "thread_env": {name: os.environ.get(name) for name in THREAD_ENV},
      "load_average_after": load_average(),
    },
    "tensorly_skipped": skipped,
    "quality": records,
    "never_worse_than_tensorly_median": all(r.get("efficonv_minus_tensorly_median", 0) <= 0 for r in records),
    "never_worse_than_tensorly_best": all(r.get("efficonv_minus_tensorly_best", 0) <= 0 for r in records),
    "speed": timing,
  }
  out.parent.mkdir(parents=True, exist_ok=True)
  results.write(out, report)
  print(f"wrote {out}")
  return report


if __name__ == "__main__":
  main()
