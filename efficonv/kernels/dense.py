"""Formulations of the dense 2-D convolution, and the rule that picks one.

Every formulation computes the same ``VALID`` convolution of an already padded
NHWC input with an HWIO kernel (:func:`efficonv.kernels.conv` pads first):

* ``"xla"`` — :func:`jax.lax.conv_general_dilated`, XLA's own convolution,
  with the zero padding inside the conv.
* ``"xla_valid"`` — the input padded first and XLA's conv run ``VALID``. XLA:CPU's
  slow small-map case is its *padded* conv: the same conv on a pre-padded
  input (kept apart from the pad by an optimization barrier) does not have it,
  but on large maps it is the slower of the two.
* ``"im2col"`` — the ``kh·kw`` strided slices of the input concatenated along
  channels into one ``(N, H', W', kh·kw·C_in)`` patch array, then one matmul with
  the kernel reshaped to ``(kh·kw·C_in, C_out)``. XLA:CPU's convolution is slow
  on small feature maps (a few pixels, many channels); a plain matmul is not.
  The patch array is ``kh·kw`` times the output-sized input, so the rule keeps
  it for maps where that is small.
* ``"shift"`` — the sum over the ``kh·kw`` taps of (strided slice) @ (the tap's
  ``C_in×C_out`` matrix): ``kh·kw`` matmuls and no patch array.

A ``1×1`` kernel is a single matmul in both ``"im2col"`` and ``"shift"``.
Grouped convolutions (``feature_group_count > 1``) always run on ``"xla"``: the
matmul formulations here are for one group, and :func:`dense_implementation`
says so in its reason.

``implementation="auto"`` resolves through :func:`dense_implementation`, a pure
function of shapes and backend whose thresholds live in :data:`DENSE_AUTO_RULES`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp

from efficonv.kernels import _options as opt
from efficonv.kernels import targets
from efficonv.typing import Array, PrecisionLike

DenseImpl = Literal["auto", "xla", "xla_valid", "im2col", "shift"]
DENSE_IMPLEMENTATIONS = ("xla", "xla_valid", "im2col", "shift")
"""The formulations :func:`dense_padded` runs (``"auto"`` resolves to one of them)."""

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

# The "auto" rule as data, one entry per JAX backend; backends not listed use "default".
# Each entry is read by dense_implementation:
#   matmul_regions: (max_output_pixels, min_c_in) pairs; a k×k layer (k > 1) runs as matmuls (im2col or
#     shift) when its output map has at most max_output_pixels pixels (H'·W') and it has at least min_c_in
#     input channels, for any pair; otherwise XLA's convolution runs. Empty: always XLA's conv.
#   pointwise_matmul: a 1×1 kernel (any map size) runs as one matmul instead of XLA's conv.
#   im2col_max_patch_bytes: above this patch-array size "shift" replaces "im2col" (the same MACs as
#     kh·kw matmuls, without the patch array that is kh·kw times the input).
# The CPU numbers come from experiments/bench/dense_conv.py (results in experiments/results/bench_dense_conv/):
# 3×3 layers with at most 4×4 outputs ran fastest as im2col or shift, XLA's padded conv up to 25× slower
# there; at 7×7 and 8×8 outputs matmuls won with 512 input channels and lost (to 1.6×) with 64–256; from
# 14×14 up XLA's conv was the fastest or within noise of it; 1×1 layers ran fastest as one matmul from
# batch 8 up and within noise of it at batch 1; above ~16 MiB of patches shift beat im2col.
# GPU/TPU keep XLA's conv: nothing here has measured them.
DENSE_AUTO_RULES: dict[str, dict[str, Any]] = {
  "cpu": {"matmul_regions": ((16, 1), (64, 512)), "pointwise_matmul": True, "im2col_max_patch_bytes": 16 << 20},
  "default": {"matmul_regions": (), "pointwise_matmul": False, "im2col_max_patch_bytes": 0},
}


def check_layer_implementation(value: object, name: str = "implementation") -> str:
  """A dense layer's ``implementation``: ``"auto"``, ``"autotune"`` or one of :data:`DENSE_IMPLEMENTATIONS`.

  Raises:
    ValueError: naming ``name`` and the allowed values.
  """
  if value not in ("auto", "autotune") and value not in DENSE_IMPLEMENTATIONS:
    raise ValueError(f"{name} must be 'auto', 'autotune' or one of {DENSE_IMPLEMENTATIONS}, got {value!r}")
  return str(value)


def _output_hw(
  input_shape: Sequence[int],
  kernel_shape: Sequence[int],
  strides: tuple[int, int],
  pads: opt.PadPairs,
  dilation: tuple[int, int],
) -> tuple[int, int]:
  return (
    opt.output_size(input_shape[1], kernel_shape[0], strides[0], dilation[0], *pads[0]),
    opt.output_size(input_shape[2], kernel_shape[1], strides[1], dilation[1], *pads[1]),
  )


def dense_implementation(
  input_shape: Sequence[int],
  kernel_shape: Sequence[int],
  strides: int | Sequence[int] = 1,
  padding: opt.PaddingLike = "SAME",
  dilation: int | Sequence[int] = 1,
  feature_group_count: int = 1,
  backend: str | None = None,
  implementation: str = "auto",
  itemsize: int = 4,
) -> tuple[str, str]:
  """The formulation :func:`efficonv.kernels.conv` runs for these shapes, and why.

  Pure (no timing, no device work), so it can be called under :func:`jax.jit`.

  Args:
    input_shape: ``(N, H, W, C_in)``.
    kernel_shape: ``(kh, kw, C_in // feature_group_count, C_out)``.
    strides: int or ``(sh, sw)``.
    padding: any form of :func:`efficonv.kernels.resolve_padding`.
    dilation: int or ``(dh, dw)``.
    feature_group_count: number of channel groups.
    backend: a JAX platform name (``"cpu"``, ``"gpu"``, ``"tpu"``); when ``None``, the one planned for
      (:func:`efficonv.kernels.targets.plan_for`; by default the default backend).
    implementation: ``"auto"`` to apply :data:`DENSE_AUTO_RULES`, or a formulation to force.
    itemsize: bytes per element of the input, for the patch-array size.

  Returns:
    ``(name, reason)`` with ``name`` in :data:`DENSE_IMPLEMENTATIONS`.

  Raises:
    ValueError: naming ``implementation`` when it is not ``"auto"`` or a formulation.

  Example:
    >>> from efficonv.kernels import dense_implementation
    >>> dense_implementation((32, 2, 2, 512), (3, 3, 512, 512), backend="cpu")[0]
    'im2col'
    >>> dense_implementation((32, 32, 32, 64), (3, 3, 64, 64), backend="cpu")[0]
    'xla'
    >>> dense_implementation((32, 2, 2, 512), (3, 3, 512, 512), backend="gpu")[0]
    'xla'
  """
  s = opt.pair(strides, "strides")
  d = opt.pair(dilation, "dilation")
  pads, mode = opt.resolve_padding(padding, (input_shape[1], input_shape[2]), (kernel_shape[0], kernel_shape[1]), s, d)
  if mode != "constant":
    # conv pads CIRCULAR/REFLECT inputs itself, then runs the formulation unpadded.
    input_shape = (input_shape[0], input_shape[1] + sum(pads[0]), input_shape[2] + sum(pads[1]), input_shape[3])
    pads = ((0, 0), (0, 0))
  return choose(input_shape, kernel_shape, s, pads, d, feature_group_count, backend, implementation, itemsize)


def choose(
  input_shape: Sequence[int],
  kernel_shape: Sequence[int],
  strides: tuple[int, int],
  pads: opt.PadPairs,
  dilation: tuple[int, int],
  feature_group_count: int,
  backend: str | None,
  implementation: str,
  itemsize: int,
) -> tuple[str, str]:
  """:func:`dense_implementation` with the options already resolved (explicit zero ``pads``)."""
  if implementation != "auto" and implementation not in DENSE_IMPLEMENTATIONS:
    raise ValueError(f"implementation must be 'auto' or one of {DENSE_IMPLEMENTATIONS}, got {implementation!r}")
  if feature_group_count > 1:
    return "xla", f"feature_group_count={feature_group_count}: grouped convs run only on XLA's conv"
  if implementation != "auto":
    return implementation, "forced by the caller"
  backend = backend or targets.current_backend()
  rule = DENSE_AUTO_RULES.get(backend, DENSE_AUTO_RULES["default"])
  # Symbolic sizes (jax.export) are planned for stand-ins; the pads were resolved on the true sizes.
  input_shape, note = targets.representative_shape(input_shape)
  if note:
    name, reason = choose(input_shape, kernel_shape, strides, pads, dilation, 1, backend, "auto", itemsize)
    return name, f"{reason} ({note})"
  ho, wo = _output_hw(input_shape, kernel_shape, strides, pads, dilation)
  taps = kernel_shape[0] * kernel_shape[1]
  if taps == 1:
    if rule["pointwise_matmul"]:
      return "im2col", f"1×1 kernel on {backend}: one matmul"
    return "xla", f"1×1 kernel on {backend}: XLA's conv"
  cin = kernel_shape[2]
  region = next(((px, c) for px, c in rule["matmul_regions"] if ho * wo <= px and cin >= c), None)
  if region is None:
    return "xla", f"{ho}×{wo} output, {cin} input channels on {backend}: outside the matmul regions, XLA's conv"
  where = f"{ho}×{wo} output ≤ {region[0]} pixels, {cin} ≥ {region[1]} input channels on {backend}"
  size = patch_bytes(input_shape, kernel_shape, (ho, wo), itemsize)
  if size > rule["im2col_max_patch_bytes"]:
    return "shift", f"{where}, {size}-byte patch array too large for im2col: shift"
  return "im2col", f"{where}: im2col + one matmul"


def _windows(xp: Array, kernel_hw: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int]) -> list[Array]:
  """The ``kh·kw`` strided slices of ``xp`` that meet each kernel tap, in HW order."""
  kh, kw = kernel_hw
  n, hp, wp, c = xp.shape
  ho = opt.output_size(hp, kh, strides[0], dilation[0], 0, 0)
  wo = opt.output_size(wp, kw, strides[1], dilation[1], 0, 0)
  out = []
  for i in range(kh):
    for j in range(kw):
      top, left = i * dilation[0], j * dilation[1]
      out.append(
        jax.lax.slice(
          xp,
          (0, top, left, 0),
          (n, top + (ho - 1) * strides[0] + 1, left + (wo - 1) * strides[1] + 1, c),
          (1, strides[0], strides[1], 1),
        )
      )
  return out


def _matmul(a: Array, w: Array, precision: PrecisionLike) -> Array:
  """``a @ w`` over the channel axis, accumulated in at least float32 and returned in the operands' dtype."""
  dtype = jnp.result_type(a, w)
  out = jax.lax.dot_general(
    a, w, (((3,), (0,)), ((), ())), precision=precision, preferred_element_type=jnp.promote_types(dtype, jnp.float32)
  )
  return out.astype(dtype)


def im2col_valid(
  xp: Array, kernel: Array, strides: tuple[int, int], dilation: tuple[int, int], precision: PrecisionLike = None
) -> Array:
  """``VALID`` conv as one patch array times the flattened kernel.

  Args:
    xp: padded input ``(N, Hp, Wp, C_in)``, the dtype of ``kernel``.
    kernel: ``(kh, kw, C_in, C_out)``.
    strides: ``(sh, sw)``.
    dilation: ``(dh, dw)``.
    precision: passed to :func:`jax.numpy.einsum`.

  Returns:
    ``(N, H', W', C_out)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from efficonv.kernels.dense import im2col_valid
    >>> im2col_valid(jnp.ones((2, 4, 4, 3)), jnp.ones((3, 3, 3, 5)), (1, 1), (1, 1)).shape
    (2, 2, 2, 5)
  """
  kh, kw, cin, cout = kernel.shape
  windows = _windows(xp, (kh, kw), strides, dilation)
  # Tap-major, channel-minor: the order of kernel.reshape(kh·kw·C_in, C_out).
  patches = windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)
  return _matmul(patches, kernel.reshape(kh * kw * cin, cout), precision)


def shift_valid(
  xp: Array, kernel: Array, strides: tuple[int, int], dilation: tuple[int, int], precision: PrecisionLike = None
) -> Array:
  """``VALID`` conv as the sum over taps of (strided slice) @ (tap matrix).

  Low-precision inputs (bfloat16, float16) accumulate the ``kh·kw`` partial
  products in float32, then cast back, so the sum loses no more bits than one matmul.

  Args:
    xp: padded input ``(N, Hp, Wp, C_in)``, the dtype of ``kernel``.
    kernel: ``(kh, kw, C_in, C_out)``.
    strides: ``(sh, sw)``.
    dilation: ``(dh, dw)``.
    precision: passed to :func:`jax.lax.dot_general`.

  Returns:
    ``(N, H', W', C_out)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from efficonv.kernels.dense import shift_valid
    >>> shift_valid(jnp.ones((2, 5, 5, 3)), jnp.ones((3, 3, 3, 5)), (2, 2), (1, 1)).shape
    (2, 2, 2, 5)
  """
  kh, kw, _, _ = kernel.shape
  windows = _windows(xp, (kh, kw), strides, dilation)
  if len(windows) == 1:  # a 1×1 kernel: the same single matmul as im2col
    return _matmul(windows[0], kernel[0, 0], precision)
  dtype = jnp.result_type(xp, kernel)
  acc_dtype = jnp.promote_types(dtype, jnp.float32)
  acc = None
  for tap, window in enumerate(windows):
    term = jax.lax.dot_general(
      window,
      kernel[tap // kw, tap % kw],
      (((3,), (0,)), ((), ())),
      precision=precision,
      preferred_element_type=acc_dtype,
    )
    acc = term if acc is None else acc + term
  assert acc is not None
  return acc.astype(dtype)


def xla_padded(
  x: Array,
  kernel: Array,
  strides: tuple[int, int],
  pads: opt.PadPairs,
  dilation: tuple[int, int],
  precision: PrecisionLike = None,
  feature_group_count: int = 1,
  *,
  barrier: bool = False,
) -> Array:
  """XLA's conv (NHWC/HWIO) with zero padding ``pads``.

  With ``barrier=True`` the input is padded first and kept apart from the conv
  by :func:`jax.lax.optimization_barrier`, so XLA runs a ``VALID`` conv instead
  of folding the pad back into the conv's own padding. The two are separate
  formulations because XLA:CPU is fast on one where it is slow on the other
  (see :data:`DENSE_AUTO_RULES`).
  """
  if barrier:
    x = jax.lax.optimization_barrier(opt.pad_input(x, pads, "constant"))
    pads = ((0, 0), (0, 0))
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    window_strides=strides,
    padding=pads,
    rhs_dilation=dilation,
    dimension_numbers=_DIMENSION_NUMBERS,
    feature_group_count=feature_group_count,
    precision=precision,
  )


def dense_padded(
  x: Array,
  kernel: Array,
  strides: tuple[int, int],
  pads: opt.PadPairs,
  dilation: tuple[int, int],
  implementation: str,
  precision: PrecisionLike = None,
  feature_group_count: int = 1,
) -> Array:
  """Runs one formulation (not ``"auto"``) with zero padding ``pads``, operands of one dtype.

  Args:
    x: input ``(N, H, W, C_in)``.
    kernel: ``(kh, kw, C_in // feature_group_count, C_out)``, the dtype of ``x``.
    strides: ``(sh, sw)``.
    pads: ``((top, bottom), (left, right))`` zero padding.
    dilation: ``(dh, dw)``.
    implementation: one of :data:`DENSE_IMPLEMENTATIONS`.
    precision: passed to XLA.
    feature_group_count: must be 1 unless ``implementation`` is ``"xla"`` or ``"xla_valid"``.

  Returns:
    ``(N, H', W', C_out)``.
  """
  if implementation not in DENSE_IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {DENSE_IMPLEMENTATIONS}, got {implementation!r}")
  if implementation in ("xla", "xla_valid"):
    return xla_padded(
      x, kernel, strides, pads, dilation, precision, feature_group_count, barrier=implementation == "xla_valid"
    )
  if feature_group_count != 1:
    raise ValueError(f"feature_group_count must be 1 for implementation {implementation!r}, got {feature_group_count}")
  xp = opt.pad_input(x, pads, "constant")
  if implementation == "im2col":
    return im2col_valid(xp, kernel, strides, dilation, precision)
  return shift_valid(xp, kernel, strides, dilation, precision)


def patch_bytes(
  input_shape: Sequence[int], kernel_shape: Sequence[int], output_hw: tuple[int, int], itemsize: int
) -> int:
  """Bytes of the im2col patch array for these shapes."""
  return math.prod((input_shape[0], *output_hw, kernel_shape[0], kernel_shape[1], kernel_shape[2], itemsize))
