"""What the NNX and Linen layers share: option types and checks, default initializers, input handling.

Both :mod:`efficonv.nnx` and :mod:`efficonv.linen` validate their arguments
and prepare their inputs here, so a layer raises the same ``ValueError`` and
promotes dtypes the same way in either API.

Example:
  >>> from efficonv.layer_options import check_options, tucker_rank
  >>> check_options(8, 16, 3, 2, "SAME", 1, "auto", "auto")
  ((3, 3), (2, 2), (1, 1))
  >>> tucker_rank(4)
  (4, 4)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

# The one import of the planner's option types: they move with the planning code, and only this line follows.
from efficonv.formats import TT
from efficonv.formats.init import Initializer as Initializer
from efficonv.formats.ranks import as_int
from efficonv.kernels import _options as opt
from efficonv.kernels._options import PaddingLike as PaddingLike
from efficonv.kernels.depthwise import _DEPTHWISE_IMPLS as DEPTHWISE_IMPLEMENTATIONS
from efficonv.kernels.depthwise import DepthwiseImpl as DepthwiseImplementation
from efficonv.planning import IMPLEMENTATIONS as IMPLEMENTATIONS
from efficonv.planning import OBJECTIVES as OBJECTIVES
from efficonv.planning import Implementation as Implementation
from efficonv.planning import Objective as Objective
from efficonv.typing import Array, Dtype

ActivationFn = Callable[[Array], Array]

# As flax.nnx.Conv: zero biases, LeCun-normal kernels (for the layers whose convs are drawn one by one).
default_bias_init: Initializer = jax.nn.initializers.zeros
default_kernel_init: Initializer = jax.nn.initializers.lecun_normal()

__all__ = [
  "DEPTHWISE_IMPLEMENTATIONS",
  "IMPLEMENTATIONS",
  "OBJECTIVES",
  "ActivationFn",
  "DepthwiseImplementation",
  "Implementation",
  "Initializer",
  "Objective",
  "PaddingLike",
  "batch_inputs",
  "bottleneck_widths",
  "check_feature_group_count",
  "check_features",
  "check_geometry",
  "check_input_dilation",
  "check_one_layer",
  "check_options",
  "check_unsupported",
  "default_bias_init",
  "default_kernel_init",
  "dilate_input",
  "promote_tree",
  "restore_batch",
  "stack_shape",
  "tt_modes",
  "tucker_rank",
]


def check_features(**features: int | None) -> None:
  """Checks channel counts given by keyword (``None`` is skipped: an optional count left to its default).

  Raises:
    ValueError: naming the first keyword whose value is not a positive int.

  Example:
    >>> check_features(in_features=8, out_features=0)
    Traceback (most recent call last):
    ...
    ValueError: out_features must be a positive int, got 0
  """
  for name, value in features.items():
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_geometry(
  kernel_size: int | Sequence[int],
  strides: int | Sequence[int],
  padding: PaddingLike,
  kernel_dilation: int | Sequence[int],
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
  """Checks the conv geometry every layer takes.

  Returns:
    ``(kernel_size, strides, kernel_dilation)`` as pairs.

  Raises:
    ValueError: naming the offending argument.
  """
  ks = opt.pair(kernel_size, "kernel_size")
  s = opt.pair(strides, "strides")
  d = opt.pair(kernel_dilation, "kernel_dilation")
  # Checks the padding's form now; whether it fits the input is checked per call.
  opt.resolve_padding(padding, (10**6, 10**6), ks, s, d)
  return ks, s, d


def check_options(
  in_features: int,
  out_features: int,
  kernel_size: int | Sequence[int],
  strides: int | Sequence[int],
  padding: PaddingLike,
  kernel_dilation: int | Sequence[int],
  implementation: str,
  depthwise_implementation: str,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
  """Validates the constructor arguments of a layer built around a format.

  Returns:
    ``(kernel_size, strides, kernel_dilation)`` as pairs.

  Raises:
    ValueError: naming the offending argument.
  """
  check_features(in_features=in_features, out_features=out_features)
  geometry = check_geometry(kernel_size, strides, padding, kernel_dilation)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  if depthwise_implementation not in DEPTHWISE_IMPLEMENTATIONS:
    raise ValueError(
      f"depthwise_implementation must be one of {DEPTHWISE_IMPLEMENTATIONS}, got {depthwise_implementation!r}"
    )
  return geometry


def tucker_rank(rank: int | Sequence[int]) -> tuple[int, int]:
  """A Tucker-2 ``rank`` as ``(R1, R2)``; an int means both.

  Raises:
    ValueError: naming ``rank`` when it is neither an int nor a pair.
  """
  if isinstance(rank, bool):
    raise ValueError(f"rank must be an int or a pair (R1, R2), got {rank!r}")
  if isinstance(rank, int):
    return rank, rank
  try:
    r1, r2 = (int(r) for r in rank)
  except (TypeError, ValueError) as e:
    raise ValueError(f"rank must be an int or a pair (R1, R2), got {rank!r}") from e
  return r1, r2


def bottleneck_widths(out_features: int, width: int | Sequence[int] | None) -> tuple[int, int]:
  """A bottleneck's ``width`` as ``(w1, w2)``, the channels after the squeeze and after the ``k×k`` conv.

  ``None`` means ``max(1, out_features // 4)`` for both (ResNet's ratio), an int both.

  Raises:
    ValueError: naming ``width`` when it is not one or two positive ints.
  """
  if width is None:
    width = max(1, out_features // 4)
  single = as_int(width)
  raw = (single, single) if single is not None else tuple(width) if isinstance(width, Sequence) else ()
  # Integer-like widths (NumPy or 0-d JAX ints) count as ints, as ranks do (efficonv.formats.ranks.as_int).
  widths = [as_int(w) for w in raw]
  if len(widths) != 2 or any(w is None or w < 1 for w in widths):
    raise ValueError(f"width must be a positive int or a pair of them (w1, w2), got {width!r}")
  return int(widths[0] or 0), int(widths[1] or 0)


def tt_modes(
  in_features: int, out_features: int, in_modes: Sequence[int] | None, out_modes: Sequence[int] | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Fills in default TT modes and checks them (:meth:`efficonv.TT.scheme_options`, the one place of the defaults).

  Raises:
    ValueError: naming ``in_modes``/``out_modes`` when their product is not the channel count.

  Example:
    >>> tt_modes(64, 32, None, None)
    ((8, 8), (8, 4))
  """
  modes = TT.scheme_options((1, 1, in_features, out_features), in_modes=in_modes, out_modes=out_modes)
  return modes["in_modes"], modes["out_modes"]


def batch_inputs(inputs: Array, in_features: int | None) -> tuple[Array, tuple[int, ...]]:
  """Checks layer ``inputs`` and brings them to one batch axis, as :class:`flax.nnx.Conv` does.

  ``nnx.Conv`` takes ``(*batch, H, W, C)`` with any number of batch axes: none (one example) gets one added,
  several are flattened into one; :func:`restore_batch` puts them back on the output.

  Args:
    inputs: ``(*batch, H, W, in_features)``.
    in_features: the channels the layer expects (``None``: any, for layers that infer them).

  Returns:
    ``(inputs as (N, H, W, in_features), the batch shape to restore)``.

  Raises:
    ValueError: naming ``inputs`` when it has fewer than 3 axes or the wrong channel count.

  Example:
    >>> import jax.numpy as jnp
    >>> x, batch = batch_inputs(jnp.ones((2, 3, 5, 5, 4)), 4)
    >>> x.shape, batch, restore_batch(x, batch).shape
    ((6, 5, 5, 4), (2, 3), (2, 3, 5, 5, 4))
  """
  ndim = getattr(inputs, "ndim", None)
  if ndim is None or ndim < 3:
    raise ValueError(
      f"inputs must be (*batch, H, W, C): NHWC, unbatched HWC or with more batch axes (rank >= 3), "
      f"got shape {getattr(inputs, 'shape', type(inputs))}"
    )
  if in_features is not None and inputs.shape[-1] != in_features:
    # Checked before reshaping so the message shows the shape the caller passed.
    raise ValueError(f"inputs must have {in_features} channels in its last axis (NHWC), got shape {inputs.shape}")
  batch_shape = tuple(inputs.shape[:-3])
  if len(batch_shape) != 1:
    inputs = jnp.reshape(inputs, (-1, *inputs.shape[-3:]))
  opt.check_input(inputs, "inputs", in_features)
  return inputs, batch_shape


def restore_batch(y: Array, batch_shape: tuple[int, ...]) -> Array:
  """Gives a layer's ``(N, H', W', C)`` output the batch axes :func:`batch_inputs` took off its input."""
  return y if len(batch_shape) == 1 else jnp.reshape(y, (*batch_shape, *y.shape[1:]))


def check_input_dilation(input_dilation: int | Sequence[int] | None, padding: PaddingLike) -> tuple[int, int]:
  """``input_dilation`` as a pair (``None`` means 1, as in :class:`flax.nnx.Conv`), checked against ``padding``.

  As :func:`jax.lax.conv_general_dilated` (which ``nnx.Conv`` calls), an input dilation above 1 takes an
  explicit padding only: the amounts apply to the dilated input.

  Raises:
    ValueError: naming ``input_dilation`` (not one or two positive ints) or ``padding`` (a string with
      ``input_dilation`` above 1).
  """
  pair = opt.pair(1 if input_dilation is None else input_dilation, "input_dilation")
  if pair != (1, 1) and isinstance(padding, str):
    raise ValueError(
      f"padding must be explicit (an int or ((lo, hi), (lo, hi))) with input_dilation={input_dilation!r}, "
      f"as in jax.lax.conv_general_dilated; got {padding!r}"
    )
  return pair


def dilate_input(x: Array, input_dilation: tuple[int, int]) -> Array:
  """``x`` (NHWC) with ``d - 1`` zeros between neighbouring pixels: the input :func:`jax.lax.conv_general_dilated`
  convolves for ``lhs_dilation=input_dilation`` (the layer's padding then applies to it)."""
  if input_dilation == (1, 1):
    return x
  (dh, dw), zero = input_dilation, jnp.zeros((), x.dtype)
  return jax.lax.pad(x, zero, ((0, 0, 0), (0, 0, dh - 1), (0, 0, dw - 1), (0, 0, 0)))


def check_feature_group_count(feature_group_count: Any, **features: int) -> int:
  """``feature_group_count`` as an int dividing each channel count given (as :func:`jax.lax.conv_general_dilated`).

  Args:
    feature_group_count: the value to check.
    **features: the channel counts it must divide, by name (``in_features=…, out_features=…``).

  Raises:
    ValueError: naming ``feature_group_count``.

  Example:
    >>> check_feature_group_count(2, in_features=8, out_features=6)
    2
    >>> check_feature_group_count(4, in_features=8, out_features=6)
    Traceback (most recent call last):
    ...
    ValueError: feature_group_count must divide in_features=8 and out_features=6, got 4
  """
  groups = as_int(feature_group_count)
  if groups is None or groups < 1:
    raise ValueError(f"feature_group_count must be a positive int, got {feature_group_count!r}")
  if any(n % groups for n in features.values()):
    counts = " and ".join(f"{name}={n}" for name, n in features.items())
    raise ValueError(f"feature_group_count must divide {counts}, got {groups}")
  return groups


def check_promote_dtype(promote_dtype: Any) -> Any:
  """``promote_dtype`` as ``nnx.Conv`` takes it: a function ``(arrays, *, dtype) -> arrays``.

  Raises:
    ValueError: naming ``promote_dtype`` when it is not callable.
  """
  if not callable(promote_dtype):
    raise ValueError(f"promote_dtype must be a function (arrays, *, dtype) -> arrays, got {promote_dtype!r}")
  return promote_dtype


def check_unsupported(layer: str, why: str, **options: Any) -> None:
  """Raises for each ``nnx.Conv`` option a layer cannot honour that is set to other than its default.

  Args:
    layer: the layer's name, for the message.
    why: why the layer cannot honour them.
    **options: ``name=(value, default)``.

  Raises:
    ValueError: naming the first option whose value is not its default.
  """
  for name, (value, default) in options.items():
    if value is not None if default is None else value != default:
      shown = f"an array of shape {value.shape}" if hasattr(value, "shape") and value.shape else repr(value)
      raise ValueError(f"{name} must be {default!r} for {layer} ({why}), got {shown}")


def promote_tree(tree: Any, dtype: Dtype | None) -> Any:
  """Casts every inexact array leaf of ``tree`` to ``dtype``.

  With ``dtype=None`` the common result type of all leaves is used (as
  :func:`flax.nnx.nn.dtypes.promote_dtype`, which takes only flat tuples).

  Example:
    >>> import jax.numpy as jnp
    >>> x, (w, b) = promote_tree((jnp.ones(2, jnp.bfloat16), (jnp.ones(2), None)), None)
    >>> x.dtype, w.dtype, b
    (dtype('float32'), dtype('float32'), None)
  """
  leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree) if leaf is not None]
  target = dtype if dtype is not None else jnp.result_type(*leaves)
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, target), tree)


def stack_shape(shape: Sequence[int], ndim: int) -> tuple[int, ...]:
  """The leading axes of a parameter of ``shape`` beyond the ``ndim`` of one layer's (a stack made by ``nnx.vmap``).

  Example:
    >>> stack_shape((3, 3, 3, 8, 8), 4), stack_shape((3, 3, 8, 8), 4)
    ((3,), ())
  """
  return tuple(int(d) for d in shape[: len(shape) - ndim])


def check_one_layer(layer: object, stack: tuple[int, ...], what: str) -> None:
  """Refuses ``what`` on a stack of layers (``stack`` non-empty), which only ``nnx.scan``/``nnx.vmap`` apply.

  Raises:
    ValueError: naming the layer, its stack shape and the transforms that apply it.
  """
  if stack:
    raise ValueError(
      f"this {type(layer).__name__} is a stack of {math.prod(stack)} layers (leading axes {stack} on every "
      f"parameter, as nnx.vmap makes them): {what} needs one layer; apply the stack with nnx.scan (or nnx.vmap) "
      "over its layers"
    )
