"""Variable metadata of the factor parameters: ``kernel_init``/``kernel_metadata`` mapped onto factors, per-factor overrides.

:class:`flax.nnx.Conv` puts ``kernel_metadata`` (and the metadata of an initializer wrapped by
:func:`flax.nnx.with_partitioning`) on its one kernel. A factorized layer has several factors of other
ranks, so the dense kernel's metadata is copied to every factor, with its sharding names (one per dense
axis ``(kh, kw, C_in, C_out)``) moved to the factor axes that run along the same dense axis
(:meth:`efficonv.Format.factor_axes`) and ``None`` on rank, multiplier and mode axes. ``factor_metadata``
then overrides per factor, e.g. to shard a rank axis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from flax import nnx

from efficonv.formats import Format
from efficonv.layer_options import Initializer

# The keys flax reads a Variable's sharding from ("sharding_names" and "sharding" are its deprecated aliases).
_SHARDING_KEYS = ("out_sharding", "sharding_names", "sharding")


def unboxed(kernel_init: Initializer, metadata: dict[str, Any]) -> Callable[..., Any]:
  """``kernel_init`` returning plain arrays; the metadata of a :func:`flax.nnx.with_metadata` box goes to ``metadata``.

  As in :class:`flax.nnx.Variable`, the initializer's metadata takes precedence over ``kernel_metadata``.
  """

  def init(key: jax.Array, shape: Sequence[int], dtype: Any) -> Any:
    value = kernel_init(key, shape, dtype)
    if isinstance(value, nnx.VariableMetadata):
      metadata.update(value.metadata)
      return value.raw_value
    return value

  return init


def _sharding(metadata: dict[str, Any], what: str, ndim: int, axes: str) -> tuple[Any, ...] | None:
  """Pops the sharding of ``metadata`` (any of flax's keys) as a tuple of ``ndim`` names; ``None`` if absent."""
  found = [key for key in _SHARDING_KEYS if key in metadata]
  if not found:
    return None
  names = None
  for key in found:
    value = metadata.pop(key)
    names = value if names is None else names
  if isinstance(names, jax.sharding.NamedSharding):
    metadata.setdefault("mesh", names.mesh)
    names = names.spec
  if names is None:
    return None
  if isinstance(names, str) or not isinstance(names, Sequence) or len(names) != ndim:
    raise ValueError(
      f"{what} sharding must name the {ndim} axes {axes}, one mesh axis name (or None) each, got {names!r}"
    )
  return tuple(names)


def factor_metadata(
  fmt: Format, kernel_metadata: Mapping[str, Any], per_factor: Mapping[str, Any]
) -> list[dict[str, Any]]:
  """The metadata of each factor parameter (flat, in :meth:`efficonv.Format.arrays` order).

  Args:
    fmt: the layer's format.
    kernel_metadata: the dense kernel's metadata (``kernel_metadata`` updated by ``kernel_init``'s box).
    per_factor: ``factor_metadata``: factor name → metadata mapping; for a list of factors (TT's ``cores``)
      one mapping for all or a sequence of one per array.

  Returns:
    One metadata dict per factor array.

  Raises:
    ValueError: naming ``kernel_metadata``/``factor_metadata`` when a sharding has the wrong number of
      axes, a key is not a factor of ``fmt`` or a value is neither a mapping nor a sequence of them.
  """
  dense = dict(kernel_metadata)
  names = _sharding(dense, "kernel_init/kernel_metadata", 4, "(kh, kw, C_in, C_out) of the dense kernel")
  arrays, axes = fmt.arrays(), fmt.factor_axes()
  out = []
  for labels in axes:
    meta = dict(dense)
    if names is not None:
      meta["out_sharding"] = tuple(None if a is None else names[Format.KERNEL_AXES.index(a)] for a in labels)
    out.append(meta)
  start, slots = 0, {}
  for field in fmt._fields:
    value = getattr(fmt, field)
    count = len(value) if isinstance(value, tuple) else 1
    slots[field] = (start, count, isinstance(value, tuple))
    start += count
  for field, value in per_factor.items():
    if field not in slots:
      raise ValueError(f"factor_metadata keys must be factors of {type(fmt).__name__}, {fmt._fields}, got {field!r}")
    first, count, is_list = slots[field]
    if isinstance(value, Mapping):
      overrides = [value] * count
    elif is_list and isinstance(value, Sequence) and len(value) == count and all(isinstance(v, Mapping) for v in value):
      overrides = list(value)
    else:
      want = f"a mapping (for all {count} arrays) or a sequence of {count} mappings" if is_list else "a mapping"
      raise ValueError(f"factor_metadata[{field!r}] must be {want}, got {value!r}")
    for k, override in enumerate(overrides):
      i = first + k
      name = f"{field}[{k}]" if is_list else field
      meta = dict(override)
      shape = tuple(arrays[i].shape)
      sharding = _sharding(meta, f"factor_metadata[{field!r}]", len(shape), f"of {name}, shape {shape}")
      out[i] = {**out[i], **meta}
      if sharding is not None:
        out[i]["out_sharding"] = sharding
  return out
