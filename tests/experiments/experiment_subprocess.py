"""Running experiment commands in fresh Python processes (for kill, device-count and end-to-end tests)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
  """The environment of a test subprocess: CPU only, and XLA compiling without backend optimizations.

  The tests check results, not speed, and unoptimized compilation is several times faster. Both runs of a
  comparison use the same flags, so their floats are comparable bit for bit.
  """
  out = dict(os.environ)
  out["JAX_PLATFORMS"] = "cpu"
  out["XLA_FLAGS"] = " ".join(["--xla_backend_optimization_level=0", extra.pop("XLA_FLAGS", "")]).strip()
  out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH", "")) if p)
  out.update(extra)
  return out


def run(args: list[str], *, timeout: float, **extra_env: str) -> subprocess.CompletedProcess[str]:
  """Runs ``python *args`` in the repository root; raises with its output if it fails."""
  result = subprocess.run(
    [sys.executable, *args], cwd=REPO, env=env(**extra_env), capture_output=True, text=True, timeout=timeout
  )
  if result.returncode != 0:
    raise AssertionError(f"{args} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}")
  return result


def start(args: list[str], log: Path, **extra_env: str) -> subprocess.Popen[str]:
  """Starts ``python *args`` in the repository root, its stdout and stderr going to the file ``log``."""
  with log.open("w") as f:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env(**extra_env), stdout=f, stderr=subprocess.STDOUT)
