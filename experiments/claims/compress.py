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
   training run's own step (:func:`experiments.training.steps.make_train_step`), and measure it again.
3. Time inference of the dense model and every compressed one in the same process, interleaved
   (:mod:`experiments.training.throughput`), and count whole-network MACs (:func:`efficonv.cost.macs`).
4. Write ``compress.md`` and ``compress.json`` into the workdir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from efficonv import cost
from efficonv import rank as rank_lib
from efficonv.compression import Policy, compress
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
  """One compressed model: a scheme and a rank rule applied to every conv after the stem.

  Attributes:
    name: the variant's name in the report.
    scheme: a scheme of :data:`efficonv.schemes`.
    rule: a rank rule of :mod:`efficonv.rank` (or a fixed rank of the scheme's kind).
  """

  name: str
  scheme: str
  rule: Any


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
  """

  variants: tuple[Variant, ...]
  finetune_steps: int
  finetune_lr_fraction: float = 0.1
  implementation: str = "factorized"
  dense_implementation: str | None = None


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
    Variant("separable_mac4", "separable", rank_lib.MacReduction(4)),
    Variant("tt_mac4", "tt", rank_lib.MacReduction(4)),
    Variant("tucker2_full", "tucker2", rank_lib.Fixed(1 << 20)),  # clipped to (C_in, C_out)
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
) -> dict[str, Any]:
  """Fine-tunes a split model with the training run's step, for ``steps`` batches of ``train.batch_size``.

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
  rng = replicate(parallel, jax.random.PRNGKey(cfg.train.seed + 1))
  losses, step, epoch, start = [], 0, 0, time.perf_counter()
  while step < steps:
    for images, labels in data.batches(
      train_set.images, train_set.labels, cfg.train.batch_size, seed=cfg.train.seed + 1, epoch=epoch
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
    ValueError: naming ``settings.variants`` when it is empty or has repeated names.
  """
  names = [v.name for v in settings.variants]
  if not names or len(set(names)) != len(names):
    raise ValueError(f"settings.variants must be non-empty with distinct names, got {names}")
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
  for variant in settings.variants:
    start = time.perf_counter()
    policy = Policy(
      scheme=variant.scheme,
      rank=variant.rule,
      implementation=settings.implementation,
      dense_implementation=settings.dense_implementation,
    )
    model, report = compress(dense_model, policy, input_shape=input_shape)
    compress_s = time.perf_counter() - start
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    predict = make_predict(graphdef)
    before = evaluate(predict, params, rest, test_set, eval_batch, parallel)
    tuned = finetune(
      cfg, graphdef, params, rest, train_set, settings.finetune_steps, settings.finetune_lr_fraction, parallel
    )
    after = evaluate(predict, tuned["params"], tuned["rest"], test_set, eval_batch, parallel)
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
      "finetune_losses": tuned["losses"],
      "finetune_s": tuned["elapsed_s"],
      "compress_s": compress_s,
      "report": report.to_dict(),
      "report_markdown": report.to_markdown(),
    }
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
  bench_batch = cfg.bench.batch_size or cfg.train.batch_size
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
      bench_stats=t.stats,
    )
  payload: CompressPayload = {
    "config": config_dict(cfg),
    "compress": {
      "variants": [{"name": v.name, "scheme": v.scheme, "rule": rule_label(v.rule)} for v in settings.variants],
      "finetune_steps": settings.finetune_steps,
      "finetune_lr_fraction": settings.finetune_lr_fraction,
      "implementation": settings.implementation,
      "dense_implementation": settings.dense_implementation,
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
    f"({100 * dense['test_accuracy_after_ft']:.2f}% after the same fine-tuning as the variants), "
    f"{dense['macs']:,} MACs/image, {dense['params']:,} params, "
    f"{dense['inference_images_per_s']:.0f} images/s inference (batch {payload['bench_batch_size']}). "
    f"Each variant factorizes every conv after the stem (`efficonv.compress`, implementation "
    f"`{settings['implementation']}`), then fine-tunes {settings['finetune_steps']} steps at "
    f"{settings['finetune_lr_fraction']:g}× the training learning rate.",
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
    "| variant | scheme | rule | MAC ratio | throughput speedup | latency speedup | acc dense | acc before FT | "
    "acc after FT | drop (points) |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in payload["results"]:
    lines.append(
      f"| {r['variant']} | {r['scheme']} | {r['rule']} | {r['mac_ratio']:.2f}× | {r['inference_speedup']:.2f}× | "
      f"{r['latency_speedup']:.2f}× | {100 * r['accuracy_dense']:.2f}% | {100 * r['accuracy_before_ft']:.2f}% | "
      f"{100 * r['accuracy_after_ft']:.2f}% | {r['drop_points']:+.2f} |"
    )
  lines += ["", "## Per-layer compression reports", ""]
  for r in payload["results"]:
    lines += [f"### {r['variant']}", "", r["report_markdown"], ""]
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
  workdir = args.workdir or os.path.join("results", f"compress_{args.config}_{args.preset}")
  command = command_line(__spec__.name, argv)
  payload = run(cfg, settings, workdir, command=command)
  print((Path(workdir) / "compress.md").read_text().split("## Per-layer")[0])
  print(json.dumps({r["variant"]: round(r["accuracy_after_ft"], 4) for r in payload["results"]}))
  return payload


if __name__ == "__main__":
  main()
