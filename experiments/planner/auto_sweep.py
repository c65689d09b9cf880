"""Does ``implementation="auto"`` pick the faster path near the crossover? A rank sweep.

Run as ``python -m experiments.planner.auto_sweep [--json PATH] [--repeats N]``.

The layer benchmark uses compressive ranks, where the factorized path wins
by a wide margin. This sweep raises the ranks (CP, Tucker-2, spatial) and
the depth multiplier (separable, up to its maximum kh·kw) on 8×16×16×128 and 8×32×32×64, 3×3, until
the dense reconstruction wins, and times the forward pass of both forced
implementations (interleaved, in one run) next to what :meth:`plan` picks.
``choice/best`` is the chosen path's median over the faster one's; the
target is ≤ 1.10 everywhere. Its records have the fields of
:mod:`experiments.bench.layers` records, so :mod:`experiments.planner.fit_rates` can
fit the cost model to them (``python -m experiments.planner.fit_rates PATH``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

import efficonv
from experiments.bench.cases import Shape
from experiments.cli import command_line
from experiments.common.environment import machine_info
from experiments.common.timing import compile_fn, measure
from experiments.planner.fit_rates import format_steps

SHAPES = (Shape(8, 16, 16, 128, 3), Shape(8, 32, 32, 64, 3))


def sweep_formats(shape: Shape, key: jax.Array) -> list[tuple[str, str, efficonv.Format]]:
  """``(scheme, rank label, format)`` for every swept rank on ``shape``."""
  c, ks = shape.c, shape.kernel_size
  k = iter(jax.random.split(key, 32))
  out: list[tuple[str, str, efficonv.Format]] = []
  for r in (c // 2, c, 2 * c, 4 * c):
    out.append(("cp", f"rank {r}", efficonv.CP.init(next(k), c, c, ks, r)))
  for r in (c // 2, (3 * c) // 4, c):
    out.append(("tucker2", f"ranks ({r}, {r})", efficonv.Tucker2.init(next(k), c, c, ks, (r, r))))
  for r in (c // 2, c, 2 * c):
    out.append(("spatial", f"rank {r}", efficonv.Spatial.init(next(k), c, c, ks, r)))
  for m in (4, 9):  # at most kh·kw
    out.append((f"separable_m{m}", f"multiplier {m}", efficonv.Separable.init(next(k), c, c, ks, depth_multiplier=m)))
  return out


def _forward(impl: str) -> Callable[[jax.Array, efficonv.Format], jax.Array]:
  def fn(x: jax.Array, fmt: efficonv.Format) -> jax.Array:
    return fmt.conv(x, implementation=impl)  # type: ignore[arg-type]

  return fn


def run_shape(shape: Shape, repeats: int, max_seconds: float) -> list[dict[str, Any]]:
  """Times both forced implementations of every swept format on ``shape``; returns bench-style records."""
  x = jax.random.normal(jax.random.key(1), shape.input_shape, jnp.float32)
  formats = sweep_formats(shape, jax.random.key(0))
  candidates, meta = {}, {}
  cache: dict[tuple[str, str], Any] = {}
  for scheme, rank, fmt in formats:
    for impl in ("factorized", "reconstructed"):
      name = f"{scheme}/{rank}/{impl}"
      candidates[name] = (compile_fn(_forward(impl), (x, fmt), None, cache), (x, fmt))
      meta[name] = (scheme, rank, impl, fmt)
  stats = measure(candidates, repeats=repeats, warmup=2, max_seconds=max_seconds)
  dense_ms = min(s.median_ms for n, s in stats.items() if n.endswith("/reconstructed"))
  records = []
  for name, s in stats.items():
    scheme, rank, impl, fmt = meta[name]
    plan = fmt.plan(shape.input_shape)
    macs = fmt.macs(shape.input_shape)
    # The depthwise path a forced factorized call runs ("shift" on CPU).
    forced = fmt.plan(shape.input_shape, implementation="factorized")
    depthwise = forced.depthwise if impl == "factorized" else None
    steps, n_steps = format_steps(fmt, shape, impl, depthwise)
    records.append(
      {
        "variant": name,
        "scheme": f"{scheme} {rank}",
        "implementation": impl,
        "depthwise": depthwise,
        "steps": steps,
        "n_steps": n_steps,
        "auto_choice": plan.implementation,
        "shape": {"n": shape.n, "h": shape.h, "w": shape.w, "c": shape.c, "k": shape.k},
        "shape_label": shape.label,
        "pass": "forward",
        **s.as_dict(),
        "macs": macs,
        "dense_macs": shape.dense_macs,
        "mac_ratio": shape.dense_macs / macs,
        "dense_median_ms": dense_ms,
        "estimated_ms": 1e3 * (plan.estimated_factorized_s if impl == "factorized" else plan.estimated_reconstructed_s),
      }
    )
  return records


def decisions(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per (shape, scheme and rank): auto's choice and its measured time over the best."""
  out = []
  keys = dict.fromkeys((r["shape_label"], r["scheme"]) for r in records)
  for label, scheme in keys:
    pair = {r["implementation"]: r for r in records if r["shape_label"] == label and r["scheme"] == scheme}
    choice = pair["factorized"]["auto_choice"]
    best = min(pair.values(), key=lambda r: r["median_ms"])
    out.append(
      {
        "shape_label": label,
        "scheme": scheme,
        "auto_choice": choice,
        "best": best["implementation"],
        "choice_over_best": pair[choice]["median_ms"] / best["median_ms"],
        "factorized_ms": pair["factorized"]["median_ms"],
        "reconstructed_ms": pair["reconstructed"]["median_ms"],
        "estimated_factorized_ms": pair["factorized"]["estimated_ms"],
        "estimated_reconstructed_ms": pair["reconstructed"]["estimated_ms"],
        "mac_ratio": pair["factorized"]["mac_ratio"],
      }
    )
  return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the sweep, prints the decisions, optionally writes JSON."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", help="write the records and decisions as JSON to this path")
  parser.add_argument("--repeats", type=int, default=15, help="timed calls per function (default 15)")
  parser.add_argument("--max-seconds", type=float, default=0.5, help="timing budget per function (default 0.5)")
  args = parser.parse_args(argv)
  records = [r for shape in SHAPES for r in run_shape(shape, args.repeats, args.max_seconds)]
  rows = decisions(records)
  print(
    f"{'shape':16s} {'scheme':28s} {'MAC ratio':>9s} {'fact ms':>8s} {'recon ms':>8s} {'est f/r ms':>14s}  auto -> c/b"
  )
  for d in rows:
    flag = "" if d["choice_over_best"] <= 1.10 else "  <-- beyond 10%"
    print(
      f"{d['shape_label']:16s} {d['scheme']:28s} {d['mac_ratio']:9.2f} {d['factorized_ms']:8.3f} "
      f"{d['reconstructed_ms']:8.3f} {d['estimated_factorized_ms']:6.2f}/{d['estimated_reconstructed_ms']:6.2f}  "
      f"{d['auto_choice']} -> {d['choice_over_best']:.2f}{flag}"
    )
  command = command_line(__spec__.name, argv)
  result = {"machine": machine_info(command=command), "records": records, "decisions": rows}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1, default=str)
  return result


if __name__ == "__main__":
  main()
