"""The README's usage example runs as printed (documentation that cannot rot silently)."""

from __future__ import annotations

import pathlib
import re

import jax
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


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
