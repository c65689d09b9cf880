"""The README's usage example runs as printed, and every experiment command it names exists."""

from __future__ import annotations

import pathlib
import re

import jax
import numpy as np

from experiments import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# Everywhere a command is written for people to run (the generated experiments/README.md included).
COMMAND_DOCS = (
  README,
  REPO / "experiments" / "README.md",
  REPO / "experiments" / "setup.sh",
  *sorted((REPO / "experiments" / "configs").glob("*.py")),
)


def _python_blocks() -> list[str]:
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_usage_example_runs() -> None:
  usage = _python_blocks()[0]
  namespace: dict = {}
  exec(compile(usage, str(README), "exec"), namespace)
  y, x = namespace["y"], namespace["x"]
  assert y.shape == (8, 16, 16, 64)  # the strided CP format call is the last assignment to y
  kernel = namespace["dense_kernel"]
  assert kernel.shape == (3, 3, 64, 64)
  # The layer and its reconstructed kernel agree, as the README says.
  cp = namespace["cp"]
  want = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(cp(x), want + cp.bias[...].reshape(1, 1, 1, -1), rtol=1e-4, atol=1e-4)


def test_every_experiment_command_names_an_entry_point() -> None:
  entry_points = {m for m, _ in cli.commands()}
  # Commands recorded inside results files (historical runs) are quoted after "made by"; they are not checked.
  named = {
    (doc.name, m)
    for doc in COMMAND_DOCS
    for line in doc.read_text().splitlines()
    for m in re.findall(r"python -m (experiments[\w.]*)", line.split("made by")[0])
  }
  assert named, "no experiment command found"
  unknown = sorted((doc, m) for doc, m in named if m not in entry_points and m != "experiments")
  assert not unknown, unknown


def test_the_main_job_is_one_command() -> None:
  blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
  assert any("bash experiments/setup.sh && .venv/bin/python -m experiments.claims.compare\n" in b for b in blocks)
