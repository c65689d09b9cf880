"""The call of a layer built around a format, for NNX and Linen alike.

:meth:`efficonv.Format.conv` applies the factors; the layers add what
:class:`flax.nnx.Conv` takes beyond it, written once here: input dilation,
channel groups, a kernel mask, a custom ``promote_dtype`` and
``preferred_element_type``. Groups, the mask and ``preferred_element_type``
act on one dense kernel and one conv, which only the reconstructed path has:
a layer given one of them runs reconstructed (``"auto"``/``"autotune"`` pick
it, ``"factorized"`` is refused at construction).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from efficonv.formats import Format
from efficonv.kernels import _options as opt
from efficonv.kernels import targets
from efficonv.kernels.conv import conv as dense_conv
from efficonv.kernels.sharding import data_parallel
from efficonv.layer_options import dilate_input
from efficonv.planning import Plan
from efficonv.typing import Array, Dtype, PrecisionLike

# promote(arrays, dtype) -> arrays: the layer's promote_dtype, called with one flat tuple (NNX's convention).
Promote = Callable[[tuple[Any, ...], Any], tuple[Any, ...]]

# Why the factorized sequence cannot honour each option (it has no single kernel and no single conv).
_RECONSTRUCTED_ONLY = {
  "feature_group_count": "the factorized sequence has no grouped form",
  "mask": "the factorized sequence never forms the kernel the mask multiplies",
  "preferred_element_type": "the factorized sequence is several ops, not the one conv it is passed to",
}


def reconstruction_reason(feature_group_count: int, mask: Any, preferred_element_type: Any) -> str | None:
  """The option that makes a layer run reconstructed (``"name=value: why"``), or ``None``."""
  if feature_group_count != 1:
    return f"feature_group_count={feature_group_count}: {_RECONSTRUCTED_ONLY['feature_group_count']}"
  if mask is not None:
    return f"mask: {_RECONSTRUCTED_ONLY['mask']}"
  if preferred_element_type is not None:
    return f"preferred_element_type={preferred_element_type}: {_RECONSTRUCTED_ONLY['preferred_element_type']}"
  return None


def check_reconstructed_only(
  implementation: str, feature_group_count: int, mask: Any, preferred_element_type: Any
) -> None:
  """Refuses ``implementation="factorized"`` together with an option only the reconstructed path has.

  Raises:
    ValueError: naming the option.
  """
  if implementation != "factorized":
    return
  for name, value in (
    ("feature_group_count", None if feature_group_count == 1 else feature_group_count),
    ("mask", mask),
    ("preferred_element_type", preferred_element_type),
  ):
    if value is not None:
      shown = "given" if name == "mask" else repr(value)
      raise ValueError(
        f"{name} ({shown}) needs implementation 'reconstructed' or 'auto' ({_RECONSTRUCTED_ONLY[name]}), "
        "got implementation='factorized'"
      )


def check_mask(mask: Any, kernel_shape: tuple[int, ...]) -> None:
  """Checks that ``mask`` (when given) has the layer's dense kernel shape ``(kh, kw, C_in // groups, C_out)``.

  Raises:
    ValueError: naming ``mask``.
  """
  if mask is not None and tuple(getattr(mask, "shape", ())) != tuple(kernel_shape):
    raise ValueError(
      f"mask must have the kernel's shape {tuple(kernel_shape)} (kh, kw, C_in // feature_group_count, C_out), "
      f"got {getattr(mask, 'shape', type(mask))}"
    )


def conv_input_shape(input_shape: Sequence[int], input_dilation: tuple[int, int], groups: int) -> tuple[int, ...]:
  """The NHWC shape one group of the format's conv sees: spatial axes dilated, channels divided by ``groups``."""
  *batch, h, w, c = input_shape
  n = 1
  for b in batch:
    n *= b
  (dh, dw) = input_dilation
  return (n, (h - 1) * dh + 1, (w - 1) * dw + 1, c // groups)


def layer_plan(
  fmt: Format,
  input_shape: Sequence[int],
  *,
  strides: tuple[int, int],
  padding: opt.PaddingLike,
  input_dilation: tuple[int, int],
  kernel_dilation: tuple[int, int],
  feature_group_count: int,
  mask: Any,
  preferred_element_type: Any,
  implementation: str,
  depthwise_implementation: str,
  objective: str,
  dtype: Any,
  precision: PrecisionLike,
  backend: str | None = None,
) -> Plan:
  """What the layer runs on ``input_shape`` (``(*batch, H, W, C_in)``), as :meth:`efficonv.Format.plan` says.

  ``backend``: the platform planned for (by default :func:`efficonv.planning.plan_for`'s, or the default one).
  """
  why = reconstruction_reason(feature_group_count, mask, preferred_element_type)
  plan = fmt.plan(
    conv_input_shape(input_shape, input_dilation, feature_group_count),
    strides=strides,
    padding=padding,
    dilation=kernel_dilation,
    implementation="reconstructed" if why else implementation,  # type: ignore[arg-type]
    depthwise_implementation=depthwise_implementation,
    objective=objective,  # type: ignore[arg-type]
    dtype=dtype,
    precision=precision,
    backend=backend,
  )
  return dataclasses.replace(plan, reason=f"reconstructed: {why}") if why else plan


def layer_conv(
  fmt: Format,
  inputs: Array,
  bias: Array | None,
  *,
  strides: tuple[int, int],
  padding: opt.PaddingLike,
  input_dilation: tuple[int, int],
  kernel_dilation: tuple[int, int],
  feature_group_count: int,
  mask: Array | None,
  dtype: Dtype | None,
  param_dtype: Dtype,
  precision: PrecisionLike,
  promote: Promote,
  preferred_element_type: Dtype | None,
  implementation: str,
  depthwise_implementation: str,
  objective: str,
) -> Array:
  """Applies a factorized layer to NHWC ``inputs`` (one batch axis) and adds ``bias``.

  The reconstructed path promotes ``(inputs, kernel, bias)`` with the dense (masked) kernel, exactly as
  :class:`flax.nnx.Conv`; the factorized path promotes ``(inputs, *factors, bias)`` (the format's arrays, flat).

  Returns:
    ``(N, H', W', C_out)``.
  """
  # On an Explicit mesh: data parallel over the input's batch sharding, factors, bias and mask gathered.
  inputs, (fmt, bias, mask) = data_parallel(inputs, (fmt, bias, mask))
  x = dilate_input(inputs, input_dilation)
  compute = dtype if dtype is not None else jnp.result_type(x.dtype, param_dtype)

  def decide(backend: str) -> tuple[str, str | None]:
    plan = layer_plan(
      fmt,
      x.shape,
      strides=strides,
      padding=padding,
      input_dilation=(1, 1),
      kernel_dilation=kernel_dilation,
      feature_group_count=feature_group_count,
      mask=mask,
      preferred_element_type=preferred_element_type,
      implementation=implementation,
      depthwise_implementation=depthwise_implementation,
      objective=objective,
      dtype=compute,
      precision=precision,
      backend=backend,
    )
    return plan.implementation, plan.depthwise

  def run(choice: tuple[str, str | None], x: Array) -> Array:
    impl, depthwise = choice
    if impl == "reconstructed":
      kernel = fmt.to_dense(precision=precision)
      if mask is not None:
        kernel = kernel * mask
      x, kernel, b = promote((x, kernel, bias), dtype)
      y = _dense(x, kernel, strides, padding, kernel_dilation, feature_group_count, precision, preferred_element_type)
    else:
      promoted = promote((x, *fmt.arrays(), bias), dtype)
      x, b = promoted[0], promoted[-1]
      y = fmt.from_factors(promoted[1:-1]).conv(
        x,
        strides=strides,
        padding=padding,
        dilation=kernel_dilation,
        implementation="factorized",
        depthwise_implementation=depthwise or depthwise_implementation,
        precision=precision,
      )
    return y if b is None else y + b.reshape(1, 1, 1, -1)

  # One plan per platform planned for (efficonv.planning.plan_for), checked against the lowering platform.
  return targets.dispatch(x, decide, run, probe=implementation != "autotune")


def _dense(
  x: Array,
  kernel: Array,
  strides: tuple[int, int],
  padding: opt.PaddingLike,
  dilation: tuple[int, int],
  groups: int,
  precision: PrecisionLike,
  preferred_element_type: Dtype | None,
) -> Array:
  if preferred_element_type is None:
    return dense_conv(
      x, kernel, strides=strides, padding=padding, dilation=dilation, feature_group_count=groups, precision=precision
    )
  # efficonv's dense formulations accumulate in the operands' dtype; XLA's conv takes the requested one.
  pads, mode = opt.resolve_padding(padding, x.shape[1:3], kernel.shape[:2], strides, dilation)
  if mode != "constant":
    x, pads = opt.pad_input(x, pads, mode), ((0, 0), (0, 0))
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    strides,
    pads,
    rhs_dilation=dilation,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
