"""Pytree registration and factor checks shared by the format dataclasses."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Protocol, TypeVar

import jax


class _Fielded(Protocol):
  """A format dataclass: its array fields, in flattening order."""

  _fields: ClassVar[tuple[str, ...]]


T = TypeVar("T", bound=type[_Fielded])


def check_factor(name: str, value: Any, ndim: int) -> tuple[int, ...] | None:
  """Returns the trailing ``ndim`` dims of a factor, or ``None`` for non-arrays.

  Non-array leaves appear when JAX rebuilds pytrees internally (e.g. with ``object()`` sentinels); leading
  extra axes are allowed for stacks of formats produced by ``vmap``.

  Raises:
    ValueError: naming ``name`` when the factor has fewer than ``ndim`` axes.
  """
  shape = getattr(value, "shape", None)
  if shape is None:
    return None
  if len(shape) < ndim:
    raise ValueError(f"{name} must have {ndim} axes, got shape {tuple(shape)}")
  return tuple(int(v) for v in shape[len(shape) - ndim :])


def register(cls: T) -> T:
  """Makes a format dataclass a JAX pytree whose leaves are its arrays.

  Unflattening does not call the constructor, so the shape checks of ``__post_init__`` run only when a
  format is built by hand. JAX and its libraries rebuild pytrees whose leaves are not factors of the right
  rank: ``jax.tree.map(jnp.sum, fmt)`` (used by ``optax.clip_by_global_norm`` and
  ``optax.tree_utils.tree_norm``), dtypes, or sentinels; those must not raise. Keys are the field names
  (``GetAttrKey``), as with :func:`jax.tree_util.register_dataclass`.
  """
  fields: tuple[str, ...] = cls._fields

  def flatten_with_keys(fmt: Any) -> tuple[list[tuple[Any, Any]], None]:
    return [(jax.tree_util.GetAttrKey(name), getattr(fmt, name)) for name in fields], None

  def flatten(fmt: Any) -> tuple[list[Any], None]:
    return [getattr(fmt, name) for name in fields], None

  def unflatten(_: None, children: Iterable[Any]) -> Any:
    fmt: Any = object.__new__(cls)
    for name, value in zip(fields, children):
      object.__setattr__(fmt, name, value)  # frozen dataclass: bypass __setattr__
    return fmt

  jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
  return cls
