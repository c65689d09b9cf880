"""The blocks that are no single format: the bottleneck and the stack of small convs, as pure functions.

:class:`efficonv.nnx.Bottleneck` / :class:`efficonv.nnx.StackedConv` and their
Linen counterparts hold the parameters; the computation, its geometry and its
cost are written once, here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from efficonv.kernels import _options as opt
from efficonv.kernels.conv import conv_valid, pointwise
from efficonv.layer_options import ActivationFn, PaddingLike
from efficonv.typing import Array, Dtype, PrecisionLike


def _add_bias(h: Array, bias: Array | None) -> Array:
  return h if bias is None else h + bias.reshape(1, 1, 1, -1)


def bottleneck_conv(
  inputs: Array,
  kernels: tuple[Array, Array, Array],
  biases: tuple[Array | None, Array | None, Array | None],
  *,
  activation: ActivationFn | None,
  strides: tuple[int, int],
  padding: PaddingLike,
  kernel_dilation: tuple[int, int],
  precision: PrecisionLike,
) -> Array:
  """``1×1 → act → k×k (strides, padding, dilation) → act → 1×1`` on NHWC ``inputs``, each conv plus its bias."""
  first, core, last = kernels
  act = activation if activation is not None else (lambda h: h)
  in_hw, kernel_hw = (inputs.shape[1], inputs.shape[2]), (core.shape[0], core.shape[1])
  pads, mode = opt.resolve_padding(padding, in_hw, kernel_hw, strides, kernel_dilation)
  h = act(_add_bias(pointwise(inputs, first, precision=precision), biases[0]))
  # Padding after the activation: the k×k conv sees zeros, as a standalone conv would.
  h = opt.pad_input(h, pads, mode)
  h = act(_add_bias(conv_valid(h, core, strides, kernel_dilation, "xla", precision), biases[1]))
  return _add_bias(pointwise(h, last, precision=precision), biases[2])


def bottleneck_macs(
  input_shape: Sequence[int],
  kernel_shapes: tuple[Sequence[int], Sequence[int], Sequence[int]],
  *,
  strides: tuple[int, int],
  padding: PaddingLike,
  kernel_dilation: tuple[int, int],
) -> int:
  """MACs of :func:`bottleneck_conv` on ``input_shape`` (bias adds excluded)."""
  n, h, w, _ = (int(v) for v in input_shape)
  (cin, w1), (kh, kw, _, w2), (_, cout) = kernel_shapes
  pads, _ = opt.resolve_padding(padding, (h, w), (kh, kw), strides, kernel_dilation)
  ho = opt.output_size(h, kh, strides[0], kernel_dilation[0], *pads[0])
  wo = opt.output_size(w, kw, strides[1], kernel_dilation[1], *pads[1])
  return n * h * w * cin * w1 + n * ho * wo * (kh * kw * w1 * w2 + w2 * cout)


def stacked_count(kernel_size: tuple[int, int], small_kernel_size: tuple[int, int]) -> int:
  """How many ``small_kernel_size`` convs in a row cover ``kernel_size``.

  Raises:
    ValueError: naming ``kernel_size``/``small_kernel_size`` when ``k - 1`` is
      not a multiple of ``k_s - 1`` or the two axes need different counts.

  Example:
    >>> stacked_count((7, 7), (3, 3))
    3
  """
  counts = []
  for k, s in zip(kernel_size, small_kernel_size):
    if s < 2 or (k - 1) % (s - 1):
      raise ValueError(
        f"small_kernel_size {small_kernel_size} must be >= 2 and satisfy (k - 1) % (k_s - 1) == 0 for kernel_size "
        f"{kernel_size}"
      )
    counts.append((k - 1) // (s - 1))
  if counts[0] != counts[1] or counts[0] < 1:
    raise ValueError(
      f"kernel_size {kernel_size} and small_kernel_size {small_kernel_size} need the same number of small convs on "
      f"both axes, got {counts}"
    )
  return counts[0]


def stacked_widths(in_features: int, hidden_features: int, out_features: int, count: int) -> list[int]:
  """Channels before and after each small conv: ``[in, hidden, …, hidden, out]``."""
  return [in_features] + [hidden_features] * (count - 1) + [out_features]


def stacked_biased(count: int, activation: ActivationFn | None) -> list[bool]:
  """Which small convs have a bias: all with an activation, else only the last.

  Intermediate biases of a linear stack would make it affine in a way no single conv is.
  """
  return [activation is not None or i == count - 1 for i in range(count)]


def stacked_conv(
  inputs: Array,
  kernels: Sequence[Array],
  biases: Sequence[Array | None],
  *,
  activation: ActivationFn | None,
  kernel_size: tuple[int, int],
  strides: tuple[int, int],
  padding: PaddingLike,
  kernel_dilation: tuple[int, int],
  precision: PrecisionLike,
) -> Array:
  """Pads NHWC ``inputs`` once for the full ``kernel_size``, then runs the small convs ``VALID``, the stride on the last."""
  pads, mode = opt.resolve_padding(padding, (inputs.shape[1], inputs.shape[2]), kernel_size, strides, kernel_dilation)
  h = opt.pad_input(inputs, pads, mode)
  for i, (k, b) in enumerate(zip(kernels, biases)):
    last = i == len(kernels) - 1
    h = _add_bias(conv_valid(h, k, strides if last else (1, 1), kernel_dilation, "xla", precision), b)
    if not last and activation is not None:
      h = activation(h)
  return h


def stacked_to_dense(kernels: Sequence[Array], kernel_size: tuple[int, int], dtype: Dtype) -> Array:
  """The single ``k×k`` HWIO kernel equal to a linear stack of ``kernels``."""
  # The stack is linear and shift-invariant: push a one-hot basis through it.
  kh, kw = kernel_size
  cin, cout = kernels[0].shape[2], kernels[-1].shape[3]
  h = jnp.eye(kh * kw * cin, dtype=dtype).reshape(kh * kw * cin, kh, kw, cin)
  for k in kernels:
    h = conv_valid(h, k, (1, 1), (1, 1), "xla", jax.lax.Precision.HIGHEST)
  return h.reshape(kh, kw, cin, cout)


def stacked_macs(
  input_shape: Sequence[int],
  kernel_shapes: Sequence[Sequence[int]],
  *,
  kernel_size: tuple[int, int],
  strides: tuple[int, int],
  padding: PaddingLike,
  kernel_dilation: tuple[int, int],
) -> int:
  """MACs of :func:`stacked_conv` on ``input_shape`` (bias adds excluded)."""
  n, h, w, _ = (int(v) for v in input_shape)
  pads, _ = opt.resolve_padding(padding, (h, w), kernel_size, strides, kernel_dilation)
  h, w = h + sum(pads[0]), w + sum(pads[1])
  total = 0
  for i, shape in enumerate(kernel_shapes):
    s = strides if i == len(kernel_shapes) - 1 else (1, 1)
    h = opt.output_size(h, int(shape[0]), s[0], kernel_dilation[0], 0, 0)
    w = opt.output_size(w, int(shape[1]), s[1], kernel_dilation[1], 0, 0)
    total += n * h * w * math.prod(int(v) for v in shape)
  return total
