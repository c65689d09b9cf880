"""Post-training compression: train the dense baseline, factorize its convs, fine-tune, measure.

Usage::

  python -m experiments.claims.compress [--config NAME] [--preset tiny|quick|full] [--workdir results/<run>]
                                 [--variants cp_mac4,tucker2_vbmf,...] [--set section.field=value ...]

Defaults: ``--config compare_fashion_mnist --preset quick --workdir results/compress_<config>_<preset>``.

The pipeline (Lebedev et al. 2014; Kim et al. 2016):

1. Train the dense baseline with :func:`experiments.training.train.train` in ``<workdir>/dense`` (resumable: a
   workdir that already holds the finished run only restores its last checkpoint).
2. For each variant (a decomposition scheme and a rank rule from :mod:`efficonv.rank`), replace every conv
   after the stem with :func:`efficonv.compress` (which clones the model, so BatchNorm statistics and the
   other layers are kept), measure the test accuracy, fine-tune the whole network for a few steps with the
   training run's own step (:func:`experiments.training.steps.make_train_step`), and measure it again. A
   search variant (``search_speedup4``, ``search_speedup8``) first chooses a scheme and rank (or dense) per
   conv with :func:`efficonv.search` — candidates timed at the benchmark's batch on this machine, sensitivity
   on a calibration batch of the training set — and compresses with the policy it returns; its row records
   the search's predicted speedup next to the measured one.
3. Time inference of the dense model and every compressed one in the same process, interleaved
   (:mod:`experiments.training.throughput`), and count whole-network MACs (:func:`efficonv.cost.macs`).
4. Write ``compress.md`` and ``compress.json`` into the workdir.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from efficonv import cost
from efficonv import rank as rank_lib
from efficonv.compression import Policy, Report, compress, conv_calls
from efficonv.convert import conv_kernel
from efficonv.planning import median_seconds
from efficonv.policy_search import SearchReport, allocate, search, verify
from experiments import data
from experiments.bench.dense_baselines import dense_network_builds
from experiments.cli import add_config_arguments, command_line, config_from_args, setup_logging
from experiments.common import results
from experiments.common.config import PRESETS, ExperimentConfig
from experiments.common.environment import environment
from experiments.common.results import CompressDense, CompressPayload, CompressRow
from experiments.training.optim import learning_rate_schedule, make_optimizer
from experiments.training.steps import evaluate, make_predict, make_train_step, merge, replicate, shard_batch
from experiments.training.throughput import Subject, benchmark
from experiments.training.train import config_dict, load_datasets, train

logger = logging.getLogger("experiments.claims.compress")


@dataclasses.dataclass(frozen=True)
class Variant:
  """One compressed model: a scheme and a rank rule applied to every conv after the stem, or a search.

  Attributes:
    name: the variant's name in the report.
    scheme: a scheme of :data:`efficonv.schemes` (``"search"`` for a search variant).
    rule: a rank rule of :mod:`efficonv.rank` (or a fixed rank of the scheme's kind); for a search variant
      its whole-network target (:data:`efficonv.rank.TARGETS`).
    search: the schemes :func:`efficonv.search` chooses among (empty: not a search variant).
  """

  name: str
  scheme: str
  rule: Any
  search: tuple[str, ...] = ()

  @property
  def is_search(self) -> bool:
    """Whether the variant is a :func:`efficonv.search` over the schemes of ``search`` (``rule`` its target)."""
    return bool(self.search)


@dataclasses.dataclass(frozen=True)
class CompressSettings:
  """What the compression stage does after the baseline is trained.

  Attributes:
    variants: the compressed models, in table order.
    finetune_steps: fine-tuning steps per variant (batches of ``train.batch_size``).
    finetune_lr_fraction: peak fine-tuning learning rate as a fraction of ``optim.learning_rate``.
    implementation: ``implementation=`` of the factorized layers (``"factorized"`` times the factorized
      computation itself; ``"auto"`` lets a layer run its reconstructed dense kernel where that is faster).
    dense_implementation: what the convs left dense run (:class:`efficonv.Policy`): ``None`` keeps them
      ``nnx.Conv``; ``"auto"`` makes them :class:`efficonv.nnx.Conv` (the fastest dense formulation per
      shape). The dense baseline is timed both ways either way (the faster one counts).
    calibration_size: training images the search variants measure sensitivity on (the first ones).
    stages: compress in this many stages (MUSCO-style, :func:`compress_in_stages`): the convs a variant
      replaces are split into ``stages`` groups in forward order; each group is factorized from the weights
      the previous stages' fine-tuning left, then the network is fine-tuned for its share of
      ``finetune_steps`` (the same total as one stage).
    search_ranks: the candidate rank rules of the search variants (``None``: :func:`efficonv.search`'s
      default, ``MacReduction`` 2–16).
    search_decompose_kwargs: ``{scheme: keywords}`` of the search variants' fits (e.g.
      ``{"cp": {"n_restarts": 1}}`` to make CP's fit at every candidate rank cheaper); the final compression
      makes the same fits.
    search_repeats: timed calls of each candidate layer in the search variants (at least; see
      :func:`efficonv.search`'s ``repeats``).
    search_min_seconds: each candidate's timed calls add up to at least this many seconds (``min_seconds``):
      the allocation is only as good as these times, and a handful of calls of a millisecond layer on a
      shared CPU is not.
    control: fine-tune the dense baseline the same way as the variants (the control for the drops); off,
      the report says there is none (another run with the same baseline can supply it).
    finetune_seeds: fine-tune every variant from this many seeds (data order and augmentation; the factors
      are the same fit). The first seed's model is the row's (its accuracy and its timing: time does not
      depend on the weights); all give ``accuracy_after_ft_seeds``, the spread that an accuracy difference
      between variants is judged against. Single-stage only.
  """

  variants: tuple[Variant, ...]
  finetune_steps: int
  finetune_lr_fraction: float = 0.1
  implementation: str = "factorized"
  dense_implementation: str | None = None
  calibration_size: int = 256
  stages: int = 1
  search_ranks: tuple[Any, ...] | None = None
  search_decompose_kwargs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  search_repeats: int = 20
  search_min_seconds: float = 0.25
  control: bool = True
  finetune_seeds: int = 1


_STANDARD = (
  Variant("cp_mac4", "cp", rank_lib.MacReduction(4)),
  Variant("cp_mac8", "cp", rank_lib.MacReduction(8)),
  Variant("tucker2_mac4", "tucker2", rank_lib.MacReduction(4)),
  Variant("tucker2_mac8", "tucker2", rank_lib.MacReduction(8)),
  Variant("tucker2_energy0.9", "tucker2", rank_lib.Energy(0.9)),
  Variant("tucker2_vbmf", "tucker2", rank_lib.VBMF()),
  Variant("spatial_mac4", "spatial", rank_lib.MacReduction(4)),
)


#: Every variant ``--variants`` can name, whatever the preset.
CATALOG: dict[str, Variant] = {
  v.name: v
  for v in (
    *_STANDARD,
    Variant("cp_energy0.9", "cp", rank_lib.Energy(0.9)),
    Variant("cp_vbmf", "cp", rank_lib.VBMF()),
    Variant("cp_mac6", "cp", rank_lib.MacReduction(6)),
    Variant("cp_mac12", "cp", rank_lib.MacReduction(12)),
    Variant("cp_mac16", "cp", rank_lib.MacReduction(16)),
    Variant("cp_mac20", "cp", rank_lib.MacReduction(20)),
    Variant("cp_mac24", "cp", rank_lib.MacReduction(24)),
    Variant("separable_mac4", "separable", rank_lib.MacReduction(4)),
    Variant("tt_mac4", "tt", rank_lib.MacReduction(4)),
    Variant("tucker2_full", "tucker2", rank_lib.Fixed(1 << 20)),  # clipped to (C_in, C_out)
    Variant("search_speedup4", "search", rank_lib.Speedup(4), search=("cp", "tucker2")),
    Variant("search_speedup5", "search", rank_lib.Speedup(5), search=("cp", "tucker2")),
    Variant("search_speedup8", "search", rank_lib.Speedup(8), search=("cp", "tucker2")),
  )
}


def settings_for(preset: str) -> CompressSettings:
  """The compression settings of a preset.

  * ``full``: the standard variants plus separable and TT, 500 fine-tuning steps.
  * ``quick``: the standard variants (CP and Tucker-2 at 4× and 8× fewer MACs, Tucker-2 at 90% energy and
    by VBMF, spatial at 4×), 100 fine-tuning steps each.
  * ``tiny``: CP at 4×, Tucker-2 at 4× and at full rank (the full-rank one reproduces the dense network), 4
    fine-tuning steps.

  Raises:
    ValueError: naming ``preset`` when it is not one of :data:`experiments.common.config.PRESETS`.
  """
  if preset == "full":
    return CompressSettings(_STANDARD + (CATALOG["separable_mac4"], CATALOG["tt_mac4"]), finetune_steps=500)
  if preset == "quick":
    return CompressSettings(_STANDARD, finetune_steps=100)
  if preset == "tiny":
    return CompressSettings(tuple(CATALOG[n] for n in ("cp_mac4", "tucker2_mac4", "tucker2_full")), finetune_steps=4)
  raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")


def rule_label(rule: Any) -> str:
  """A short name of a rank rule: ``MacReduction(4)``, ``Energy(0.9)``, ``VBMF()``, ``Fixed(8)``."""
  if dataclasses.is_dataclass(rule):
    values = [getattr(rule, f.name) for f in dataclasses.fields(rule)]
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    return f"{type(rule).__name__}({', '.join(shown)})"
  return str(rule)


def finetune(
  cfg: ExperimentConfig,
  graphdef: nnx.GraphDef,
  params: Any,
  rest: Any,
  train_set: data.Dataset,
  steps: int,
  lr_fraction: float,
  parallel: Any,
  seed: int | None = None,
) -> dict[str, Any]:
  """Fine-tunes a split model with the training run's step, for ``steps`` batches of ``train.batch_size``.

  ``seed`` sets the batches' order and the augmentation's randomness (``None``: ``train.seed + 1``).

  Returns:
    ``{"params", "rest", "opt_state", "train_step", "losses", "elapsed_s"}``.
  """
  optim_cfg = dataclasses.replace(cfg.optim, learning_rate=cfg.optim.learning_rate * lr_fraction)
  total = max(steps, 1)
  optimizer = make_optimizer(optim_cfg, total)
  train_step = make_train_step(
    graphdef,
    optimizer,
    parallel,
    dataset_name=train_set.name,
    augment=cfg.data.augment,
    schedule=learning_rate_schedule(optim_cfg, total),
  )
  params, rest = replicate(parallel, (params, rest))
  opt_state = replicate(parallel, optimizer.init(params))
  seed = cfg.train.seed + 1 if seed is None else seed
  rng = replicate(parallel, jax.random.PRNGKey(seed))
  losses, step, epoch, start = [], 0, 0, time.perf_counter()
  while step < steps:
    for images, labels in data.batches(
      train_set.images, train_set.labels, cfg.train.batch_size, seed=seed, epoch=epoch
    ):
      if step >= steps:
        break
      x, y = shard_batch(parallel, images, labels)
      params, rest, opt_state, metrics = train_step(params, rest, opt_state, x, y, rng, step)
      losses.append(metrics["loss"])
      step += 1
    epoch += 1
  losses = [float(v) for v in jax.device_get(losses)]
  return {
    "params": params,
    "rest": rest,
    "opt_state": opt_state,
    "train_step": train_step,
    "losses": losses,
    "elapsed_s": time.perf_counter() - start,
  }


def search_policy(
  variant: Variant,
  settings: CompressSettings,
  model: nnx.Module,
  calibration: Sequence[np.ndarray],
  input_shape: Sequence[int],
  tables: dict[tuple[str, ...], SearchReport],
  reference: Callable[[], Any] | None = None,
) -> tuple[Policy, SearchReport]:
  """The policy of a search variant: :func:`efficonv.search` for its target, or, when an earlier variant
  searched the same schemes (``tables``, updated), :func:`efficonv.policy_search.allocate` on its tables.

  Args:
    variant: a search variant (``variant.search`` its schemes, ``variant.rule`` its target).
    settings: the implementations, candidate ranks and fit keywords.
    model: the trained dense model.
    calibration: standardized input batches the sensitivities are measured on.
    input_shape: NHWC shape the candidates are timed at (the benchmark's batch).
    tables: reports of earlier searches, by their schemes.
    reference: a call of the network the ``Speedup`` targets are relative to (:func:`efficonv.search` times
      it in pairs with the model); the pipeline passes the fastest dense build (:func:`fastest_dense_seconds`).

  Returns:
    ``(policy, report)``.

  Raises:
    ValueError: naming ``variant`` when it is not a search variant.
  """
  if not variant.is_search:
    raise ValueError(f"variant must be a search variant (with search schemes), got {variant!r}")
  earlier = tables.get(variant.search)
  if earlier is not None:
    policy, report = allocate(earlier, variant.rule)
    if not isinstance(variant.rule, rank_lib.Speedup):
      return policy, report
    # As search itself does for a Speedup target: the chosen point assembled and timed whole.
    return verify(report, model, input_shape=input_shape)
  policy, report = search(
    model,
    variant.rule,
    input_shape=input_shape,
    data=list(calibration),
    schemes=variant.search,
    ranks=settings.search_ranks,
    decompose_kwargs=settings.search_decompose_kwargs or None,
    implementation=settings.implementation,
    dense_implementation=settings.dense_implementation,
    measure_time=True,
    repeats=settings.search_repeats,
    min_seconds=settings.search_min_seconds,
    reference=reference,
  )
  tables[variant.search] = report
  return policy, report


def stage_groups(policy: Policy, model: nnx.Module, input_shape: Sequence[int], stages: int) -> list[tuple[str, ...]]:
  """The convs ``policy`` replaces in ``model``, in forward order, split into at most ``stages`` groups.

  A conv counts when the policy names it with a scheme, or, not named, when the uniform fields select it
  (a rank, not the skipped first conv, in ``include``); convs no factorized layer can replace are left out.

  Raises:
    ValueError: naming ``stages`` when it is not a positive int.
  """
  if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
    raise ValueError(f"stages must be a positive int, got {stages!r}")
  convs = {"/".join(str(p) for p in path): node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Conv)}
  paths: list[str] = []
  for index, (path, _) in enumerate(conv_calls(model, input_shape)):
    name = "/".join(str(p) for p in path)
    if name in paths:
      continue
    if name in policy.layers:
      selected = policy.layers[name] != "dense"
    else:
      included = policy.include is None or (not callable(policy.include) and name in policy.include)
      selected = policy.rank is not None and not (policy.skip_first and index == 0) and included
    try:
      conv_kernel(convs[name])
    except ValueError:
      selected = False
    if selected:
      paths.append(name)
  return [tuple(group) for group in np.array_split(np.array(paths, dtype=object), stages) if len(group)]


def compress_in_stages(
  cfg: ExperimentConfig,
  settings: CompressSettings,
  model: nnx.Module,
  policy: Policy,
  input_shape: Sequence[int],
  train_set: data.Dataset,
  test_set: data.Dataset,
  parallel: Any,
) -> dict[str, Any]:
  """Multi-stage compression (MUSCO-style: compress some layers, fine-tune, repeat).

  The convs of :func:`stage_groups` are factorized group by group (each group's policy is ``policy``
  restricted to it, so rank rules read the weights the earlier stages' fine-tuning left), each stage followed
  by fine-tuning for ``finetune_steps // stages`` steps (the last stage also gets the remainder).

  Returns:
    ``{"report", "graphdef", "predict", "before", "tuned", "stages"}``: the combined per-layer report (each
    conv's entry from the stage that replaced it; the policy every stage applied, merged), the final model's
    graphdef and predict function, the test metrics right after the last stage's compression, the last
    fine-tuning (with every stage's losses and time), and one record per stage (its convs, accuracy after
    compression and after fine-tuning, steps).
  """
  eval_batch = cfg.train.eval_batch_size or cfg.train.batch_size
  groups = stage_groups(policy, model, input_shape, settings.stages)
  share, extra = divmod(settings.finetune_steps, max(len(groups), 1))
  entries: dict[str, Any] = {}
  order: list[str] = []
  resolved: dict[str, Any] = {}
  records, losses, elapsed = [], [], 0.0
  first_policy: Policy | None = None
  current, tuned, before, graphdef, predict = model, None, None, None, None
  for k, group in enumerate(groups):
    stage_policy = dataclasses.replace(
      policy, include=group, layers={p: c for p, c in policy.layers.items() if p in group}, skip_first=False
    )
    compressed, report = compress(current, stage_policy, input_shape=input_shape)
    for layer in report.layers:
      if not order or layer.path in group:
        entries[layer.path] = layer
    if not order:
      order = [layer.path for layer in report.layers]
      first_policy = report.policy
    assert report.policy is not None
    resolved.update({p: report.policy.layers[p] for p in group})
    graphdef, params, rest = nnx.split(compressed, nnx.Param, ...)
    predict = make_predict(graphdef)
    before = evaluate(predict, params, rest, test_set, eval_batch, parallel)
    steps = share + (extra if k == len(groups) - 1 else 0)
    tuned = finetune(cfg, graphdef, params, rest, train_set, steps, settings.finetune_lr_fraction, parallel)
    after = evaluate(predict, tuned["params"], tuned["rest"], test_set, eval_batch, parallel)
    losses += tuned["losses"]
    elapsed += tuned["elapsed_s"]
    records.append(
      {
        "convs": list(group),
        "accuracy_compressed": before["accuracy"],
        "accuracy_tuned": after["accuracy"],
        "finetune_steps": steps,
      }
    )
    logger.info(
      "stage %d/%d: %d convs, accuracy %.4f -> %.4f",
      k + 1,
      len(groups),
      len(group),
      before["accuracy"],
      after["accuracy"],
    )
    current = merge(graphdef, tuned["params"], tuned["rest"])
  if tuned is None or first_policy is None:
    raise ValueError(f"policy replaces no conv of the model, so there is nothing to compress in stages: {policy!r}")
  merged = dict(first_policy.layers)
  merged.update(resolved)
  report = Report(tuple(entries[p] for p in order), dataclasses.replace(first_policy, layers=merged))
  return {
    "report": report,
    "graphdef": graphdef,
    "predict": predict,
    "before": before,
    "tuned": {**tuned, "losses": losses, "elapsed_s": elapsed},
    "stages": records,
  }


def compiled_with(graphdef: nnx.GraphDef, options: dict[str, Any]) -> Any:
  """``predict(params, rest, x)`` like :func:`make_predict`'s, compiled with XLA ``options`` (once per shape)."""
  jitted = jax.jit(lambda params, rest, x: merge(graphdef, params, rest)(x, train=False))
  cache: dict[Any, Any] = {}

  def predict(params: Any, rest: Any, x: Any) -> Any:
    key = (x.shape, x.dtype)
    if key not in cache:
      cache[key] = jitted.lower(params, rest, x).compile(options)
    return cache[key](params, rest, x)

  return predict


def fastest_dense_seconds(
  builds: dict[str, Subject], input_shape: Sequence[int], settings: CompressSettings
) -> tuple[str, float, Callable[[], Any]]:
  """The fastest of the dense ``builds`` at ``input_shape``: its name, median inference seconds and call.

  Timed the way :func:`efficonv.search` times the network (:func:`efficonv.planning.median_seconds`, the
  search's ``repeats`` and ``min_seconds``), so that a search's ``Speedup`` target is relative to the fastest
  dense network this process can build, not only to the network as trained.
  """
  x = jnp.asarray(np.random.default_rng(0).standard_normal(tuple(input_shape)).astype(np.float32))
  times, calls = {}, {}
  for name, s in builds.items():
    calls[name] = call = functools.partial(s.predict, s.params, s.rest, x)
    jax.block_until_ready(call())  # compiles
    times[name] = median_seconds(call, repeats=settings.search_repeats, min_seconds=settings.search_min_seconds)[0]
  fastest = min(times, key=times.__getitem__)
  logger.info("fastest dense build for the search: %s, %.2f ms (%s)", fastest, 1e3 * times[fastest], times)
  return fastest, times[fastest], calls[fastest]


def dense_builds(
  cfg: ExperimentConfig, dense_model: nnx.Module, base: Any, train_set: data.Dataset, parallel: Any
) -> dict[str, Subject]:
  """Every dense build of the trained network that is timed; the fastest one is the baseline of the speedups.

  The builds of :func:`experiments.bench.dense_baselines.dense_network_builds` (the whole-network benchmark's
  own): ``dense`` is the network as trained (``nnx.Conv``), ``dense/efficonv`` has every conv as
  :class:`efficonv.nnx.Conv` with ``implementation="auto"`` (the fastest dense formulation per layer); on a
  CPU each is also compiled without YNNPACK fusion (``/no_ynn``). All compute the same function with the
  same weights.
  """
  builds: dict[str, Subject] = {}
  steps: dict[int, Subject] = {}  # one training step per build's model, shared by its compile settings
  for name, (model, options) in dense_network_builds(dense_model, ("nnx", "auto"), ("default", "no_ynn")).items():
    if id(model) not in steps:
      if model is dense_model:
        steps[id(model)] = Subject(
          base.graphdef, base.params, base.rest, base.opt_state, base.train_step, parallel, base.predict
        )
      else:
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        step = finetune(cfg, graphdef, params, rest, train_set, 0, 1.0, parallel)  # its training step, no update
        steps[id(model)] = Subject(
          graphdef, params, rest, step["opt_state"], step["train_step"], parallel, make_predict(graphdef)
        )
    subject = steps[id(model)]
    builds[name] = (
      dataclasses.replace(subject, predict=compiled_with(subject.graphdef, options)) if options else subject
    )
  return builds


def run(
  cfg: ExperimentConfig,
  settings: CompressSettings,
  workdir: str | os.PathLike[str],
  *,
  command: str = "",
) -> dict[str, Any]:
  """Trains (or restores) the dense baseline, compresses, fine-tunes and measures every variant.

  Args:
    cfg: the experiment config (``model.scheme`` is set to ``"dense"``).
    settings: the variants and the fine-tuning.
    workdir: output directory; the baseline trains in ``<workdir>/dense``.
    command: the command line, for the report.

  Returns:
    The payload written to ``compress.json``: ``{"config", "compress", "environment", "dense", "results"}``.

  Raises:
    ValueError: naming ``settings.variants`` when it is empty or has repeated names, ``settings.finetune_seeds``
      when it is not a positive integer or is more than one with ``stages > 1``.
  """
  names = [v.name for v in settings.variants]
  if not names or len(set(names)) != len(names):
    raise ValueError(f"settings.variants must be non-empty with distinct names, got {names}")
  seeds = settings.finetune_seeds
  if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
    raise ValueError(f"settings.finetune_seeds must be a positive integer, got {seeds!r}")
  if seeds > 1 and settings.stages > 1:
    raise ValueError(f"settings.finetune_seeds={seeds} needs a single-stage compression, got stages={settings.stages}")
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  cfg = cfg.with_scheme("dense")
  train_set, test_set = load_datasets(cfg.data, cfg.model.num_classes)
  image_shape = tuple(int(v) for v in train_set.images.shape[1:])
  input_shape = (1, *image_shape)
  eval_batch = cfg.train.eval_batch_size or cfg.train.batch_size

  base = train(cfg, workdir / "dense", datasets=(train_set, test_set))
  parallel = base.parallel
  dense_model = merge(base.graphdef, base.params, base.rest)
  dense_macs = cost.macs(dense_model, input_shape)
  dense_acc = evaluate(base.predict, base.params, base.rest, test_set, eval_batch, parallel)["accuracy"]
  logger.info("dense: test accuracy %.4f, %d MACs/image", dense_acc, dense_macs)
  dense_row: CompressDense = {  # type: ignore[typeddict-item]  # the timings are added below
    "params": cost.params(dense_model),
    "macs": dense_macs,
    "test_accuracy": dense_acc,
    "train_steps": base.steps,
  }
  subjects = dense_builds(cfg, dense_model, base, train_set, parallel)
  # Control: the dense model fine-tuned the same way, so that gains from the extra steps are not credited to
  # the compression (short baselines keep improving).
  if settings.control:
    control = finetune(
      cfg,
      base.graphdef,
      base.params,
      base.rest,
      train_set,
      settings.finetune_steps,
      settings.finetune_lr_fraction,
      parallel,
    )
    dense_row["test_accuracy_after_ft"] = evaluate(
      base.predict, control["params"], control["rest"], test_set, eval_batch, parallel
    )["accuracy"]

  rows: list[CompressRow] = []
  bench_batch = cfg.bench.batch_size or cfg.train.batch_size
  calibration = [
    np.asarray(data.normalize(train_set.images[i : i + eval_batch], train_set.name))
    for i in range(0, min(settings.calibration_size, len(train_set)), eval_batch)
  ]
  tables: dict[tuple[str, ...], SearchReport] = {}
  reference: tuple[str, float, Callable[[], Any]] | None = None
  if any(v.is_search for v in settings.variants):
    reference = fastest_dense_seconds(subjects, (bench_batch, *image_shape), settings)
  for variant in settings.variants:
    start = time.perf_counter()
    searched: SearchReport | None = None
    if variant.is_search:
      policy, searched = search_policy(
        variant,
        settings,
        dense_model,
        calibration,
        (bench_batch, *image_shape),
        tables,
        reference=None if reference is None else reference[2],
      )
      search_s = time.perf_counter() - start
    else:
      policy = Policy(
        scheme=variant.scheme,
        rank=variant.rule,
        implementation=settings.implementation,
        dense_implementation=settings.dense_implementation,
      )
    stages = None
    if settings.stages > 1:
      staged = compress_in_stages(cfg, settings, dense_model, policy, input_shape, train_set, test_set, parallel)
      report, graphdef, predict = staged["report"], staged["graphdef"], staged["predict"]
      before, tuned, stages = staged["before"], staged["tuned"], staged["stages"]
      model = merge(graphdef, tuned["params"], tuned["rest"])
      compress_s = time.perf_counter() - start - tuned["elapsed_s"]
    else:
      model, report = compress(dense_model, policy, input_shape=input_shape)
      compress_s = time.perf_counter() - start
      graphdef, params, rest = nnx.split(model, nnx.Param, ...)
      predict = make_predict(graphdef)
      before = evaluate(predict, params, rest, test_set, eval_batch, parallel)
      tuned = finetune(
        cfg, graphdef, params, rest, train_set, settings.finetune_steps, settings.finetune_lr_fraction, parallel
      )
    after = evaluate(predict, tuned["params"], tuned["rest"], test_set, eval_batch, parallel)
    seed_accuracies = [after["accuracy"]]
    for k in range(1, seeds):
      again = finetune(
        cfg,
        graphdef,
        params,
        rest,
        train_set,
        settings.finetune_steps,
        settings.finetune_lr_fraction,
        parallel,
        seed=cfg.train.seed + 1 + k,
      )
      seed_accuracies.append(
        evaluate(predict, again["params"], again["rest"], test_set, eval_batch, parallel)["accuracy"]
      )
    macs = cost.macs(model, input_shape)
    row: CompressRow = {  # type: ignore[typeddict-item]  # the timings are added below
      "variant": variant.name,
      "scheme": variant.scheme,
      "rule": rule_label(variant.rule),
      "params": cost.params(model),
      "macs": macs,
      "mac_ratio": dense_macs / macs,
      "conv_mac_ratio": report.macs_before / max(report.macs_after, 1),
      "accuracy_dense": dense_acc,
      "accuracy_before_ft": before["accuracy"],
      "accuracy_after_ft": after["accuracy"],
      "drop_points": 100.0 * (dense_acc - after["accuracy"]),
      "loss_before_ft": before["loss"],
      "loss_after_ft": after["loss"],
      "finetune_steps": settings.finetune_steps,
      "accuracy_after_ft_seeds": seed_accuracies,
      "finetune_losses": tuned["losses"],
      "finetune_s": tuned["elapsed_s"],
      "compress_s": compress_s,
      "report": report.to_dict(),
      "report_markdown": report.to_markdown(),
    }
    if stages is not None:
      row["stages"] = stages
    if searched is not None:
      row.update(
        searched_schemes=list(variant.search),
        predicted_speedup=searched.predicted_speedup,
        predicted_mac_ratio=searched.predicted_mac_ratio,
        search_target_met=searched.target_met,
        search_s=search_s,
        search=searched.to_dict(),
        search_markdown=searched.to_markdown(),
      )
      if math.isfinite(searched.measured_speedup):
        row["search_measured_speedup"] = searched.measured_speedup
      if reference is not None:
        # "seconds" is the build timed alone before the search; "paired_seconds" is the time the search's
        # speedups used (the model's time times their paired ratio).
        row["search_reference"] = {
          "build": reference[0],
          "seconds": reference[1],
          "paired_seconds": searched.reference_seconds,
        }
      searched.plot(workdir / f"search_{variant.name}.png")
    rows.append(row)
    logger.info(
      "%s: %.2fx fewer MACs, accuracy %.4f -> %.4f after %d fine-tuning steps (dense %.4f)",
      variant.name,
      row["mac_ratio"],
      row["accuracy_before_ft"],
      row["accuracy_after_ft"],
      settings.finetune_steps,
      dense_acc,
    )
    subjects[variant.name] = Subject(
      graphdef, tuned["params"], tuned["rest"], tuned["opt_state"], tuned["train_step"], parallel, predict
    )

  logger.info("Timing %d models (at least %d calls each)", len(subjects), cfg.bench.repeats)
  timings = benchmark(subjects, cfg.bench, image_shape, bench_batch)
  dense_names = [name for name in subjects if name == "dense" or name.startswith("dense/")]
  fastest_throughput = max(dense_names, key=lambda n: timings[n].inference_images_per_s)
  fastest_latency = min(dense_names, key=lambda n: timings[n].latency_ms)
  dense_t = timings[fastest_throughput]
  dense_row.update(
    inference_images_per_s=dense_t.inference_images_per_s,
    latency_ms=timings[fastest_latency].latency_ms,
    bench_stats=dense_t.stats,
    fastest_dense={"inference": fastest_throughput, "latency": fastest_latency},
    dense_builds={
      n: {"inference_images_per_s": timings[n].inference_images_per_s, "latency_ms": timings[n].latency_ms}
      for n in dense_names
    },
  )
  for row in rows:
    t = timings[row["variant"]]
    row.update(
      inference_images_per_s=t.inference_images_per_s,
      latency_ms=t.latency_ms,
      inference_speedup=t.inference_images_per_s / dense_t.inference_images_per_s,
      latency_speedup=timings[fastest_latency].latency_ms / t.latency_ms,
      measured_speedup_vs_dense=t.inference_images_per_s / timings["dense"].inference_images_per_s,
      bench_stats=t.stats,
    )
  for row in rows:
    if "searched_schemes" in row:
      row["uniform_at_same_speed"] = uniform_at_same_speed(row, rows)
  payload: CompressPayload = {
    "config": config_dict(cfg),
    "compress": {
      "variants": [{"name": v.name, "scheme": v.scheme, "rule": rule_label(v.rule)} for v in settings.variants],
      "finetune_steps": settings.finetune_steps,
      "finetune_lr_fraction": settings.finetune_lr_fraction,
      "implementation": settings.implementation,
      "dense_implementation": settings.dense_implementation,
      "calibration_size": settings.calibration_size,
      "stages": settings.stages,
      "search_ranks": None if settings.search_ranks is None else [rule_label(r) for r in settings.search_ranks],
      "search_decompose_kwargs": settings.search_decompose_kwargs,
      "search_repeats": settings.search_repeats,
      "search_min_seconds": settings.search_min_seconds,
      "control": settings.control,
      "finetune_seeds": seeds,
    },
    "environment": environment(command or None),
    "bench_batch_size": bench_batch,
    "dense": dense_row,
    "results": rows,
  }
  results.write(workdir / "compress.json", payload)
  (workdir / "compress.md").write_text(markdown(payload, command))
  pareto_plot(payload, workdir / "pareto.png")
  logger.info("Wrote %s and %s", workdir / "compress.md", workdir / "compress.json")
  return payload


def mean_accuracy(row: CompressRow) -> tuple[float, float]:
  """The mean and sample standard deviation of ``row``'s accuracies after fine-tuning over its seeds."""
  values = row.get("accuracy_after_ft_seeds") or [row["accuracy_after_ft"]]
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def uniform_at_same_speed(searched: CompressRow, rows: Sequence[CompressRow]) -> list[dict[str, Any]]:
  """The uniform ``MacReduction`` rule's accuracy at the measured speed of a search variant, per scheme.

  For each scheme with uniform ``MacReduction`` variants in ``rows``, the two whose measured throughput
  speedups (same benchmark) bracket ``searched``'s nearest are interpolated linearly in speedup (mean
  accuracies over the fine-tuning seeds). A scheme whose variants do not bracket it says so
  (``"bracketed": False``) with its nearest variant: an extrapolation would claim more than was measured.

  The accuracies before fine-tuning are interpolated alike: they show what the search's allocation buys by
  itself, which fine-tuning may then erase.

  Returns:
    One dict per scheme: ``scheme``, ``bracketed``, ``between`` (variant names), ``accuracy`` (interpolated;
    absent when not bracketed), ``search_accuracy`` and ``difference_points`` (search minus uniform), and the
    same before fine-tuning: ``accuracy_before_ft``, ``search_accuracy_before_ft``,
    ``difference_before_ft_points``.
  """
  speed = searched["inference_speedup"]
  search_mean, _ = mean_accuracy(searched)
  uniform = [r for r in rows if "searched_schemes" not in r and r["rule"].startswith("MacReduction")]
  out: list[dict[str, Any]] = []
  for scheme in sorted({r["scheme"] for r in uniform}):
    points = sorted(
      (r["inference_speedup"], mean_accuracy(r)[0], r["accuracy_before_ft"], r["variant"])
      for r in uniform
      if r["scheme"] == scheme
    )
    below = [p for p in points if p[0] <= speed]
    above = [p for p in points if p[0] >= speed]
    entry: dict[str, Any] = {
      "scheme": scheme,
      "speedup": speed,
      "search_accuracy": search_mean,
      "search_accuracy_before_ft": searched["accuracy_before_ft"],
    }
    if not below or not above:
      nearest = min(points, key=lambda p: abs(p[0] - speed))
      out.append({**entry, "bracketed": False, "between": [nearest[3]]})
      continue
    (s0, a0, b0, n0), (s1, a1, b1, n1) = below[-1], above[0]
    weight = 0.0 if s1 == s0 else (speed - s0) / (s1 - s0)
    accuracy, before = a0 + weight * (a1 - a0), b0 + weight * (b1 - b0)
    out.append(
      {
        **entry,
        "bracketed": True,
        "between": [n0, n1],
        "accuracy": accuracy,
        "difference_points": 100 * (search_mean - accuracy),
        "accuracy_before_ft": before,
        "difference_before_ft_points": 100 * (searched["accuracy_before_ft"] - before),
      }
    )
  return out


def markdown(payload: CompressPayload, command: str = "") -> str:
  """The report: the summary table, then every variant's per-layer compression report."""
  cfg, env, dense = payload["config"], payload["environment"], payload["dense"]
  settings = payload["compress"]
  lines = [
    f"# Compression of the dense baseline: {cfg['name']} ({cfg['preset']})",
    "",
    f"Command: `{command}`" if command else "",
    "",
    f"Dense baseline: {dense['train_steps']} training steps, test accuracy {100 * dense['test_accuracy']:.2f}% "
    + (
      f"({100 * dense['test_accuracy_after_ft']:.2f}% after the same fine-tuning as the variants), "
      if "test_accuracy_after_ft" in dense
      else "(not fine-tuned in this run: no control for the drops), "
    )
    + f"{dense['macs']:,} MACs/image, {dense['params']:,} params, "
    f"{dense['inference_images_per_s']:.0f} images/s inference (batch {payload['bench_batch_size']}). "
    f"Each variant factorizes every conv after the stem (`efficonv.compress`, implementation "
    f"`{settings['implementation']}`), then fine-tunes {settings['finetune_steps']} steps at "
    f"{settings['finetune_lr_fraction']:g}× the training learning rate"
    + (
      f", in {settings['stages']} stages (MUSCO-style: one group of convs at a time, in forward order, each "
      "followed by its share of the fine-tuning)."
      if settings.get("stages", 1) > 1
      else "."
    ),
    "",
    f"Measured on {env.get('device_kind', '?')} ({env.get('date', '?')}); MAC ratio is whole-network "
    "(`efficonv.cost.macs` of the dense model / of the compressed one); speedups are against the fastest dense "
    "build (below), timed in the same process, interleaved (median calls): throughput at batch "
    f"{payload['bench_batch_size']} and latency at batch {cfg.get('bench', {}).get('latency_batch_size', 1)}.",
    "",
  ]
  builds = dense.get("dense_builds")
  if builds:
    fastest = dense.get("fastest_dense", {})
    lines += [
      "| dense build | images/s | latency (ms) |",
      "|---|---|---|",
      *(
        f"| {name}{' (fastest throughput)' if name == fastest.get('inference') else ''}"
        f"{' (fastest latency)' if name == fastest.get('latency') else ''} | {b['inference_images_per_s']:.0f} | "
        f"{b['latency_ms']:.2f} |"
        for name, b in builds.items()
      ),
      "",
    ]
  lines += [
    "Search variants (`efficonv.search`) predict their throughput speedup from each conv's candidates timed "
    "alone at the benchmark batch plus the rest of the network, over the fastest dense build timed before the "
    "search (`reference`; without one, over the `dense` build, the network as trained); for a `Speedup` "
    "target the search then assembles its chosen point and times it whole (*in search*), re-allocating when "
    "it misses. *predicted*, *in search* and *measured* compare those with the benchmark's speedup over the "
    "same baseline (the fastest dense build, or `dense`).",
    "",
    "| variant | scheme | rule | MAC ratio | throughput speedup | latency speedup | acc dense | acc before FT | "
    "acc after FT | drop (points) | predicted speedup | in search | measured |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in payload["results"]:
    predicted = f"{r['predicted_speedup']:.2f}×" if "predicted_speedup" in r else "—"
    in_search = r.get("search_measured_speedup")
    verified = "—" if in_search is None else f"{in_search:.2f}×"
    if "search_reference" in r:
      measured = f"{r['inference_speedup']:.2f}×"
    elif "measured_speedup_vs_dense" in r:
      measured = f"{r['measured_speedup_vs_dense']:.2f}× (vs dense)"
    else:
      measured = "—"
    scheme = f"search({', '.join(r['searched_schemes'])})" if "searched_schemes" in r else r["scheme"]
    after = f"{100 * r['accuracy_after_ft']:.2f}%"
    if len(r.get("accuracy_after_ft_seeds", ())) > 1:
      mean, sd = mean_accuracy(r)
      after += f" ({100 * mean:.2f} ± {100 * sd:.2f}, {len(r['accuracy_after_ft_seeds'])} seeds)"
    lines.append(
      f"| {r['variant']} | {scheme} | {r['rule']} | {r['mac_ratio']:.2f}× | {r['inference_speedup']:.2f}× | "
      f"{r['latency_speedup']:.2f}× | {100 * r['accuracy_dense']:.2f}% | {100 * r['accuracy_before_ft']:.2f}% | "
      f"{after} | {r['drop_points']:+.2f} | {predicted} | {verified} | {measured} |"
    )
  compared = [r for r in payload["results"] if r.get("uniform_at_same_speed")]
  if compared:
    lines += [
      "",
      "## Search against the uniform rule at the same measured speed",
      "",
      "The uniform `MacReduction` variants of each scheme whose measured throughput speedups bracket the "
      "search's are interpolated linearly in speedup (mean accuracy after fine-tuning over the seeds; before "
      "fine-tuning, what the allocation buys by itself).",
      "",
      "| search variant | measured | scheme | uniform between | uniform accuracy | search accuracy | search − uniform "
      "| before FT: uniform | search | search − uniform |",
      "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in compared:
      for c in r["uniform_at_same_speed"]:
        search_before = f"{100 * c['search_accuracy_before_ft']:.2f}%"
        if c["bracketed"]:
          uniform, diff = f"{100 * c['accuracy']:.2f}%", f"{c['difference_points']:+.2f} pt"
          before = (
            f"{100 * c['accuracy_before_ft']:.2f}% | {search_before} | {c['difference_before_ft_points']:+.2f} pt"
          )
        else:
          uniform, diff = f"not bracketed (nearest: {c['between'][0]})", "—"
          before = f"— | {search_before} | —"
        lines.append(
          f"| {r['variant']} | {c['speedup']:.2f}× | {c['scheme']} | {' and '.join(c['between'])} | {uniform} | "
          f"{100 * c['search_accuracy']:.2f}% | {diff} | {before} |"
        )
  lines += ["", "## Per-layer compression reports", ""]
  for r in payload["results"]:
    lines += [f"### {r['variant']}", "", r["report_markdown"], ""]
    if "search_markdown" in r:
      lines += [f"Search tables ({r['search_s']:.0f} s):", "", r["search_markdown"], ""]
  return "\n".join(lines)


def pareto_plot(payload: CompressPayload, path: str | os.PathLike[str]) -> None:
  """Test accuracy after fine-tuning against measured latency, every variant and the fastest dense build."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  dense = payload["dense"]
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  ax.scatter([dense["latency_ms"]], [100 * dense["test_accuracy"]], marker="*", s=160, color="black")
  ax.annotate("dense (fastest build)", (dense["latency_ms"], 100 * dense["test_accuracy"]), fontsize=8)
  for r in payload["results"]:
    ax.scatter(
      [r["latency_ms"]], [100 * r["accuracy_after_ft"]], color="tab:blue" if r["scheme"] == "cp" else "tab:orange"
    )
    ax.annotate(r["variant"], (r["latency_ms"], 100 * r["accuracy_after_ft"]), fontsize=8)
  ax.set_xscale("log")
  ax.set_xlabel(f"measured latency (ms, batch {payload['config'].get('bench', {}).get('latency_batch_size', 1)})")
  ax.set_ylabel("test accuracy after fine-tuning (%)")
  ax.set_title(f"{payload['config']['name']}: accuracy against latency")
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
  add_config_arguments(parser)
  parser.add_argument("--workdir", default=None, help="default: results/compress_<config>_<preset>")
  parser.add_argument(
    "--variants", default=None, help=f"comma-separated variants (default: the preset's), of {sorted(CATALOG)}"
  )
  parser.add_argument("--finetune-steps", type=int, default=None, help="default: the preset's")
  parser.add_argument(
    "--implementation", default=None, help="implementation= of the factorized layers (default 'factorized'; 'auto')"
  )
  parser.add_argument(
    "--dense-implementation", default=None, help="what the convs left dense run: 'auto' (efficonv.nnx.Conv) or None"
  )
  parser.add_argument(
    "--stages", type=int, default=None, help="compress in this many stages, fine-tuning after each (default 1)"
  )
  parser.add_argument(
    "--search-reductions",
    default=None,
    help="comma-separated MAC reductions whose ranks are the search variants' candidates (default 2,3,4,6,8,12,16)",
  )
  parser.add_argument(
    "--search-cp-restarts", type=int, default=None, help="n_restarts of the search variants' CP fits (default 4)"
  )
  parser.add_argument(
    "--no-control",
    action="store_true",
    help="do not fine-tune the dense baseline as the control (another run with the same baseline has it)",
  )
  parser.add_argument(
    "--finetune-seeds",
    type=int,
    default=None,
    help="fine-tune every variant from this many seeds (the spread of its accuracy; default 1)",
  )
  parser.add_argument(
    "--search-min-seconds",
    type=float,
    default=None,
    help="seconds of timed calls per candidate layer in the search variants (default 0.25; at least 20 calls)",
  )
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command line."""
  args = parse_args(argv)
  setup_logging()
  cfg = config_from_args(args)
  settings = settings_for(args.preset)
  if args.variants is not None:
    wanted = [s.strip() for s in args.variants.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in CATALOG]
    if unknown:
      raise ValueError(f"--variants must name variants of {sorted(CATALOG)}, got {unknown}")
    settings = dataclasses.replace(settings, variants=tuple(CATALOG[w] for w in wanted))
  if args.finetune_steps is not None:
    if args.finetune_steps < 0:
      raise ValueError(f"--finetune-steps must be >= 0, got {args.finetune_steps}")
    settings = dataclasses.replace(settings, finetune_steps=args.finetune_steps)
  if args.dense_implementation is not None:
    settings = dataclasses.replace(settings, dense_implementation=args.dense_implementation)
  if args.implementation is not None:
    settings = dataclasses.replace(settings, implementation=args.implementation)
  if args.stages is not None:
    if args.stages < 1:
      raise ValueError(f"--stages must be >= 1, got {args.stages}")
    settings = dataclasses.replace(settings, stages=args.stages)
  if args.search_reductions is not None:
    reductions = tuple(rank_lib.MacReduction(float(v)) for v in args.search_reductions.split(",") if v.strip())
    settings = dataclasses.replace(settings, search_ranks=reductions)
  if args.search_cp_restarts is not None:
    kwargs = {**settings.search_decompose_kwargs, "cp": {"n_restarts": args.search_cp_restarts}}
    settings = dataclasses.replace(settings, search_decompose_kwargs=kwargs)
  if args.no_control:
    settings = dataclasses.replace(settings, control=False)
  if args.finetune_seeds is not None:
    settings = dataclasses.replace(settings, finetune_seeds=args.finetune_seeds)
  if args.search_min_seconds is not None:
    settings = dataclasses.replace(settings, search_min_seconds=args.search_min_seconds)
  workdir = args.workdir or os.path.join("results", f"compress_{args.config}_{args.preset}")
  command = command_line(__spec__.name, argv)
  payload = run(cfg, settings, workdir, command=command)
  print((Path(workdir) / "compress.md").read_text().split("## Per-layer")[0])
  print(json.dumps({r["variant"]: round(r["accuracy_after_ft"], 4) for r in payload["results"]}))
  return payload


if __name__ == "__main__":
  main()
