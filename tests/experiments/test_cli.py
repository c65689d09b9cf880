"""``python -m experiments`` lists every entry point, with the description its module docstring gives."""

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

from experiments import cli

REPO = Path(__file__).resolve().parents[2]


def test_commands_are_exactly_the_modules_with_a_main_guard():
  found = dict(cli.commands())
  guarded = {
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__main__")
    for p in (REPO / "experiments").rglob("*.py")
    if re.search(r'^if __name__ == "__main__":$', p.read_text(), flags=re.M)
  } - {"experiments"}
  assert set(found) == guarded
  assert {"experiments.claims.compare", "experiments.claims.verdicts", "experiments.bench.layers"} <= set(found)
  for module, description in found.items():
    mod = importlib.import_module(module)
    assert callable(mod.main), module
    assert description == ast.get_docstring(ast.parse(Path(mod.__file__).read_text())).splitlines()[0]
  assert "experiments.claims.verdicts" in found  # a package entry point (its __main__.py)


def test_python_dash_m_experiments_prints_every_command():
  out = subprocess.run(
    [sys.executable, "-m", "experiments"], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
  ).stdout
  for module, description in cli.commands():
    assert f"python -m {module}" in out and description in out


def test_at_most_six_plain_modules_at_the_top_level():
  top = sorted(p.name for p in (REPO / "experiments").glob("*.py"))
  assert len(top) <= 6, top


def test_command_line_records_the_module_and_its_arguments():
  assert cli.command_line("experiments.bench.layers", ["--quick", "--out", "a b"]) == (
    "python -m experiments.bench.layers --quick --out 'a b'"
  )
