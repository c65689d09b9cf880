"""Argument checks shared by the decompositions.

Shapes and static arguments are always checked. Values (NaN/Inf) can only be
checked when the kernel is concrete: under ``jit``/``vmap`` the kernel is a
tracer, the check is skipped, and a non-finite kernel shows up as a NaN
``FitInfo.relative_error`` instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from efficonv.typing import Array, ArrayLike


def is_concrete(x: object) -> bool:
  """Whether ``x`` holds values now (not a tracer inside ``jit``/``vmap``/``grad``)."""
  return not isinstance(x, jax.core.Tracer)


def check_kernel(kernel: ArrayLike) -> Array:
  """Validates a dense HWIO kernel and returns it as a float array (at least float32).

  Raises:
    ValueError: naming ``kernel`` when it is not 4-D, not real, has an empty axis, or (when concrete)
      holds NaN or Inf.
  """
  if not hasattr(kernel, "shape") or not hasattr(kernel, "dtype"):
    kernel = np.asarray(kernel)
  if kernel.ndim != 4:
    raise ValueError(f"kernel must be a 4-D HWIO array (kh, kw, C_in, C_out), got shape {tuple(kernel.shape)}")
  if any(int(d) < 1 for d in kernel.shape):
    raise ValueError(f"kernel must have no empty axis, got shape {tuple(kernel.shape)}")
  if not (jnp.issubdtype(kernel.dtype, jnp.floating) or jnp.issubdtype(kernel.dtype, jnp.integer)):
    raise ValueError(f"kernel must be real (float or int), got dtype {kernel.dtype}")
  kernel = jnp.asarray(kernel)  # canonical dtype: float64 becomes float32 unless x64 is enabled
  if jnp.issubdtype(kernel.dtype, jnp.floating):
    kernel = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
  else:
    kernel = kernel.astype(jnp.float32)
  if is_concrete(kernel) and not bool(jnp.isfinite(kernel).all()):
    raise ValueError("kernel must be finite, got NaN or Inf entries")
  return kernel


def check_int(value: object, name: str, *, minimum: int, maximum: int | None = None, why: str = "") -> int:
  """Returns ``value`` as a Python int in ``[minimum, maximum]``.

  Raises:
    ValueError: naming ``name`` with the allowed range (and ``why`` the maximum is what it is).
  """
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be a Python int, got {value!r}")
  v = int(value)
  if v < minimum or (maximum is not None and v > maximum):
    upper = f" and <= {maximum}{f' ({why})' if why else ''}" if maximum is not None else ""
    raise ValueError(f"{name} must be >= {minimum}{upper}, got {v}")
  return v


def check_float(value: object, name: str, *, minimum: float = 0.0, allow_equal: bool = True) -> float:
  """Returns ``value`` as a Python float ``>= minimum`` (``> minimum`` unless ``allow_equal``).

  Raises:
    ValueError: naming ``name``.
  """
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
    raise ValueError(f"{name} must be a Python float, got {value!r}")
  v = float(value)
  ok = v >= minimum if allow_equal else v > minimum
  if not ok or not math.isfinite(v):
    raise ValueError(f"{name} must be finite and {'>=' if allow_equal else '>'} {minimum}, got {v}")
  return v


def check_int_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
  """Returns an int or a pair of ints as a pair (without range checks).

  Raises:
    ValueError: naming ``name`` when it is neither.
  """
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return int(value), int(value)
  if isinstance(value, bool) or not isinstance(value, Iterable):
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
  try:
    items = tuple(value)
  except TypeError as e:
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from e
  if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in items):
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
  return int(items[0]), int(items[1])
