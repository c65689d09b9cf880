"""How reproducible is one whole-network timing ratio, and do random factors time as the fitted ones?

Run as ``python -m experiments.bench.assembled_timing --workdir DIR [--config ... --preset ... --set ...]
[--variants a,b] [--rounds N] [--repeats N] [--min-seconds S] [--json PATH]``.

``efficonv.search`` verifies a ``Speedup`` point by building it with ``decompose=False`` (random factors)
and timing it in alternating pairs with the model as given (:func:`efficonv.planning.median_time_ratio`);
the compress pipeline's benchmark later times the fine-tuned, fitted network. This script takes a compress
run's workdir (``DIR/dense`` its trained dense baseline, restored; ``DIR/compress.json`` the exact policy
each variant applied, ``report.policy``) and, for each variant, builds both — the fitted network
(``compress`` as the pipeline does, before fine-tuning) and the random-factor one (``decompose=False``) —
then times each against the dense network in ``--rounds`` rounds of paired calls at the benchmark's batch,
both kinds alternating within a round. A spread between rounds as large as the gap between the
verification and the benchmark says the gap is the machine's, not the factors'.

Writes ``{"machine", "config", "variants": {name: {"fitted": [ratios], "random": [ratios], "summary"}}}``
(each ratio: the variant's time over the dense network's).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from efficonv.compression import Policy, compress
from efficonv.planning import median_time_ratio
from experiments.cli import add_config_arguments, command_line, config_from_args, setup_logging
from experiments.common import results
from experiments.common.environment import load_average, machine_info
from experiments.training.steps import merge
from experiments.training.train import load_datasets, train

KINDS = ("fitted", "random")


def compiled_call(model: nnx.Module, shape: tuple[int, ...]) -> Any:
  """``model(x)`` compiled at ``shape`` (inference) on a fixed random input, as a call with no arguments."""
  graphdef, state = nnx.split(model)
  x = jax.numpy.asarray(np.random.default_rng(0).standard_normal(shape), jax.numpy.float32)
  compiled = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)).lower(state, x).compile()
  return lambda: compiled(state, x)


def summary(ratios: Sequence[float]) -> dict[str, float]:
  """Median, extremes and ``max / min`` of a list of ratios."""
  values = np.asarray(ratios, dtype=float)
  return {
    "median": float(np.median(values)),
    "min": float(values.min()),
    "max": float(values.max()),
    "max_over_min": float(values.max() / values.min()),
  }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command line: times every variant's two builds against the dense network; returns the result."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_config_arguments(parser)
  parser.add_argument("--workdir", required=True, help="a compress run's directory (dense/ and compress.json)")
  parser.add_argument("--variants", default=None, help="comma-separated variants of compress.json (default: all)")
  parser.add_argument("--rounds", type=int, default=3, help="rounds of paired timing per build (default 3)")
  parser.add_argument("--repeats", type=int, default=40, help="alternating pairs per round, at least (default 40)")
  parser.add_argument("--min-seconds", type=float, default=1.0, help="each round lasts at least this long")
  parser.add_argument("--json", default=None, help="output path (default: WORKDIR/assembled_timing.json)")
  args = parser.parse_args(argv)
  for name in ("rounds", "repeats"):
    if getattr(args, name) < 1:
      raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
  setup_logging()
  workdir = Path(args.workdir)
  payload = json.loads((workdir / "compress.json").read_text())
  rows = {r["variant"]: r for r in payload["results"]}
  wanted = list(rows) if args.variants is None else [v.strip() for v in args.variants.split(",") if v.strip()]
  unknown = [v for v in wanted if v not in rows]
  if unknown or not wanted:
    raise ValueError(f"--variants must name variants of {workdir / 'compress.json'} ({sorted(rows)}), got {wanted}")

  cfg = config_from_args(args).with_scheme("dense")
  train_set, test_set = load_datasets(cfg.data, cfg.model.num_classes)
  base = train(cfg, workdir / "dense", datasets=(train_set, test_set))
  dense = merge(base.graphdef, base.params, base.rest)
  image_shape = tuple(int(v) for v in train_set.images.shape[1:])
  shape = (int(payload.get("bench_batch_size") or cfg.train.batch_size), *image_shape)
  given = compiled_call(dense, shape)
  calls = {}
  for name in wanted:
    policy = Policy.from_json(json.dumps(rows[name]["report"]["policy"]))
    fitted, _ = compress(dense, policy, input_shape=(1, *image_shape))
    random, _ = compress(dense, policy, input_shape=shape, decompose=False)
    calls[name] = {"fitted": compiled_call(fitted, shape), "random": compiled_call(random, shape)}
  load_before = load_average()
  ratios: dict[str, dict[str, list[float]]] = {name: {kind: [] for kind in KINDS} for name in wanted}
  for _ in range(args.rounds):
    for name in wanted:
      for kind in KINDS:
        ratio, _ = median_time_ratio(calls[name][kind], given, repeats=args.repeats, min_seconds=args.min_seconds)
        ratios[name][kind].append(float(ratio))
  result = {
    "machine": {**machine_info(command=command_line(__spec__.name, argv)), "load_average_before": load_before},
    "config": {
      "workdir": str(workdir),
      "input_shape": list(shape),
      "rounds": args.rounds,
      "repeats": args.repeats,
      "min_seconds": args.min_seconds,
    },
    "variants": {
      name: {**ratios[name], "summary": {kind: summary(ratios[name][kind]) for kind in KINDS}} for name in wanted
    },
  }
  out = Path(args.json) if args.json else workdir / "assembled_timing.json"
  results.validate(result, "assembled_timing", str(out))  # the schema the committed files are checked against
  out.write_text(json.dumps(result, indent=2) + "\n")
  for name in wanted:
    for kind in KINDS:
      s = result["variants"][name]["summary"][kind]
      print(
        f"{name:>20} {kind:>6}: ratio to dense median {s['median']:.3f}, {s['min']:.3f}–{s['max']:.3f} "
        f"({args.rounds} rounds)"
      )
  return result


if __name__ == "__main__":
  main()
