"""Whole-network inference and training-step throughput of every scheme against the fastest dense network.

Usage::

  python -m experiments.bench.network [--preset tiny|quick|full] [--arch vgg|resnet] [--schemes cp tt ...]
                                      [--batch-sizes 1 64] [--train-batch-sizes 64] [--out DIR]
                                      [--config NAME] [--set section.field=value ...]
  python -m experiments.bench.network --config bench_vgg11_cifar --preset full \
      --compress cp:4 cp:8 tucker2:4 tucker2:8 [--batch-sizes 1 32] [--train-batch-sizes 32]
      [--train-variants dense dense/efficonv cp_mac8] [--dense-builds nnx auto im2col]
      [--compressed-settings default no_ynn] [--breakdown-batch-sizes 32] [--no-torch] [--cp-iters 5]

**Compress mode** (``--compress``, :func:`run_realistic`; the realistic networks are the ``bench_<network>``
configs of :data:`experiments.models.NETWORKS`): the dense network is built every way of ``--dense-builds``
(``nnx``: its own ``nnx.Conv``; ``auto``/``im2col``: :func:`efficonv.compression.replace_dense`) under every
compile setting (default, no YNN fusion, Eigen convs), and the fastest of these per measurement is the
baseline, named in ``dense_fastest``. Each ``scheme:F`` is ``efficonv.compress(model, Policy(scheme,
rank=MacReduction(F), dense_implementation="auto"))`` of the same random-weight network, timed under the
default compile options (the flag-free case) and those of ``--compressed-settings``. A per-layer breakdown
(:mod:`experiments.bench.layer_times`) and the PyTorch channels_last peer (:mod:`experiments.bench.torch_network`,
skipped with the reason when torch is absent) follow. Results go to
``experiments/results/bench_network_<network>`` (``_<preset>`` appended unless ``full``).

**Scheme mode** (the default, :func:`run`):

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
from flax import nnx

import efficonv
from efficonv import cost
from efficonv.rank import MacReduction
from experiments import data
from experiments.bench.dense_baselines import (
  COMPILE_SETTINGS,
  DENSE_BUILDS,
  EIGEN_CONV_OPTIONS,
  NO_YNN_FUSION_OPTIONS,
  compile_settings,
  dense_build_name,
  dense_network_builds,
)
from experiments.cli import add_config_arguments, command_line, config_from_args, setup_logging
from experiments.common.config import DEFAULT_CONFIG, DataConfig, ExperimentConfig
from experiments.common.environment import load_average, machine_info
from experiments.common.results import RESULTS_DIR
from experiments.common.timing import Stats, compile_fn, measure
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
    stats: variant → label → timing statistics (:func:`experiments.training.throughput.time_calls`); a
      variant may lack some labels (a training step timed only for some builds).
    networks: variant → ``(network, compiler options)``; the dense variants have scheme ``dense``.

  Returns:
    ``(records, fastest dense variant per label)``.
  """
  labels = list(dict.fromkeys(label for per_variant in stats.values() for label in per_variant))
  records, fastest = [], {}
  for label in labels:
    timed = [name for name in networks if label in stats.get(name, {})]
    dense_names = [n for n in timed if networks[n][0].scheme == "dense"]
    if not dense_names:
      continue
    dense_macs = networks[dense_names[0]][0].macs
    seconds = {name: 1e-3 * stats[name][label].median_ms for name in timed}
    fastest[label] = min(dense_names, key=lambda n: seconds[n])
    dense_s = seconds[fastest[label]]
    kind, batch = label.rsplit("_b", 1)
    for name in timed:
      net, options = networks[name]
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


# --- Realistic networks: the fastest dense build against efficonv.compress of it --------------------------------


@dataclasses.dataclass(frozen=True)
class CompressSpec:
  """One compressed network: ``efficonv.compress`` with ``Policy(scheme, rank=MacReduction(factor))``.

  Attributes:
    scheme: ``"cp"`` or ``"tucker2"`` (any :mod:`efficonv.schemes` name whose layer the network builds).
    factor: the per-layer MAC reduction of :class:`efficonv.rank.MacReduction`.
  """

  scheme: str
  factor: float

  @property
  def name(self) -> str:
    """The variant name, ``cp_mac8``."""
    return f"{self.scheme}_mac{self.factor:g}"


def parse_compress(values: Sequence[str]) -> tuple[CompressSpec, ...]:
  """``["cp:4", "tucker2:8,cp:8"]`` → the :class:`CompressSpec` list (``scheme:factor``, spaces or commas).

  Raises:
    ValueError: naming ``--compress`` and the entry that is not ``cp:F`` or ``tucker2:F`` with ``F > 1``.

  Example:
    >>> [s.name for s in parse_compress(["cp:4,tucker2:8"])]
    ['cp_mac4', 'tucker2_mac8']
  """
  specs = []
  for entry in (n.strip() for v in values for n in v.split(",") if n.strip()):
    scheme, _, factor = entry.partition(":")
    try:
      value = float(factor)
    except ValueError:
      value = 0.0
    if scheme not in ("cp", "tucker2") or not value > 1:
      raise ValueError(f"--compress entries must be 'cp:F' or 'tucker2:F' with F > 1, got {entry!r}")
    specs.append(CompressSpec(scheme, value))
  return tuple(dict.fromkeys(specs))


def subject_of(cfg: ExperimentConfig, model: nnx.Module) -> Subject:
  """The states, training step and inference function of ``model`` (built as the training run builds them)."""
  _, dataset_name = image_spec(cfg.data)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  parallel = make_parallel(1)
  optimizer = make_optimizer(cfg.optim, NOMINAL_STEPS)
  train_step = make_train_step(
    graphdef,
    optimizer,
    parallel,
    dataset_name=dataset_name,
    augment=cfg.data.augment,
    schedule=learning_rate_schedule(cfg.optim, NOMINAL_STEPS),
  )
  params, rest = replicate(parallel, (params, rest))
  opt_state = replicate(parallel, optimizer.init(params))
  return Subject(graphdef, params, rest, opt_state, train_step, parallel, make_predict(graphdef))


def compressed_model(
  model: nnx.Module, spec: CompressSpec, image_shape: Sequence[int], cp_iters: int
) -> tuple[nnx.Module, int, list[dict[str, Any]]]:
  """``efficonv.compress(model, Policy(spec.scheme, MacReduction(spec.factor), dense_implementation="auto"))``.

  Args:
    model: the dense network.
    spec: scheme and MAC reduction.
    image_shape: ``(H, W, C)``.
    cp_iters: ALS sweeps of the CP decompositions (the weights are random: timing does not depend on fit).

  Returns:
    ``(compressed network, its nominal forward MACs per image, the report's layers as dicts)``. The MACs are
    the dense network's minus what each replaced conv saves by the report (a traced count would include the
    kernel reconstruction of layers whose ``auto`` plan runs the reconstructed dense kernel).
  """
  kwargs = {"n_iter": cp_iters} if spec.scheme == "cp" else {}
  policy = efficonv.Policy(
    scheme=spec.scheme, rank=MacReduction(spec.factor), dense_implementation="auto", decompose_kwargs=kwargs
  )
  new, report = efficonv.compress(model, policy, input_shape=(1, *image_shape))
  macs = cost.macs(model, (1, *image_shape)) - sum(r.macs_before - r.macs_after for r in report.layers)
  layers = [
    {
      "layer": r.path,
      "scheme": r.scheme,
      "rank": r.rank,
      "rank_reason": r.rank_reason,
      "macs_before": r.macs_before,
      "macs_after": r.macs_after,
      "implementation": r.implementation,
    }
    for r in report.layers
  ]
  return new, macs, layers


def _torch_peer(
  models: Mapping[str, nnx.Module], image_shape: Sequence[int], batch_sizes: Sequence[int], bench: Any
) -> dict[str, Any]:
  """Times the PyTorch channels_last peer of every model; ``{"skipped": reason}`` without torch."""
  from experiments.bench import torch_network
  from experiments.bench.peers.base import PeerUnavailableError

  try:
    torch = torch_network.import_torch()
  except PeerUnavailableError as e:
    return {"skipped": str(e), "records": []}
  rng = np.random.default_rng(0)
  calls = {}
  for b in batch_sizes:
    x = rng.normal(size=(b, *image_shape)).astype(np.float32)
    for name, model in models.items():
      calls[(name, b)] = torch_network.torch_inference(torch, model, x)
  for call in calls.values():
    call()
  stats = measure(
    {f"{n}|{b}": (c, ()) for (n, b), c in calls.items()},
    repeats=bench.repeats,
    warmup=bench.warmup,
    min_seconds=bench.min_seconds,
  )
  records = []
  for (name, b), _ in calls.items():
    st = stats[f"{name}|{b}"]
    records.append({"variant": name, "batch_size": b, "label": f"inference_b{b}", "ms": st.median_ms, **st.as_dict()})
  dense = {r["batch_size"]: r["ms"] for r in records if r["variant"] == "dense"}
  for r in records:
    r["speedup_vs_torch_dense"] = dense[r["batch_size"]] / r["ms"]
  return {
    "skipped": None,
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "layout": "channels_last",
    "records": records,
  }


def run_realistic(
  cfg: ExperimentConfig,
  *,
  compress: Sequence[CompressSpec],
  dense_builds: Sequence[str] = ("nnx", "auto"),
  compressed_settings: Sequence[str] = ("default", "no_ynn"),
  batch_sizes: Sequence[int] = (1, 32),
  train_batch_sizes: Sequence[int] = (),
  train_variants: Sequence[str] | None = None,
  breakdown_batch_sizes: Sequence[int] = (),
  torch_peer: bool = True,
  cp_iters: int = 5,
  command: str = "",
  deadline: float | None = None,
) -> dict[str, Any]:
  """Times the fastest dense build of ``cfg``'s network against ``efficonv.compress`` of it.

  Every dense build (``dense_builds`` × :func:`compile_settings`) and every compressed network (under each of
  ``compressed_settings``; the flag-free ``default`` always) is timed in the same interleaved run; per
  measurement the fastest dense build is the baseline and is named in ``dense_fastest``.

  Args:
    cfg: the experiment config (model, image shape, bench settings, optimizer of the training step).
    compress: the compressed networks.
    dense_builds: of :data:`DENSE_BUILDS`.
    compressed_settings: of :data:`COMPILE_SETTINGS` (on CPU), the compressed networks' compile settings.
    batch_sizes: inference batch sizes (``B = 1``: latency).
    train_batch_sizes: training-step batch sizes.
    train_variants: the variants whose training step is timed (``None``: every variant; the names of the
      dense builds without ``/<setting>`` select them under every setting).
    breakdown_batch_sizes: batch sizes of the per-layer breakdown (:mod:`experiments.bench.layer_times`)
      of the fastest dense build, the ``nnx.Conv`` build and every compressed network (default settings).
    torch_peer: also time the PyTorch channels_last peer of the ``nnx.Conv`` and compressed networks.
    cp_iters: ALS sweeps of the CP decompositions.
    command: the command line, recorded.
    deadline: a :func:`time.perf_counter` value after which no further round of timed calls starts.

  Returns:
    The payload of ``results.json`` (:class:`experiments.common.results.NetworkPayload` plus
    ``compressed``, ``breakdown`` and ``torch_peer``).

  Raises:
    ValueError: naming ``dense_builds``, ``compressed_settings`` or a batch-size argument when invalid.
  """
  start = time.perf_counter()
  if not dense_builds or any(b not in DENSE_BUILDS for b in dense_builds):
    raise ValueError(f"dense_builds must name builds of {DENSE_BUILDS}, got {list(dense_builds)}")
  settings = compile_settings()
  compressed_settings = ["default", *(s for s in compressed_settings if s != "default")]
  if any(s not in COMPILE_SETTINGS for s in compressed_settings):
    raise ValueError(f"compressed_settings must name settings of {COMPILE_SETTINGS}, got {compressed_settings}")
  compressed_settings = [s for s in compressed_settings if s in settings]
  batch_sizes = _check_batch_sizes("--batch-sizes", batch_sizes)
  train_batch_sizes = _check_batch_sizes("--train-batch-sizes", train_batch_sizes)
  breakdown_batch_sizes = _check_batch_sizes("--breakdown-batch-sizes", breakdown_batch_sizes)
  image_shape, _ = image_spec(cfg.data)
  load_before = load_average()
  inputs = make_inputs(image_shape, cfg.model.num_classes, batch_sizes, train_batch_sizes)
  inference_inputs = {k: v for k, v in inputs.items() if v[0] == "inference"}

  graphdef, params, rest = init_model(cfg.model, image_shape, cfg.train.seed)
  dense_model = merge(graphdef, params, rest)
  dense_macs = cost.macs(dense_model, (1, *image_shape))
  dense_params = cost.params(dense_model)
  models: dict[str, nnx.Module] = {}
  networks: dict[str, tuple[Network, dict[str, str]]] = {}
  calls: dict[str, dict[str, Callable[[], Any]]] = {}
  compressed_info: dict[str, Any] = {}

  def wants_train(name: str) -> bool:
    if train_variants is None:
      return True
    base = name.split("/")[0] if not name.startswith("dense") else name
    return name in train_variants or base in train_variants

  def add(name: str, model: nnx.Module, scheme: str, macs: int, variant_settings: Sequence[str]) -> None:
    t0 = time.perf_counter()
    net = Network(scheme, cost.params(model), macs, subject_of(cfg, model))
    for setting in variant_settings:
      variant = name if setting == "default" else f"{name}/{setting}"
      if scheme == "dense":
        variant = dense_build_name(name, setting)
      chosen = inputs if wants_train(variant) else inference_inputs
      calls[variant] = measurement_calls(net.subject, settings[setting], chosen)
      networks[variant] = (net, settings[setting])
    logger.info(
      "%s: %d params, %.1f M MACs/image, compiled in %.1f s", name, net.params, macs / 1e6, time.perf_counter() - t0
    )

  built = dense_network_builds(dense_model, dense_builds, list(settings))
  for build in dense_builds:
    model = built[dense_build_name(build, "default")][0]
    models[dense_build_name(build, "default")] = model
    add(build, model, "dense", dense_macs, list(settings))
  for spec in compress:
    t0 = time.perf_counter()
    model, macs, layers = compressed_model(dense_model, spec, image_shape, cp_iters)
    compressed_info[spec.name] = {
      "scheme": spec.scheme,
      "mac_reduction": spec.factor,
      "cp_iters": cp_iters,
      "compress_s": time.perf_counter() - t0,
      "layers": layers,
    }
    models[spec.name] = model
    add(spec.name, model, spec.scheme, macs, compressed_settings)
  logger.info("Timing %d builds", len(calls))
  stats = time_calls(calls, cfg.bench, deadline)
  records, fastest = make_records(stats, networks)

  breakdown: dict[str, Any] = {}
  if breakdown_batch_sizes:
    from experiments.bench import layer_times

    sites = layer_times.layer_sites(dense_model, image_shape)
    for b in breakdown_batch_sizes:
      label = f"inference_b{b}"
      chosen = dict.fromkeys([fastest.get(label, "dense"), "dense", *(s.name for s in compress)])
      builds = {
        n: (models[n.split("/")[0] if not n.startswith("dense") else _build_model_name(n)], networks[n][1])
        for n in chosen
      }
      per_layer = layer_times.time_layers(builds, sites, b, cfg.bench, deadline)
      whole = {r["variant"]: r["ms"] for r in records if r["label"] == label}
      breakdown[label] = {
        n: {"layers": per_layer[n], **layer_times.breakdown_rows(per_layer[n], whole.get(n, float("nan")))}
        for n in per_layer
      }
  peer = {"skipped": "not requested (--no-torch)", "records": []}
  if torch_peer:
    peer = _torch_peer(
      {n: models[n] for n in ("dense", *(s.name for s in compress)) if n in models}, image_shape, batch_sizes, cfg.bench
    )
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
      "schemes": ["dense", *dict.fromkeys(s.scheme for s in compress)],
      "compress": [s.name for s in compress],
      "dense_builds": list(dense_builds),
      "compressed_settings": compressed_settings,
      "batch_sizes": list(batch_sizes),
      "train_batch_sizes": list(train_batch_sizes),
      "train_variants": None if train_variants is None else list(train_variants),
      "breakdown_batch_sizes": list(breakdown_batch_sizes),
      "bench": dataclasses.asdict(cfg.bench),
      "model": dataclasses.asdict(cfg.model),
      "dense_macs": dense_macs,
      "dense_params": dense_params,
    },
    "dense_fastest": fastest,
    "skipped": [],
    "records": records,
    "compressed": compressed_info,
    "breakdown": breakdown,
    "torch_peer": peer,
    "wall_s": time.perf_counter() - start,
  }


def _build_model_name(variant: str) -> str:
  """The default-setting name of a dense variant: ``dense/efficonv/no_ynn`` → ``dense/efficonv``."""
  for setting in COMPILE_SETTINGS[1:]:
    if variant.endswith(f"/{setting}"):
      return variant[: -len(setting) - 1]
  return variant


def markdown_realistic(payload: dict[str, Any]) -> str:
  """The realistic-network results as Markdown: header, whole-network tables, breakdown, PyTorch peer."""
  m, c = payload["machine"], payload["config"]
  versions = ", ".join(f"{k} {v}" for k, v in payload["versions"].items())
  lines = [
    f"# Whole-network timing: {c['name']} ({c['arch']}, {'×'.join(map(str, c['image_shape']))}), {c['preset']}",
    "",
    f"Command: `{payload['command']}`",
    "",
    f"Machine: {m['device_kind']} ({m['backend']}), {m['cpu_model']}, {m['usable_cpus']} usable CPUs; load "
    f"average {m['load_average_before']} → {m['load_average_after']} (shared machine); {versions}; wall "
    f"{payload['wall_s']:.0f} s.",
    "",
    f"Dense network: {c['dense_macs'] / 1e6:.1f} M MACs/image, {c['dense_params'] / 1e6:.2f} M params, random "
    "weights. Dense builds: `dense` = `nnx.Conv`, `dense/efficonv` = `replace_dense(model, 'auto')`, "
    "`dense/efficonv_im2col` = every conv im2col; each compiled with the default options, `/no_ynn` (no YNNPACK "
    "fusion) and `/eigen` (XLA's own convolutions). Compressed: `efficonv.compress(model, Policy(scheme, "
    "rank=MacReduction(F), dense_implementation='auto'))` (`<scheme>_macF`; no suffix = default compile "
    "options, no flags).",
    "",
    "Speedup = fastest dense ms / ms (same measurement); MAC ratio = dense MACs / MACs (nominal forward MACs "
    f"per image); ms = median of at least {c['bench']['repeats']} calls and {c['bench']['min_seconds']} s, "
    "all builds interleaved (`experiments.common.timing`).",
  ]
  for label, dense in payload["dense_fastest"].items():
    rows = [r for r in payload["records"] if r["label"] == label]
    lines += [
      "",
      f"## {label} ({rows[0]['measurement']}, batch {rows[0]['batch_size']}; fastest dense: `{dense}`)",
      "",
      "| variant | params | MACs/image | MAC ratio | ms/call | IQR ms | images/s | speedup |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
      lines.append(
        f"| {r['variant']} | {r['params'] / 1e6:.2f}M | {r['macs'] / 1e6:.1f}M | {r['mac_ratio']:.2f} | "
        f"{r['ms']:.2f} | {r['iqr_ms']:.2f} | {r['images_per_s']:.0f} | {r['speedup']:.2f} |"
      )
  for label, builds in payload["breakdown"].items():
    names = list(builds)
    lines += [
      "",
      f"## Per-layer breakdown, {label} (ms per layer alone at its input shape; rest = whole − Σ layers)",
      "",
      "| layer | input | " + " | ".join(f"`{n}`" for n in names) + " |",
      "|---|---|" + "---:|" * len(names),
    ]
    first = builds[names[0]]["layers"]
    for i, layer in enumerate(first):
      cells = [f"{builds[n]['layers'][i]['ms']:.2f} ({builds[n]['layers'][i]['kind'].split(':')[-1]})" for n in names]
      shape = "×".join(map(str, layer["input_shape"][1:]))
      lines.append(f"| {layer['layer']} | {shape} | " + " | ".join(cells) + " |")
    for key, title in (("layers_ms", "Σ layers"), ("rest_ms", "rest"), ("whole_ms", "whole network")):
      lines.append(f"| **{title}** | | " + " | ".join(f"{builds[n][key]:.2f}" for n in names) + " |")
  peer = payload["torch_peer"]
  lines += ["", "## PyTorch peer (CPU, channels_last, eval, no_grad)", ""]
  if peer["skipped"]:
    lines.append(f"Skipped: {peer['skipped']}.")
  else:
    ours = {(r["variant"], r["label"]): r["ms"] for r in payload["records"]}
    lines += [
      f"torch {peer['torch']}, {peer['threads']} threads. The same networks (weights of the convs and the head).",
      "",
      "| network | batch | torch ms | speedup vs torch dense | JAX ms (same network, default options) | torch ms / JAX ms |",
      "|---|---:|---:|---:|---:|---:|",
    ]
    for r in peer["records"]:
      jax_ms = ours.get((r["variant"], r["label"]))
      ratio = f"{r['ms'] / jax_ms:.2f}" if jax_ms else "–"
      jax_cell = f"{jax_ms:.2f}" if jax_ms else "–"
      lines.append(
        f"| {r['variant']} | {r['batch_size']} | {r['ms']:.2f} | {r['speedup_vs_torch_dense']:.2f} | {jax_cell} | "
        f"{ratio} |"
      )
  return "\n".join(lines) + "\n"


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


def write(
  payload: dict[str, Any], out_dir: str, to_markdown: Callable[[dict[str, Any]], str] | None = None
) -> list[str]:
  """Writes ``results.json``, ``results.md`` (``to_markdown``, default :func:`markdown`) and the plot; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md")]
  with open(paths[0], "w") as f:
    json.dump(payload, f, indent=1, default=str)
  with open(paths[1], "w") as f:
    f.write((to_markdown or markdown)(payload))
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
  realistic = parser.add_argument_group("realistic networks (with --compress)")
  realistic.add_argument(
    "--compress", nargs="+", default=None, help="compressed networks scheme:F (cp:4 tucker2:8): compress mode"
  )
  realistic.add_argument("--dense-builds", nargs="+", default=["nnx", "auto"], choices=DENSE_BUILDS)
  realistic.add_argument("--compressed-settings", nargs="+", default=["default", "no_ynn"], choices=COMPILE_SETTINGS)
  realistic.add_argument("--train-variants", nargs="*", default=None, help="variants whose training step is timed")
  realistic.add_argument("--breakdown-batch-sizes", nargs="*", type=int, default=None, help="per-layer breakdown")
  realistic.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
  realistic.add_argument("--cp-iters", type=int, default=5, help="ALS sweeps of the CP decompositions")
  args = parser.parse_args(argv)
  setup_logging()
  cfg = config_from_args(args)
  if args.arch is not None:
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=args.arch))
  command = command_line(__spec__.name, argv)
  if args.compress is not None:
    batch_sizes = args.batch_sizes or sorted(
      {cfg.bench.latency_batch_size, cfg.bench.batch_size or cfg.train.batch_size}
    )
    payload = run_realistic(
      cfg,
      compress=parse_compress(args.compress),
      dense_builds=args.dense_builds,
      compressed_settings=args.compressed_settings,
      batch_sizes=batch_sizes,
      train_batch_sizes=args.train_batch_sizes if args.train_batch_sizes is not None else [],
      train_variants=args.train_variants,
      breakdown_batch_sizes=args.breakdown_batch_sizes
      if args.breakdown_batch_sizes is not None
      else [max(batch_sizes)],
      torch_peer=not args.no_torch,
      cp_iters=args.cp_iters,
      command=command,
    )
    name = args.config.removeprefix("bench_")
    out = args.out or os.path.join(
      DEFAULT_RESULTS, f"bench_network_{name}" + ("" if args.preset == "full" else f"_{args.preset}")
    )
    paths = write(payload, out, markdown_realistic)
  else:
    payload = run(
      cfg,
      schemes=parse_schemes(args.schemes),
      batch_sizes=args.batch_sizes,
      train_batch_sizes=args.train_batch_sizes,
      command=command,
    )
    paths = write(payload, args.out or default_out(args.config, args.preset, cfg.model.arch))
  with open(paths[1]) as f:
    print(f.read())
  logger.info("Wrote %s", ", ".join(paths))
  return payload


if __name__ == "__main__":
  main()
