"""The main experiment: train the baseline and every scheme, measure them all, write a report.

Usage::

  python -m experiments.claims.compare [--config NAME] [--preset tiny|quick|full] [--workdir results/<run>]
                                [--schemes dense,cp,...] [--set section.field=value ...]

Defaults: ``--config compare_fashion_mnist --preset quick --workdir results/<config>_<preset>``. The quick
preset takes about 5 minutes on 2 CPU cores; ``full`` gives the real numbers (see the config's header).

For each scheme in ``config.schemes`` (every convolution after the first built by that scheme, see
:mod:`experiments.schemes`) it trains the model (:func:`experiments.training.train.train`, in ``<workdir>/<scheme>``,
resumable: rerunning the command continues killed runs and skips finished ones), then counts its parameters
and MACs (:mod:`efficonv.cost`, traced forward pass) and its test accuracy. After all are trained, it times
inference throughput, batch-1 latency and training throughput of all models in the same process, interleaved
(:mod:`experiments.training.throughput`), and writes ``compare.md``, ``compare.json``, ``pareto.png`` and
``curves.png`` into the workdir (:mod:`experiments.claims.report`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from efficonv import cost
from experiments.claims.report import add_ratios, write_report
from experiments.cli import add_config_arguments, command_line, config_from_args, setup_logging
from experiments.common.config import ExperimentConfig, override
from experiments.common.environment import environment
from experiments.common.results import ComparePayload, CompareRow
from experiments.schemes import check_scheme, reference_of
from experiments.training.steps import merge
from experiments.training.throughput import Subject, benchmark
from experiments.training.train import config_dict, load_datasets, train

logger = logging.getLogger("experiments.claims.compare")


def run(cfg: ExperimentConfig, workdir: str | os.PathLike[str], *, command: str = "") -> dict[str, Any]:
  """Trains and measures every scheme of ``cfg`` and writes the report into ``workdir``.

  Args:
    cfg: the experiment config.
    workdir: output directory (one subdirectory per scheme).
    command: the command line, for the report.

  Returns:
    The payload written to ``compare.json``: ``{"config", "environment", "results"}``.

  Raises:
    ValueError: naming ``cfg.schemes`` when it is empty, has an unknown scheme, or lacks the baseline.
  """
  if not cfg.schemes:
    raise ValueError("cfg.schemes must name at least one scheme, got ()")
  for scheme in cfg.schemes:
    check_scheme(scheme)
  if cfg.baseline not in cfg.schemes:
    raise ValueError(f"cfg.schemes must include the baseline {cfg.baseline!r}, got {cfg.schemes}")
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  datasets = load_datasets(cfg.data, cfg.model.num_classes)
  image_shape = datasets[0].images.shape[1:]
  rows: list[CompareRow] = []
  subjects = {}
  for scheme in cfg.schemes:
    run_cfg = cfg.with_scheme(scheme)
    result = train(run_cfg, workdir / scheme, datasets=datasets)
    model = merge(result.graphdef, result.params, result.rest)
    rows.append(
      {  # type: ignore[typeddict-item]  # the timings are added below
        "scheme": scheme,
        "reference": _reference(scheme, cfg),
        "params": cost.params(model),
        "macs": cost.macs(model, (1, *image_shape)),
        "test_accuracy": result.test["accuracy"],
        "test_loss": result.test["loss"],
        "train_steps": result.steps,
        "train_elapsed_s": result.elapsed_s,
        "history": result.history,
      }
    )
    logger.info(
      "%s: test accuracy %.4f, %d params, %d MACs/image",
      scheme,
      rows[-1]["test_accuracy"],
      rows[-1]["params"],
      rows[-1]["macs"],
    )
    subjects[scheme] = Subject(
      result.graphdef, result.params, result.rest, result.opt_state, result.train_step, result.parallel, result.predict
    )
  logger.info("Timing %d models (at least %d calls each)", len(subjects), cfg.bench.repeats)
  bench_batch = cfg.bench.batch_size or cfg.train.batch_size
  timings = benchmark(subjects, cfg.bench, image_shape, bench_batch)
  for row in rows:
    t = timings[row["scheme"]]
    row.update(
      inference_images_per_s=t.inference_images_per_s,
      inference_ms_per_image=t.inference_ms_per_image,
      latency_ms=t.latency_ms,
      train_images_per_s=t.train_images_per_s,
      bench_stats=t.stats,
    )
  add_ratios(rows)
  payload: ComparePayload = {
    "config": config_dict(cfg),
    "environment": environment(command or None),
    "bench_batch_size": bench_batch,
    "results": rows,
  }
  paths = write_report(workdir, payload, command)
  logger.info("Wrote %s", ", ".join(str(p) for p in paths.values()))
  return payload


def _reference(scheme: str, cfg: ExperimentConfig) -> str:
  """The scheme's reference (:func:`experiments.schemes.reference_of`) if it is run, else the baseline."""
  reference = reference_of(scheme, cfg.baseline)
  return reference if reference in cfg.schemes else cfg.baseline


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
  add_config_arguments(parser)
  parser.add_argument("--workdir", default=None, help="default: results/<config>_<preset>")
  parser.add_argument("--schemes", default=None, help="comma-separated subset of the config's schemes")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command line."""
  args = parse_args(argv)
  setup_logging()
  cfg = config_from_args(args)
  if args.schemes is not None:
    cfg = override(cfg, [f"schemes={tuple(s.strip() for s in args.schemes.split(',') if s.strip())!r}"])
  workdir = args.workdir or os.path.join("results", f"{args.config}_{args.preset}")
  command = command_line(__spec__.name, argv)
  payload = run(cfg, workdir, command=command)
  print((Path(workdir) / "compare.md").read_text())
  return payload


if __name__ == "__main__":
  main()
