"""Every efficonv name the experiments use that the library does not export publicly yet, in one place.

The library is getting public homes for these (``efficonv.typing.Array``, ``efficonv.planning.RATES``,
``efficonv.planning.TRAINING_FACTORS``, ``efficonv.kernels.geometry``, ``Format.steps`` and a step-cost
function in ``efficonv.planning``). Until then they are read here from the private modules, and nothing else
in :mod:`experiments` imports a private efficonv name: switching to the public names is a change to this file
only.

Example:
  >>> from experiments.common import library
  >>> sorted(library.RATES["cpu"])[:2]
  ['conv', 'depthwise_shift']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from efficonv._typing import Array as Array
from efficonv.formats._base import _RATES, _TRAINING_FACTOR
from efficonv.formats._base import geometry as _geometry

RATES: Mapping[str, Mapping[str, float]] = _RATES
"""Per backend, the cost model's throughput of each step kind (MACs/s) and its per-step cost ``step`` (s)."""

TRAINING_FACTORS: Mapping[str, Mapping[str, float]] = _TRAINING_FACTOR
"""Per backend, forward+backward time over forward time of each step kind (``objective="training"``)."""


def format_steps(fmt: Any, input_shape: Sequence[int]) -> list[tuple[str, int]]:
  """The ``(kind, MACs)`` steps the factorized path of ``fmt`` runs on ``input_shape`` (stride 1, ``SAME``).

  Args:
    fmt: an :class:`efficonv.Format`.
    input_shape: NHWC input shape.

  Returns:
    One ``(kind, MACs)`` per step, in order (kinds ``conv``, ``dot``, ``depthwise``, ``depthwise_multiplier``).
  """
  g = _geometry(tuple(input_shape), fmt.kernel_size, fmt.in_features, 1, "SAME", 1)
  return list(fmt._steps(g))
