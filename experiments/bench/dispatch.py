"""How much of a small network's batch-1 latency is the call, not the network: three ways to call one program.

Run as ``python -m experiments.bench.dispatch [--config NAME] [--reduction F] [--batch N]`` (prints JSON).

The compress pipeline and the whole-network benchmark time ``predict(params, rest, x)``: a jitted function of
the NNX state (:func:`experiments.training.steps.make_predict`). A call flattens those state pytrees and
dispatches every leaf; for a compressed network whose whole forward pass takes about a millisecond at batch
1, that is not negligible. This script times, interleaved (:func:`experiments.common.timing.measure`), for the
config's dense network and its CP ``MacReduction(F)`` compression (random weights; times do not depend on
values):

* ``predict``: ``make_predict(graphdef)(params, rest, x)``, the harness's call;
* ``compiled``: the same program compiled ahead of time, called with the same state pytrees;
* ``flat``: the same program over the flat list of leaves (one flatten at set-up, none per call).

The differences are the per-call cost of the calling convention; the ``flat`` time is closest to the
network's own.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from efficonv import rank as rank_lib
from efficonv.compression import Policy, compress
from experiments.cli import command_line
from experiments.common.config import load
from experiments.common.environment import environment
from experiments.common.timing import measure
from experiments.models import build_model
from experiments.training.steps import make_predict, merge


def calls(model: nnx.Module, x: jax.Array) -> dict[str, tuple[Any, tuple[Any, ...]]]:
  """The three calls of one network's inference program (see the module docstring)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  predict = make_predict(graphdef)
  compiled = predict.lower(params, rest, x).compile()
  leaves, treedef = jax.tree.flatten((params, rest))

  def from_leaves(leaves: list[Any], x: jax.Array) -> jax.Array:
    p, r = jax.tree.unflatten(treedef, leaves)
    return merge(graphdef, p, r)(x, train=False)

  flat = jax.jit(from_leaves).lower(leaves, x).compile()
  return {
    "predict": (predict, (params, rest, x)),
    "compiled": (compiled, (params, rest, x)),
    "flat": (flat, (leaves, x)),
  }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command line; returns (and prints) the JSON payload."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="compress_fashion_mnist_vgg", help="config module in experiments/configs")
  parser.add_argument("--reduction", type=float, default=12.0, help="CP MacReduction of the compressed network")
  parser.add_argument("--batch", type=int, default=1, help="batch size")
  parser.add_argument("--repeats", type=int, default=200, help="timed calls per candidate (at least)")
  args = parser.parse_args(argv)
  cfg = load(args.config, "full")
  shape = tuple(int(v) for v in cfg.data.synthetic_shape)  # the image shape (the synthetic data's is the real one's)
  dense = build_model(cfg.model, shape, rngs=nnx.Rngs(0))
  policy = Policy(scheme="cp", rank=rank_lib.MacReduction(args.reduction), implementation="factorized")
  compressed, _ = compress(dense, policy, input_shape=(1, *shape))
  x = jnp.ones((args.batch, *shape), jnp.float32)
  candidates = {}
  leaf_counts = {}
  for name, model in (("dense", dense), (f"cp_mac{args.reduction:g}", compressed)):
    leaf_counts[name] = len(jax.tree.leaves(nnx.state(model)))
    for kind, call in calls(model, x).items():
      candidates[f"{name}/{kind}"] = call
  stats = measure(candidates, repeats=args.repeats, warmup=5, min_seconds=0.5)
  payload = {
    "benchmark": "dispatch",
    "machine": environment(command_line("experiments.bench.dispatch", argv)),
    "batch": args.batch,
    "leaves": leaf_counts,
    "stats": {name: s.as_dict() for name, s in stats.items()},
  }
  print(json.dumps(payload, indent=2))
  return payload


if __name__ == "__main__":
  main()
