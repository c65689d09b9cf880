"""The command line: the list of entry points, and the pieces they share (config arguments, logging).

Every module of :mod:`experiments` that ends in ``if __name__ == "__main__":`` (and every package with such a
``__main__.py``) is an entry point, run as ``python -m <module>``; :func:`commands` finds them by reading the source (nothing is imported, so listing
them is instant) and takes each one's description from the first line of its module docstring, so the list
cannot drift from the modules. ``python -m experiments`` prints it.

Example:
  >>> from experiments import cli
  >>> dict(cli.commands())["experiments.claims.compare"].startswith("The main experiment")
  True
"""

from __future__ import annotations

import argparse
import ast
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.common.config import DEFAULT_CONFIG, PRESETS, ExperimentConfig, load, override

PACKAGE_DIR = Path(__file__).resolve().parent


def _is_entry_point(tree: ast.Module) -> bool:
  """Whether the module ends its top level with ``if __name__ == "__main__":``."""
  for node in tree.body:
    if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
      left, comparators = node.test.left, node.test.comparators
      if (
        isinstance(left, ast.Name)
        and left.id == "__name__"
        and len(comparators) == 1
        and isinstance(comparators[0], ast.Constant)
        and comparators[0].value == "__main__"
      ):
        return True
  return False


def commands(root: Path = PACKAGE_DIR) -> list[tuple[str, str]]:
  """Every entry point below ``root``, as ``(module, description)``, sorted by module name.

  Args:
    root: the ``experiments`` package directory.

  Returns:
    ``("experiments.claims.compare", "The main experiment: ...")`` and so on; the description is the first
    line of the module docstring.

  Raises:
    ValueError: naming the module when an entry point has no docstring.
  """
  out = []
  for path in sorted(root.rglob("*.py")):
    parts = path.relative_to(root).with_suffix("").parts
    if path.name == "__init__.py" or "results" in parts or parts == ("__main__",):
      continue
    tree = ast.parse(path.read_text(), str(path))
    if not _is_entry_point(tree):
      continue
    if path.name == "__main__.py":  # a package run with -m: its name, and its __init__'s docstring
      parts = parts[:-1]
      tree = ast.parse((path.parent / "__init__.py").read_text())
    module = ".".join((root.name, *parts))
    doc = ast.get_docstring(tree)
    if not doc:
      raise ValueError(f"entry point {module} must have a module docstring (its description), it has none")
    out.append((module, doc.strip().splitlines()[0]))
  return sorted(out)


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
  """The command that ran ``module``, for results files: ``python -m <module> <args>``.

  Args:
    module: the entry point's module name (its ``__spec__.name``, also when run with ``-m``).
    argv: the arguments given to its ``main`` (``sys.argv[1:]`` when ``None``).

  Returns:
    The shell-quoted command line.

  Example:
    >>> command_line("experiments.claims.compare", ["--preset", "full"])
    'python -m experiments.claims.compare --preset full'
  """
  return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def list_commands() -> str:
  """The text ``python -m experiments`` prints: one line per entry point with its description."""
  entries = commands()
  width = max(len(m) for m, _ in entries)
  lines = ["Commands (run as `python -m <module> --help` for their options):", ""]
  lines += [f"  python -m {m:{width}s}  {d}" for m, d in entries]
  return "\n".join(lines)


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
