"""Quick check of the headline speedups on one 8×32×32×64 → 64, 3×3 convolution.

Run as ``python -m experiments.bench.quick_timing [--json PATH] [--repeats N]``.

Times, interleaved in one run (see :mod:`experiments.common.timing`):

* every dense implementation of :mod:`experiments.bench.dense_baselines`; the
  fastest is the baseline of every speedup;
* :class:`efficonv.nnx.CPConv` at rank 16 with ``implementation="auto"``
  (and, for reference, forced ``"factorized"`` / ``"reconstructed"``), with
  what ``plan()`` chose;
* :class:`efficonv.nnx.SeparableConv` (depth multiplier 1, ``"auto"``);
* the depthwise 3×3 conv on the same input through XLA's grouped convolution
  and through shift-and-add.

All layers are built with ``use_bias=False`` so that they compute exactly
what the dense conv computes. Speedups are ``best dense median / median``;
the MAC ratio (dense MACs / layer MACs) is the ideal speedup beside them. The
targets checked: CP ``auto`` speedup ≥ 0.9 × its MAC ratio, and shift-and-add
depthwise ≥ 20× faster than XLA's grouped path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from efficonv import kernels
from efficonv.nnx import CPConv, SeparableConv
from experiments.bench.dense_baselines import dense_methods
from experiments.bench.functional import as_pure_function
from experiments.cli import command_line
from experiments.common.environment import load_average, machine_info
from experiments.common.timing import Stats, compile_fn, measure

INPUT_SHAPE = (8, 32, 32, 64)
OUT_FEATURES = 64
KERNEL_SIZE = (3, 3)
CP_RANK = 16
CP_TARGET = 0.9  # CP auto speedup / MAC ratio
DEPTHWISE_TARGET = 20.0  # shift-and-add speedup over XLA's grouped depthwise
NOISY = 0.25  # relative IQR above which a measurement is flagged


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One timed function.

  Attributes:
    name: unique label.
    group: ``"dense"``, ``"cp"``, ``"separable"`` or ``"depthwise"``.
    fn: the compiled executable.
    args: its arguments.
    macs: multiply-accumulates of the scheme (the format's ``macs()``; what the MAC ratio uses).
    executed_macs: multiply-accumulates actually run (the dense conv's for ``reconstructed``).
    compiler_options: XLA options it was compiled with.
    note: what it is (implementation chosen etc.).
  """

  name: str
  group: str
  fn: Callable[..., Any]
  args: tuple[Any, ...]
  macs: int
  executed_macs: int
  compiler_options: dict[str, str]
  note: str


def _layer_candidate(
  name: str, group: str, layer: nnx.Module, x: jax.Array, macs: int, note: str, executed_macs: int | None = None
) -> Candidate:
  fn, params = as_pure_function(layer)
  executed = macs if executed_macs is None else executed_macs
  return Candidate(name, group, compile_fn(fn, (x, params)), (x, params), macs, executed, {}, note)


def build_candidates(key: jax.Array) -> tuple[list[Candidate], dict[str, Any]]:
  """Builds every timed function on :data:`INPUT_SHAPE`.

  Returns:
    ``(candidates, plans)``: the candidates, and what ``plan()`` chose for
    the ``auto`` layers (JSON-ready).
  """
  kx, kk, kd = jax.random.split(key, 3)
  x = jax.random.normal(kx, INPUT_SHAPE, jnp.float32)
  cin = INPUT_SHAPE[-1]
  kernel = jax.random.normal(kk, (*KERNEL_SIZE, cin, OUT_FEATURES), jnp.float32) / (9 * cin) ** 0.5
  n, h, w, _ = INPUT_SHAPE
  dense_macs = n * h * w * KERNEL_SIZE[0] * KERNEL_SIZE[1] * cin * OUT_FEATURES
  out: list[Candidate] = []
  for method in dense_methods():
    out.append(
      Candidate(
        f"dense/{method.name}",
        "dense",
        compile_fn(method.fn, (x, kernel), method.compiler_options),
        (x, kernel),
        dense_macs,
        dense_macs,
        dict(method.compiler_options),
        "dense conv",
      )
    )

  rngs = nnx.Rngs(0)
  cp = CPConv(cin, OUT_FEATURES, KERNEL_SIZE, rank=CP_RANK, use_bias=False, rngs=rngs)
  cp_plan = cp.plan(INPUT_SHAPE)
  cp_macs = cp.cost_macs(INPUT_SHAPE)
  note = f"efficonv.nnx.CPConv rank {CP_RANK}, auto chose {cp_plan.implementation} (depthwise {cp_plan.depthwise})"
  auto_executed = dense_macs if cp_plan.implementation == "reconstructed" else cp_macs
  out.append(_layer_candidate("cp/auto", "cp", cp, x, cp_macs, note, auto_executed))
  for impl in ("factorized", "reconstructed"):
    forced = CPConv.from_format(cp.format, use_bias=False, implementation=impl)
    executed = dense_macs if impl == "reconstructed" else cp_macs
    note = f"efficonv.nnx.CPConv rank {CP_RANK}, forced"
    out.append(_layer_candidate(f"cp/{impl}", "cp", forced, x, cp_macs, note, executed))

  sep = SeparableConv(cin, OUT_FEATURES, KERNEL_SIZE, depth_multiplier=1, use_bias=False, rngs=rngs)
  sep_plan = sep.plan(INPUT_SHAPE)
  note = f"efficonv.nnx.SeparableConv m=1, auto chose {sep_plan.implementation} (depthwise {sep_plan.depthwise})"
  out.append(_layer_candidate("separable/auto", "separable", sep, x, sep.cost_macs(INPUT_SHAPE), note))

  dw_kernel = jax.random.normal(kd, (*KERNEL_SIZE, cin, 1), jnp.float32)
  dw_macs = n * h * w * KERNEL_SIZE[0] * KERNEL_SIZE[1] * cin
  for impl in ("xla", "shift"):

    def dw(x: jax.Array, k: jax.Array, impl: str = impl) -> jax.Array:
      return kernels.depthwise(x, k, implementation=impl)  # type: ignore[arg-type]

    label = "lax grouped conv (feature_group_count=C)" if impl == "xla" else "shift-and-add"
    out.append(
      Candidate(
        f"depthwise/{impl}", "depthwise", compile_fn(dw, (x, dw_kernel)), (x, dw_kernel), dw_macs, dw_macs, {}, label
      )
    )
  plans = {"cp/auto": dataclasses.asdict(cp_plan), "separable/auto": dataclasses.asdict(sep_plan)}
  return out, plans


def summarize(candidates: Sequence[Candidate], stats: dict[str, Stats]) -> dict[str, Any]:
  """Speedups, MAC ratios and the two target checks, JSON-ready."""
  dense = [c for c in candidates if c.group == "dense"]
  best = min(dense, key=lambda c: stats[c.name].median_ms)
  best_ms = stats[best.name].median_ms
  best_min_ms = min(stats[c.name].min_ms for c in dense)
  dense_macs = best.macs
  records = []
  for c in candidates:
    s = stats[c.name]
    mac_ratio = dense_macs / c.macs
    speedup = best_ms / s.median_ms
    records.append(
      {
        "name": c.name,
        "group": c.group,
        "note": c.note,
        "compiler_options": c.compiler_options,
        **s.as_dict(),
        "macs": c.macs,
        "executed_macs": c.executed_macs,
        "gflops": 2 * c.executed_macs / (s.median_ms * 1e-3) / 1e9,
        "mac_ratio": mac_ratio,
        "speedup": speedup,
        "speedup_over_mac_ratio": speedup / mac_ratio,
        # Fastest call over fastest call: the lower envelope, closest to an unloaded machine.
        "speedup_of_min": best_min_ms / s.min_ms,
        "noisy": s.relative_iqr > NOISY,
      }
    )
  by_name = {r["name"]: r for r in records}
  dw_speedup = stats["depthwise/xla"].median_ms / stats["depthwise/shift"].median_ms
  cp_eff = by_name["cp/auto"]["speedup_over_mac_ratio"]
  return {
    "dense_best": best.name,
    "dense_best_median_ms": best_ms,
    "records": records,
    "targets": {
      "cp_auto_speedup_over_mac_ratio": {"value": cp_eff, "target": CP_TARGET, "met": cp_eff >= CP_TARGET},
      "depthwise_shift_over_xla": {
        "value": dw_speedup,
        "target": DEPTHWISE_TARGET,
        "met": dw_speedup >= DEPTHWISE_TARGET,
      },
    },
  }


def format_report(summary: dict[str, Any], plans: dict[str, Any]) -> str:
  """The printed table."""
  lines = [
    f"{'name':22s} {'median ms':>10s} {'IQR ms':>8s} {'GFLOP/s':>8s} {'MACs':>11s} {'MAC ratio':>9s} "
    f"{'speedup':>8s} {'spd/ratio':>9s} {'min-based':>9s}  note"
  ]
  for r in summary["records"]:
    flag = "  [noisy]" if r["noisy"] else ""
    lines.append(
      f"{r['name']:22s} {r['median_ms']:10.3f} {r['iqr_ms']:8.3f} {r['gflops']:8.1f} {r['macs']:11.3e} "
      f"{r['mac_ratio']:9.2f} {r['speedup']:8.2f} {r['speedup_over_mac_ratio']:9.2f} "
      f"{r['speedup_of_min'] / r['mac_ratio']:9.2f}  {r['note']}{flag}"
    )
  lines.append(f"baseline: fastest dense = {summary['dense_best']} ({summary['dense_best_median_ms']:.3f} ms median)")
  lines.append(
    "speedup = fastest dense median / median; spd/ratio = speedup / MAC ratio (the targets use these); "
    "min-based = (fastest dense call / fastest call) / MAC ratio"
  )
  for name, plan in plans.items():
    lines.append(f"{name}: plan() chose {plan['implementation']} — {plan['reason']}")
  for name, t in summary["targets"].items():
    lines.append(f"target {name}: {t['value']:.2f} (need >= {t['target']}) -> {'MET' if t['met'] else 'MISSED'}")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the timing, prints the table, optionally writes JSON; returns the result dict."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--json", help="write the results as JSON to this path")
  parser.add_argument("--repeats", type=int, default=100, help="timed calls per function (default 100)")
  parser.add_argument("--warmup", type=int, default=5, help="untimed calls per function first (default 5)")
  parser.add_argument(
    "--sync-dispatch",
    action="store_true",
    help="run each call on the calling thread (jax_cpu_enable_async_dispatch=False)",
  )
  args = parser.parse_args(argv)
  if args.sync_dispatch:
    jax.config.update("jax_cpu_enable_async_dispatch", False)
  load_before = load_average()
  candidates, plans = build_candidates(jax.random.key(0))
  stats = measure({c.name: (c.fn, c.args) for c in candidates}, repeats=args.repeats, warmup=args.warmup)
  summary = summarize(candidates, stats)
  print(format_report(summary, plans))
  command = command_line(__spec__.name, argv)
  result = {
    "machine": {**machine_info(command=command), "load_average_before": load_before},
    "config": {
      "input_shape": INPUT_SHAPE,
      "out_features": OUT_FEATURES,
      "kernel_size": KERNEL_SIZE,
      "cp_rank": CP_RANK,
      "repeats": args.repeats,
      "warmup": args.warmup,
      "pass": "forward",
      "bias": False,
      "jax_cpu_enable_async_dispatch": jax.config.values["jax_cpu_enable_async_dispatch"],
    },
    "plans": plans,
    **summary,
  }
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2, default=str)
  return result


if __name__ == "__main__":
  main()
