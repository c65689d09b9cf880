"""Whole-network inference and training-step throughput of every scheme against the fastest dense network.

Usage::

  python -m experiments.bench.network [--preset tiny|quick|full] [--arch vgg|resnet] [--schemes cp tt ...]
                                      [--batch-sizes 1 64] [--train-batch-sizes 64] [--out DIR]
                                      [--config NAME] [--set section.field=value ...]

The networks are those of :mod:`experiments.claims.compare` (:func:`experiments.models.build_model` with the
config's model, default ``compare_fashion_mnist``; ``--arch resnet`` swaps the VGG for the ResNet), freshly
initialized: timing does not depend on the weights, so nothing is trained and no data is read. For the dense
baseline and every scheme of ``--schemes`` (default: all of :data:`experiments.schemes.SCHEMES`) it times

* ``inference_b<B>``: the jitted inference pass (:func:`experiments.training.steps.make_predict`) on ``B`` images,
  for every ``B`` of ``--batch-sizes`` (default: ``bench.latency_batch_size`` and the training batch size;
  at ``B = 1`` this is the latency);
* ``train_b<B>``: the real training step (:func:`experiments.training.steps.make_train_step` with the config's
  optimizer, schedule and augmentation: forward, backward, update), for every ``B`` of
  ``--train-batch-sizes`` (default: the batch sizes above 1).

On a CPU every network is also compiled without YNNPACK library fusion (``<scheme>/no_ynn``,
:data:`experiments.bench.dense_baselines.NO_YNN_FUSION_OPTIONS`), and the dense network a third time with
:data:`experiments.bench.dense_baselines.EIGEN_CONV_OPTIONS` (``dense/eigen``). Per measurement the fastest dense
build is the baseline of every speedup (``fastest dense ms / ms``); the MAC ratio is ``dense MACs / scheme MACs`` (forward MACs per image, :func:`efficonv.cost.macs`; the
training step does about three times the forward's MACs in every network alike). Everything runs on one
device and every function of every network is timed together, interleaved, the median call counting
(:func:`experiments.training.throughput.time_calls`, :mod:`experiments.common.timing`, with the preset's
``bench`` warm-up, repeats and ``min_seconds``).

Writes into ``--out`` (default ``experiments/results/bench_network_<preset>``, ``_resnet`` appended for the
ResNet): ``results.json`` (one record per network × measurement, plus command, machine and library
versions), ``results.md`` (a table per measurement) and ``speedup_vs_mac_ratio.png``.

The quick preset (widths 16/32, batches 1 and 64, every scheme and two dense builds) is meant to take
2–4 minutes on 2 CPU cores, most of it compiling (measured: about 5 s per network at load 1, 11 s at load 4).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.metadata
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from efficonv import cost
from experiments import data
from experiments.bench.dense_baselines import EIGEN_CONV_OPTIONS, NO_YNN_FUSION_OPTIONS
from experiments.cli import add_config_arguments, command_line, config_from_args, setup_logging
from experiments.common.config import DEFAULT_CONFIG, DataConfig, ExperimentConfig
from experiments.common.environment import load_average, machine_info
from experiments.common.results import RESULTS_DIR
from experiments.common.timing import Stats, compile_fn
from experiments.models import ARCHS
from experiments.schemes import SCHEMES, reference_of
from experiments.training.optim import learning_rate_schedule, make_optimizer
from experiments.training.steps import (
  init_model,
  make_parallel,
  make_predict,
  make_train_step,
  merge,
  replicate,
  shard_batch,
)
from experiments.training.throughput import Subject, time_calls

logger = logging.getLogger("experiments.bench.network")

DEFAULT_RESULTS = str(RESULTS_DIR)
PLOT_NAME = "speedup_vs_mac_ratio.png"
# Length of the learning-rate schedule the timed step is built with; the step's cost does not depend on it.
NOMINAL_STEPS = 1000
VERSIONED_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "matplotlib")


def library_versions() -> dict[str, str]:
  """Installed versions of the libraries the timings depend on (``"not installed"`` where missing)."""
  out = {}
  for name in VERSIONED_LIBRARIES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  return out


def dense_variants(backend: str | None = None) -> dict[str, dict[str, str]]:
  """The dense builds timed: name → XLA compiler options (``dense/eigen`` and ``dense/no_ynn`` on CPU only)."""
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return {"dense": {}}
  return {"dense": {}, "dense/eigen": dict(EIGEN_CONV_OPTIONS), "dense/no_ynn": dict(NO_YNN_FUSION_OPTIONS)}


def scheme_variants(scheme: str, backend: str | None = None) -> dict[str, dict[str, str]]:
  """The builds of a scheme's network timed: XLA's default, and on CPU also ``<scheme>/no_ynn``."""
  if scheme == "dense":
    return dense_variants(backend)
  backend = backend or jax.default_backend()
  return {scheme: {}, **({f"{scheme}/no_ynn": dict(NO_YNN_FUSION_OPTIONS)} if backend == "cpu" else {})}


def image_spec(cfg: DataConfig) -> tuple[tuple[int, int, int], str]:
  """``((H, W, C), dataset name for normalization)`` of ``cfg``'s images, without reading any data."""
  if cfg.name == "synthetic":
    shape = tuple(int(v) for v in cfg.synthetic_shape)
    return (shape[0], shape[1], shape[2]), "fashion_mnist" if shape[2] == 1 else "cifar10"
  h, w, c = data.get_spec(cfg.name).image_shape
  return (int(h), int(w), int(c)), cfg.name


def parse_schemes(values: Sequence[str] | None) -> tuple[str, ...]:
  """The schemes of ``--schemes`` (names separated by spaces or commas), ``dense`` first; all when ``None``.

  Raises:
    ValueError: naming ``--schemes`` and the unknown names, or when it names none.
  """
  if values is None:
    return SCHEMES
  names = [n.strip() for v in values for n in v.split(",") if n.strip()]
  unknown = [n for n in names if n not in SCHEMES]
  if unknown or not names:
    raise ValueError(f"--schemes must name schemes of {SCHEMES}, got {unknown or names}")
  return tuple(dict.fromkeys(["dense", *names]))


def _check_batch_sizes(name: str, sizes: Sequence[int]) -> tuple[int, ...]:
  if any(b < 1 for b in sizes):
    raise ValueError(f"{name} must be positive integers, got {list(sizes)}")
  return tuple(dict.fromkeys(int(b) for b in sizes))


@dataclasses.dataclass
class Network:
  """One scheme's freshly initialized network and what it costs.

  Attributes:
    scheme: the scheme.
    params: parameter count (:func:`efficonv.cost.params`).
    macs: forward MACs of one image (:func:`efficonv.cost.macs`).
    subject: its states, jitted training step and inference function.
  """

  scheme: str
  params: int
  macs: int
  subject: Subject


def build_network(cfg: ExperimentConfig, scheme: str) -> Network:
  """Initializes ``cfg``'s model with ``scheme`` and builds its steps as :func:`experiments.training.train.train` does.

  Args:
    cfg: the experiment config (model, optimizer, augmentation, seed).
    scheme: one of :data:`experiments.schemes.SCHEMES`.

  Returns:
    The :class:`Network`, on one device.
  """
  run_cfg = cfg.with_scheme(scheme)
  image_shape, dataset_name = image_spec(run_cfg.data)
  graphdef, params, rest = init_model(run_cfg.model, image_shape, run_cfg.train.seed)
  model = merge(graphdef, params, rest)
  parallel = make_parallel(1)
  optimizer = make_optimizer(run_cfg.optim, NOMINAL_STEPS)
  train_step = make_train_step(
    graphdef,
    optimizer,
    parallel,
    dataset_name=dataset_name,
    augment=run_cfg.data.augment,
    schedule=learning_rate_schedule(run_cfg.optim, NOMINAL_STEPS),
  )
  params, rest = replicate(parallel, (params, rest))
  opt_state = replicate(parallel, optimizer.init(params))
  subject = Subject(graphdef, params, rest, opt_state, train_step, parallel, make_predict(graphdef))
  return Network(scheme, cost.params(model), cost.macs(model, (1, *image_shape)), subject)


def measurement_calls(
  s: Subject,
  options: Mapping[str, str],
  inputs: Mapping[str, tuple[str, tuple[Any, ...]]],
) -> dict[str, Callable[[], Any]]:
  """Compiles ``s``'s inference and training step for every input (with ``options``) as calls of no arguments.

  Args:
    s: the subject.
    options: XLA compiler options of every executable.
    inputs: label → ``("inference", (x,))`` or ``("train", (images, labels, key))``.

  Returns:
    label → the compiled call bound to its arguments.
  """
  calls = {}
  for label, (kind, batch) in inputs.items():
    if kind == "inference":
      fn, args = s.predict, (s.params, s.rest, *batch)
    else:  # the same state every call: each call is one full step, its update discarded
      fn, args = s.train_step, (s.params, s.rest, s.opt_state, *batch, 0)
    calls[label] = functools.partial(compile_fn(fn, args, options), *args)
  return calls


def make_inputs(
  image_shape: Sequence[int], num_classes: int, batch_sizes: Sequence[int], train_batch_sizes: Sequence[int]
) -> dict[str, tuple[str, tuple[Any, ...]]]:
  """Random inputs on one device: label → ``(kind, batch)`` (see :func:`measurement_calls`)."""
  parallel, rng = make_parallel(1), np.random.default_rng(0)
  out: dict[str, tuple[str, tuple[Any, ...]]] = {}
  for b in batch_sizes:
    x = jnp.asarray(rng.normal(size=(b, *image_shape)), jnp.float32)
    out[f"inference_b{b}"] = ("inference", (replicate(parallel, x),))
  for b in train_batch_sizes:
    images = rng.integers(0, 256, (b, *image_shape)).astype(np.uint8)
    labels = rng.integers(0, num_classes, b).astype(np.int32)
    key = replicate(parallel, jax.random.PRNGKey(0))
    out[f"train_b{b}"] = ("train", (*shard_batch(parallel, images, labels), key))
  return out


def make_records(
  stats: Mapping[str, Mapping[str, Stats]],
  networks: Mapping[str, tuple[Network, Mapping[str, str]]],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
  """One record per timed variant × measurement, with speedups against the fastest dense variant.

  Args:
    stats: variant → label → timing statistics (:func:`experiments.training.throughput.time_calls`).
    networks: variant → ``(network, compiler options)``; the dense variants have scheme ``dense``.

  Returns:
    ``(records, fastest dense variant per label)``.
  """
  dense_names = [n for n, (net, _) in networks.items() if net.scheme == "dense"]
  dense_macs = networks[dense_names[0]][0].macs
  records, fastest = [], {}
  for label in next(iter(stats.values())):
    seconds = {name: 1e-3 * s[label].median_ms for name, s in stats.items()}
    fastest[label] = min(dense_names, key=lambda n: seconds[n])
    dense_s = seconds[fastest[label]]
    kind, batch = label.rsplit("_b", 1)
    for name, (net, options) in networks.items():
      s = seconds[name]
      reference = reference_of(net.scheme)
      ref_name = fastest[label] if reference == "dense" else reference
      mac_ratio = dense_macs / net.macs
      records.append(
        {
          "variant": name,
          "scheme": net.scheme,
          "compiler_options": dict(options),
          "measurement": kind,
          "batch_size": int(batch),
          "label": label,
          "params": net.params,
          "macs": net.macs,
          "ms": stats[name][label].median_ms,
          "ms_per_image": 1e3 * s / int(batch),
          "images_per_s": int(batch) / s,
          **stats[name][label].as_dict(),
          "dense_variant": fastest[label],
          "dense_ms": 1e3 * dense_s,
          "speedup": dense_s / s,
          "mac_ratio": mac_ratio,
          "speedup_over_mac_ratio": dense_s / s / mac_ratio,
          "reference": reference,
          "reference_speedup": seconds[ref_name] / s if ref_name in seconds else None,
        }
      )
  return records, fastest


def run(
  cfg: ExperimentConfig,
  *,
  schemes: Sequence[str] = SCHEMES,
  batch_sizes: Sequence[int] | None = None,
  train_batch_sizes: Sequence[int] | None = None,
  command: str = "",
  deadline: float | None = None,
) -> dict[str, Any]:
  """Builds and times the dense network and every scheme's (see the module docstring).

  Args:
    cfg: the experiment config.
    schemes: the schemes (``dense`` is always timed).
    batch_sizes: inference batch sizes (default: latency batch and training batch size).
    train_batch_sizes: training-step batch sizes (default: ``batch_sizes`` above 1).
    command: the command line, recorded.
    deadline: a :func:`time.perf_counter` value after which no further network is built and no further
      round of timed calls starts (the networks left out are listed in ``skipped``).

  Returns:
    The payload of ``results.json``.

  Raises:
    ValueError: naming ``schemes``, ``batch_sizes`` or ``train_batch_sizes`` when invalid.
  """
  start = time.perf_counter()
  schemes = parse_schemes(list(schemes))
  if batch_sizes is None:
    batch_sizes = sorted({cfg.bench.latency_batch_size, cfg.bench.batch_size or cfg.train.batch_size})
  batch_sizes = _check_batch_sizes("--batch-sizes", batch_sizes)
  if train_batch_sizes is None:
    train_batch_sizes = [b for b in batch_sizes if b > 1]
  train_batch_sizes = _check_batch_sizes("--train-batch-sizes", train_batch_sizes)
  if not batch_sizes and not train_batch_sizes:
    raise ValueError("batch_sizes must give at least one measurement, got none")
  image_shape, _ = image_spec(cfg.data)
  load_before = load_average()
  inputs = make_inputs(image_shape, cfg.model.num_classes, batch_sizes, train_batch_sizes)
  networks: dict[str, tuple[Network, dict[str, str]]] = {}
  calls: dict[str, dict[str, Callable[[], Any]]] = {}
  skipped = []
  for scheme in schemes:
    if networks and deadline is not None and time.perf_counter() > deadline:
      skipped.append(f"{scheme}: skipped, time budget spent")
      continue
    t0 = time.perf_counter()
    net = build_network(cfg, scheme)
    for name, options in scheme_variants(scheme).items():
      calls[name] = measurement_calls(net.subject, options, inputs)
      networks[name] = (net, options)
    logger.info("%s: %d params, %d MACs/image, built in %.1f s", scheme, net.params, net.macs, time.perf_counter() - t0)
  logger.info("Timing %d networks × %d measurements", len(calls), len(inputs))
  records, fastest = make_records(time_calls(calls, cfg.bench, deadline), networks)
  return {
    "command": command,
    "machine": {
      **machine_info(compiler_options={n: o for n, (_, o) in networks.items() if o}, command=command or None),
      "device_kind": jax.devices()[0].device_kind,
      "load_average_before": load_before,
      "load_average_after": load_average(),
    },
    "versions": library_versions(),
    "config": {
      "name": cfg.name,
      "preset": cfg.preset,
      "arch": cfg.model.arch,
      "image_shape": list(image_shape),
      "schemes": list(schemes),
      "batch_sizes": list(batch_sizes),
      "train_batch_sizes": list(train_batch_sizes),
      "bench": dataclasses.asdict(cfg.bench),
      "model": dataclasses.asdict(cfg.model),
    },
    "dense_fastest": fastest,
    "skipped": skipped,
    "records": records,
    "wall_s": time.perf_counter() - start,
  }


def markdown(payload: dict[str, Any]) -> str:
  """The results as Markdown: header, then one table per measurement."""
  m, c = payload["machine"], payload["config"]
  versions = ", ".join(f"{k} {v}" for k, v in payload["versions"].items())
  lines = [
    f"# Whole-network throughput: {c['name']} {c['preset']}, {c['arch']}",
    "",
    f"Command: `{payload['command']}`",
    "",
    f"Machine: {m['device_kind']} ({m['backend']}), {m['cpu_model']}, {m['usable_cpus']} usable CPUs; load "
    f"{m['load_average_before']} → {m['load_average_after']}; {versions}; wall {payload['wall_s']:.0f} s.",
    "",
    "Speedup = fastest dense ms / ms (same measurement); MAC ratio = dense MACs / MACs (forward, per image); "
    f"ms = median of at least {c['bench']['repeats']} calls and {c['bench']['min_seconds']} s, all networks "
    "interleaved (`experiments.common.timing`).",
  ]
  if payload["skipped"]:
    lines += ["", "Skipped: " + "; ".join(payload["skipped"])]
  for label, dense in payload["dense_fastest"].items():
    rows = [r for r in payload["records"] if r["label"] == label]
    lines += [
      "",
      f"## {label} ({rows[0]['measurement']}, batch {rows[0]['batch_size']}; fastest dense: {dense})",
      "",
      "| variant | params | MACs/image | MAC ratio | ms/call | images/s | speedup | speedup / MAC ratio |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
      lines.append(
        f"| {r['variant']} | {r['params']:,} | {r['macs'] / 1e6:.2f}M | {r['mac_ratio']:.2f} | {r['ms']:.3f} | "
        f"{r['images_per_s']:.0f} | {r['speedup']:.2f} | {r['speedup_over_mac_ratio']:.2f} |"
      )
  return "\n".join(lines) + "\n"


def plot(records: Sequence[dict[str, Any]], path: str) -> str:
  """Speedup versus MAC ratio (log-log, with ``y = x``), one panel per measurement. Returns ``path``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  labels = list(dict.fromkeys(r["label"] for r in records))
  cols = min(3, len(labels))
  fig, axes = plt.subplots(
    math.ceil(len(labels) / cols), cols, figsize=(5.5 * cols, 4.5 * math.ceil(len(labels) / cols)), squeeze=False
  )
  for ax, label in zip(axes.flat, labels):
    rows = [r for r in records if r["label"] == label]
    for r in rows:
      ax.scatter(r["mac_ratio"], r["speedup"], color="C3" if r["scheme"] == "dense" else "C0", s=25)
      ax.annotate(r["variant"], (r["mac_ratio"], r["speedup"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    values = [v for r in rows for v in (r["mac_ratio"], r["speedup"])]
    lo, hi = min(values) / 1.3, max(values) * 1.3
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="speedup = MAC ratio")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="MAC ratio (dense / scheme)", ylabel="speedup over fastest dense")
    ax.set_title(f"{label} ({rows[0]['measurement']}, batch {rows[0]['batch_size']})")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
  for ax in list(axes.flat)[len(labels) :]:
    ax.set_visible(False)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write(payload: dict[str, Any], out_dir: str) -> list[str]:
  """Writes ``results.json``, ``results.md`` and the plot into ``out_dir``; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md")]
  with open(paths[0], "w") as f:
    json.dump(payload, f, indent=1, default=str)
  with open(paths[1], "w") as f:
    f.write(markdown(payload))
  return [*paths, plot(payload["records"], os.path.join(out_dir, PLOT_NAME))]


def default_out(config: str, preset: str, arch: str) -> str:
  """``experiments/results/bench_network_<preset>``, with ``_<arch>`` and ``_<config>`` where not the default."""
  suffix = ("" if arch == "vgg" else f"_{arch}") + ("" if config == DEFAULT_CONFIG else f"_{config}")
  return os.path.join(DEFAULT_RESULTS, f"bench_network_{preset}{suffix}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command line; returns the payload written."""
  parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
  add_config_arguments(parser)
  parser.add_argument("--arch", choices=ARCHS, default=None, help="default: the config's (vgg)")
  parser.add_argument("--schemes", nargs="+", default=None, help="schemes besides dense (default: all)")
  parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="inference batch sizes")
  parser.add_argument("--train-batch-sizes", nargs="*", type=int, default=None, help="training-step batch sizes")
  parser.add_argument("--out", default=None, help="output directory (default: experiments/results/bench_network_…)")
  args = parser.parse_args(argv)
  setup_logging()
  cfg = config_from_args(args)
  if args.arch is not None:
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=args.arch))
  command = command_line(__spec__.name, argv)
  payload = run(
    cfg,
    schemes=parse_schemes(args.schemes),
    batch_sizes=args.batch_sizes,
    train_batch_sizes=args.train_batch_sizes,
    command=command,
  )
  paths = write(payload, args.out or default_out(args.config, args.preset, cfg.model.arch))
  print(markdown(payload))
  logger.info("Wrote %s", ", ".join(paths))
  return payload


if __name__ == "__main__":
  main()
