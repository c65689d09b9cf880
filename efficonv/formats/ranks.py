"""Rank values: what counts as an integer rank, and the checks every format's rank goes through."""

from __future__ import annotations

import operator
from typing import Any, Union

import numpy as np

RankLike = Union[int, tuple[int, ...]]
KernelShape = tuple[int, int, int, int]


def as_int(value: Any) -> int | None:
  """``value`` as a Python int when it is integer-like (Python, NumPy or a concrete 0-d JAX int), else ``None``.

  ``operator.index`` rather than ``int`` so that ``1.5`` and ``True`` are not taken for ranks.
  """
  if isinstance(value, (bool, np.bool_)):
    return None
  try:
    return operator.index(value)
  except TypeError:
    pass
  dtype = getattr(value, "dtype", None)
  if getattr(value, "shape", None) == () and dtype is not None and np.issubdtype(dtype, np.integer):
    try:
      return int(value)
    except (TypeError, ValueError):  # a tracer: not a concrete rank
      return None
  return None


def single_rank(rank: RankLike) -> int:
  """A valid rank of a single-rank scheme (CP, spatial, separable) as an int.

  Raises:
    TypeError: when ``rank`` is a tuple (a multi-rank scheme's rank reached single-rank code).
  """
  if isinstance(rank, tuple):
    raise TypeError(f"expected a single int rank, got {rank!r}")
  return int(rank)


def rank_tuple(rank: RankLike) -> tuple[int, ...]:
  """A valid rank of a multi-rank scheme (Tucker-2, TT) as its tuple.

  Raises:
    TypeError: when ``rank`` is an int (a single-rank scheme's rank reached multi-rank code).
  """
  if not isinstance(rank, tuple):
    raise TypeError(f"expected a tuple of ranks, got {rank!r}")
  return rank


def as_rank_tuple(rank: Any, length: int, name: str = "rank") -> tuple[int, ...]:
  """``rank`` (one int for every entry, or ``length`` ints) as a tuple of ints.

  Raises:
    ValueError: naming ``name`` when it is neither.
  """
  single = as_int(rank)
  if single is not None:
    return (single,) * length
  if isinstance(rank, (str, bytes)):
    raise ValueError(f"{name} must be an int or {length} ints, got {rank!r}")
  try:
    values = tuple(as_int(r) for r in rank)
  except TypeError as e:
    raise ValueError(f"{name} must be an int or {length} ints, got {rank!r}") from e
  if len(values) != length or any(v is None for v in values):
    raise ValueError(f"{name} must be an int or {length} ints, got {rank!r}")
  return tuple(int(v) for v in values if v is not None)


def check_in_range(name: str, value: Any, maximum: int, why: str) -> int:
  """Validates one rank entry: an integer in ``[1, maximum]``.

  Raises:
    ValueError: naming ``name``, the allowed range and ``why`` the bound exists.
  """
  v = as_int(value)
  if v is None:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  if not 1 <= v <= maximum:
    raise ValueError(f"{name} must be in [1, {maximum}] ({why}), got {v}")
  return v


def check_kernel_shape(shape: Any, name: str = "shape") -> KernelShape:
  """``(kh, kw, C_in, C_out)`` as four positive ints.

  Raises:
    ValueError: naming ``name``.
  """
  try:
    values = tuple(as_int(v) for v in shape)
  except TypeError as e:
    raise ValueError(f"{name} must be a kernel shape (kh, kw, C_in, C_out), got {shape!r}") from e
  ints = [v for v in values if v is not None]
  if len(values) != 4 or len(ints) != 4 or any(v < 1 for v in ints):
    raise ValueError(f"{name} must be 4 positive ints (kh, kw, C_in, C_out), got {shape!r}")
  return ints[0], ints[1], ints[2], ints[3]
