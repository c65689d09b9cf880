"""What :class:`efficonv.nnx.Conv` and :class:`efficonv.linen.Conv` share: when flax's own conv runs, and which
formulation runs otherwise.

Both layers are flax's ``Conv`` with an ``implementation``; the flax layer's attributes are passed here as
keywords, so the two APIs decide alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from efficonv.kernels import _options as opt
from efficonv.kernels.dense import dense_implementation
from efficonv.planning import autotune_dense


def broadcast(value: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
  """flax's ``Conv`` broadcasting of ``strides``/dilations: ``None`` means 1, an int applies to every spatial axis."""
  value = 1 if value is None else value
  return (value,) * ndim if isinstance(value, int) else tuple(value)


def fallback_reason(
  input_shape: Sequence[int],
  *,
  kernel_size: Sequence[int],
  strides: Any,
  padding: Any,
  input_dilation: Any,
  kernel_dilation: Any,
  mask: Any,
  custom_conv: bool,
  preferred_element_type: Any = None,
  out_sharding: Any = None,
) -> str | None:
  """Why flax's own ``Conv.__call__`` must run instead of :func:`efficonv.kernels.conv`, or ``None``.

  Args:
    input_shape: ``(*batch, *spatial, C_in)``, as the layer is called.
    kernel_size: the layer's kernel size (a tuple: its length is the number of spatial axes).
    strides, padding, input_dilation, kernel_dilation, mask: the layer's attributes.
    custom_conv: whether the layer was given its own ``conv_general_dilated``.
    preferred_element_type, out_sharding: NNX's extra options (``None`` in Linen).

  Returns:
    A short reason, or ``None`` when efficonv's conv runs.
  """
  if len(kernel_size) != 2:
    return f"{len(kernel_size)}-D kernel"
  if len(input_shape) < 3:
    return f"input of rank {len(input_shape)}"
  if mask is not None:
    return "mask"
  if any(d != 1 for d in broadcast(input_dilation, 2)):
    return f"input_dilation={input_dilation}"
  if custom_conv:
    return "custom conv_general_dilated"
  if preferred_element_type is not None:
    return "preferred_element_type"
  if out_sharding is not None:
    return "out_sharding"
  pairs = []
  for name, value in (("strides", strides), ("kernel_dilation", kernel_dilation)):
    try:
      pairs.append(opt.pair(broadcast(value, 2), name))
    except ValueError:  # e.g. strides=(2,) on a 2-D kernel: flax's conv raises its own error for it
      return f"{name}={value!r}"
  try:
    opt.resolve_padding(padding, (input_shape[-3], input_shape[-2]), tuple(kernel_size), pairs[0], pairs[1])
  except ValueError:
    return f"padding {padding!r}"
  return None


def implementation_for(
  input_shape: Sequence[int],
  kernel_shape: Sequence[int],
  *,
  implementation: str,
  strides: Any,
  padding: Any,
  kernel_dilation: Any,
  feature_group_count: int,
  dtype: Any,
  precision: Any,
  backend: str | None,
) -> tuple[str, str]:
  """The formulation of :data:`efficonv.kernels.DENSE_IMPLEMENTATIONS` a call on ``input_shape`` runs, and why.

  Args:
    input_shape: ``(*batch, H, W, C_in)`` (the batch axes are flattened, as the layer does).
    kernel_shape: ``(kh, kw, C_in // groups, C_out)``.
    implementation: ``"auto"``, ``"autotune"`` or a formulation.
    strides, padding, kernel_dilation, feature_group_count, precision: the layer's.
    dtype: the computation dtype.
    backend: a JAX platform name; the default backend when ``None``.

  Returns:
    ``(name, reason)``.
  """
  batch = 1
  for n in input_shape[:-3]:
    batch *= n
  shape = (batch, *input_shape[-3:])
  if implementation == "autotune":
    return autotune_dense(
      shape,
      kernel_shape,
      strides=broadcast(strides, 2),
      padding=padding,
      dilation=broadcast(kernel_dilation, 2),
      feature_group_count=feature_group_count,
      dtype=dtype,
      precision=precision,
      backend=backend,
    )
  return dense_implementation(
    shape,
    kernel_shape,
    broadcast(strides, 2),
    padding,
    broadcast(kernel_dilation, 2),
    feature_group_count,
    backend,
    implementation,
    jnp.dtype(dtype).itemsize,
  )
