"""What every peer shares: the unavailable-peer error, weight copies, padding, and the record of one timing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from experiments.bench.cases import Shape
from experiments.common.timing import Stats

Timer = Callable[[Callable[[], Any]], Stats]
"""Times a call of no arguments (:func:`experiments.common.timing.time_call` with the run's options)."""


class PeerUnavailableError(Exception):
  """A peer cannot run here (module missing, wrong Keras backend); the message says why."""


def as_numpy(a: Any) -> np.ndarray:
  """A writable, C-contiguous float32 copy (``torch.from_numpy`` warns on JAX's read-only buffers)."""
  return np.array(a, dtype=np.float32, order="C", copy=True)


def same_pad(kernel_size: tuple[int, int]) -> tuple[int, int]:
  """``SAME`` padding of an odd kernel at stride 1 (what every benchmarked layer uses)."""
  kh, kw = kernel_size
  if kh % 2 == 0 or kw % 2 == 0:
    raise ValueError(f"kernel_size must be odd for symmetric SAME padding, got {kernel_size}")
  return kh // 2, kw // 2


def check_no_bias(layer: Any) -> None:
  """Raises ``ValueError`` naming ``layer`` when it has a bias (the peers have none)."""
  for name in ("bias", "first_bias", "core_bias"):
    if getattr(layer, name, None) is not None:
      raise ValueError(f"layer must be built with use_bias=False (the peers have no biases), got a {name}")


def relu() -> Any:
  """``nnx.relu``, imported on use (the peers' modules import without Flax)."""
  from flax import nnx

  return nnx.relu


def record(
  peer: str, scheme: str, implementation: str, layout: str, shape: Shape, pass_name: str, s: Stats
) -> dict[str, Any]:
  """One peer record (:class:`experiments.common.results.PeerRecord`): what was timed, and its statistics."""
  return {
    "variant": "/".join((peer, scheme) + ((implementation,) if implementation != "sequence" else ())),
    "peer": peer,
    "scheme": scheme,
    "implementation": implementation,
    "layout": layout,
    "shape_label": shape.label,
    "pass": pass_name,
    **s.as_dict(),
  }
