"""Command-line pieces shared by the experiment entry points (train, compare, compress)."""

from __future__ import annotations

import argparse
import logging

from experiments.common.config import DEFAULT_CONFIG, PRESETS, ExperimentConfig, load, override


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds ``--config``, ``--preset`` and the repeatable ``--set FIELD=VALUE``."""
  parser.add_argument("--config", default=DEFAULT_CONFIG, help="config module in experiments/configs")
  parser.add_argument("--preset", default="quick", choices=PRESETS)
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
  """The config named by ``--config``/``--preset`` with the ``--set`` overrides applied."""
  return override(load(args.config, args.preset), args.set)


def setup_logging() -> None:
  """Timestamped log lines; INFO from ``experiments``, WARNING from everything else."""
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", force=True)
  logging.getLogger("experiments").setLevel(logging.INFO)
