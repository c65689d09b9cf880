"""Depthwise convolution with a depth multiplier, on two interchangeable paths.

* ``"xla"`` — :func:`jax.lax.conv_general_dilated` with
  ``feature_group_count=C``. cuDNN is expected to handle it well on GPU, but XLA's CPU
  backend runs grouped convs far below its dense-conv throughput.
* ``"shift"`` — shift-and-add: pad once, then sum the ``kh·kw`` strided slices
  of the input times the per-channel weights. Same output, as a handful of fused
  elementwise passes (the measured ratio on CPU is in ``experiments/results/quick_timing``).

``implementation="auto"`` picks per backend (see :func:`depthwise_implementation`);
either path can be forced.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from efficonv.kernels import _options as opt
from efficonv.kernels import targets
from efficonv.kernels._mac_scope import elementwise_macs
from efficonv.kernels.conv import promote_operands
from efficonv.kernels.sharding import batch_shards
from efficonv.typing import Array, PrecisionLike

DepthwiseImpl = Literal["auto", "shift", "xla"]
_DEPTHWISE_IMPLS = ("auto", "shift", "xla")


def depthwise_implementation(implementation: str = "auto", backend: str | None = None) -> str:
  """Resolves ``implementation`` to the depthwise path that will run.

  ``"auto"`` gives ``"shift"`` on CPU (where it is measured much faster than XLA's grouped
  conv) and ``"xla"`` elsewhere (cuDNN/TPU grouped convs are expected to be efficient).

  Args:
    implementation: ``"auto"``, ``"shift"`` or ``"xla"``.
    backend: a JAX platform name; when ``None``, the one planned for
      (:func:`efficonv.kernels.targets.plan_for`; by default the default backend).

  Returns:
    ``"shift"`` or ``"xla"``.
  """
  if implementation not in _DEPTHWISE_IMPLS:
    raise ValueError(f"depthwise implementation must be one of {_DEPTHWISE_IMPLS}, got {implementation!r}")
  if implementation != "auto":
    return implementation
  backend = backend or targets.current_backend()
  return "shift" if backend == "cpu" else "xla"


def _accumulation_dtype(dtype: jnp.dtype) -> jnp.dtype:
  # Sums of k² products in bfloat16/float16 lose bits; accumulate in float32.
  return jnp.promote_types(dtype, jnp.float32)


def depthwise_valid(
  xp: Array,
  kernel: Array,
  strides: tuple[int, int],
  dilation: tuple[int, int],
  implementation: str = "auto",
  precision: PrecisionLike = None,
) -> Array:
  """Depthwise conv of an already padded input, no further padding.

  Args:
    xp: padded input ``(N, Hp, Wp, C)``.
    kernel: ``(kh, kw, C, m)``; output channel ``c·m + j`` comes from input
      channel ``c`` and multiplier index ``j`` (the ``lax`` grouped-conv order).
    strides: ``(sh, sw)``.
    dilation: ``(dh, dw)``.
    implementation: ``"auto" | "shift" | "xla"``.
    precision: used by the ``"xla"`` path.

  Returns:
    ``(N, H', W', C·m)``.
  """
  if implementation not in _DEPTHWISE_IMPLS:
    raise ValueError(f"depthwise implementation must be one of {_DEPTHWISE_IMPLS}, got {implementation!r}")
  # Per planned platform (efficonv.kernels.targets): "auto" is shift-and-add on CPU only.
  return targets.dispatch(
    xp,
    functools.partial(depthwise_implementation, implementation),
    functools.partial(_depthwise_valid, kernel=kernel, strides=strides, dilation=dilation, precision=precision),
  )


def _depthwise_valid(
  impl: str, xp: Array, *, kernel: Array, strides: tuple[int, int], dilation: tuple[int, int], precision: PrecisionLike
) -> Array:
  kh, kw, c, m = kernel.shape
  if impl == "xla":
    xp, kernel = promote_operands(xp, kernel)
    return jax.lax.conv_general_dilated(
      xp,
      kernel.reshape(kh, kw, 1, c * m),
      window_strides=strides,
      padding="VALID",
      rhs_dilation=dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=c,
      precision=precision,
    )
  return _shift(xp, kernel, strides, dilation)


def _shift_valid(xp: Array, kernel: Array, strides: tuple[int, int], dilation: tuple[int, int]) -> Array:
  """The shift-and-add sum: ``kh·kw`` strided slices of ``xp`` times per-channel weights."""
  kh, kw, c, m = kernel.shape
  n, hp, wp, _ = xp.shape
  ho = opt.output_size(hp, kh, strides[0], dilation[0], 0, 0)
  wo = opt.output_size(wp, kw, strides[1], dilation[1], 0, 0)
  acc_dtype = _accumulation_dtype(jnp.result_type(xp.dtype, kernel.dtype))
  out_dtype = jnp.result_type(xp.dtype, kernel.dtype)
  k = kernel.astype(acc_dtype)
  acc = None
  # The multiplies below are the conv's MACs; the scope lets efficonv.cost count them.
  with elementwise_macs():
    for i in range(kh):
      for j in range(kw):
        top, left = i * dilation[0], j * dilation[1]
        window = jax.lax.slice(
          xp,
          (0, top, left, 0),
          (n, top + (ho - 1) * strides[0] + 1, left + (wo - 1) * strides[1] + 1, c),
          (1, strides[0], strides[1], 1),
        ).astype(acc_dtype)
        if m > 1:
          term = window[..., None] * k[i, j][None, None, None]
        else:
          term = window * k[i, j, :, 0][None, None, None]
        acc = term if acc is None else acc + term
  assert acc is not None
  return fusion_fence(acc.reshape(n, ho, wo, c * m).astype(out_dtype))


def fusion_fence(y: Array) -> Array:
  """``y`` unchanged, through an op that keeps XLA:CPU's YNNPACK fusion from swallowing its producer.

  XLA:CPU (by default) hands a reduction — a pool, a sum — to YNNPACK together with the elementwise ops
  that produce its input. For the shift-and-add sum that means materializing every shifted slice of the
  input instead of streaming them through one loop fusion, and the network slows down many times over.
  A ``reduce_precision`` to the dtype's own exponent and mantissa is an exact identity (every value is
  representable, NaN stays NaN) that XLA keeps and YNNPACK does not fuse, so the shift-and-add stays one
  loop fusion and its consumer starts from its result. Elsewhere it is one fused elementwise pass.
  """
  if not jnp.issubdtype(y.dtype, jnp.floating):
    return y
  info = jnp.finfo(y.dtype)
  return jax.lax.reduce_precision(y, exponent_bits=info.nexp, mantissa_bits=info.nmant)


# Bytes of padded input per tile of the kernel tangent (see _shift_kernel_tangent).
_TILE_BYTES = 1 << 20


def _images_per_tile(n: int, image_bytes: int) -> int:
  """The largest divisor of ``n`` whose tile of images fits in ``_TILE_BYTES`` (at least 1)."""
  best = 1
  for d in range(1, n + 1):
    if n % d == 0 and d * image_bytes <= _TILE_BYTES:
      best = d
  return best


def _shift_kernel_tangent(xp: Array, kernel_dot: Array, strides: tuple[int, int], dilation: tuple[int, int]) -> Array:
  """:func:`_shift_valid` of ``xp`` and ``kernel_dot``, computed one cache-sized tile of images at a time.

  The result is the same; what changes is its transpose, the kernel gradient. Transposed as one
  whole-batch expression, XLA:CPU turns it into ``kh·kw`` separate reductions over the batch, each
  streaming the input and the cotangent from memory. As a scan over tiles that fit in cache, all taps
  reduce one tile while it is resident.

  With the batch sharded over an Explicit mesh axis (``s`` shards), a scan over batch tiles would scan a
  sharded axis, which the scan's typing forbids. So each tile then takes the same number of images from
  every shard (tile ``t`` holds shard-local images ``t·p … t·p + p - 1`` of each shard): the scanned axis
  is unsharded, the tile's own batch axis keeps the mesh axis, and each device still reduces a tile of
  its own images that fits in cache.
  """
  n = xp.shape[0]
  if not isinstance(n, int):  # a symbolic batch (jax.export): no tiles to choose, the same result untiled
    return _shift_valid(xp, kernel_dot, strides, dilation)
  shards = batch_shards(xp)
  image_bytes = math.prod(xp.shape[1:]) * xp.dtype.itemsize
  per_shard = _images_per_tile(n // shards, image_bytes) if n % shards == 0 else n // shards
  if n % shards or per_shard * shards == n:
    return _shift_valid(xp, kernel_dot, strides, dilation)
  tiles_count = n // (per_shard * shards)
  # (shard, tile, image) → (tile, shard, image): the shard axis, the one the mesh splits, stays major in a tile.
  tiles = xp.reshape(shards, tiles_count, per_shard, *xp.shape[1:]).swapaxes(0, 1)
  tiles = tiles.reshape(tiles_count, shards * per_shard, *xp.shape[1:])
  # Rematerialized, the transpose slices the windows from the resident tile; otherwise linearization
  # would save all kh·kw windows of the batch as residuals and stream them back from memory.
  tile_fn = jax.checkpoint(lambda tile: _shift_valid(tile, kernel_dot, strides, dilation))
  out = jax.lax.map(tile_fn, tiles)
  out = out.reshape(tiles_count, shards, per_shard, *out.shape[2:]).swapaxes(0, 1)
  return out.reshape(n, *out.shape[3:])


def _shift_input_tangent(xp_dot: Array, kernel: Array, strides: tuple[int, int], dilation: tuple[int, int]) -> Array:
  """:func:`_shift_valid` of ``xp_dot`` and ``kernel``, one depth-multiplier index at a time.

  Same result; its transpose (the input gradient) then sums ``m`` cheap single-multiplier transposes
  instead of broadcasting every tap's weights to ``(N, H, W, C, m)``, which XLA:CPU materializes.
  """
  m = kernel.shape[-1]
  if m == 1:
    return _shift_valid(xp_dot, kernel, strides, dilation)
  parts = [_shift_valid(xp_dot, kernel[..., j : j + 1], strides, dilation) for j in range(m)]
  out = jnp.stack(parts, axis=-1)  # (N, H', W', C, m): channel c·m + j, the lax order
  return out.reshape(*out.shape[:3], -1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _shift(xp: Array, kernel: Array, strides: tuple[int, int], dilation: tuple[int, int]) -> Array:
  return _shift_valid(xp, kernel, strides, dilation)


def _shift_jvp(
  strides: tuple[int, int], dilation: tuple[int, int], primals: tuple[Array, Array], tangents: tuple[Any, Any]
) -> tuple[Array, Array]:
  # The output is bilinear in (xp, kernel). Only the kernel term is rewritten (tiled); JAX still
  # derives every transpose, so forward mode, reverse mode and higher orders all keep working.
  xp, kernel = primals
  xp_dot, kernel_dot = tangents
  y = _shift_valid(xp, kernel, strides, dilation)
  y_dot = None
  if not isinstance(xp_dot, SymbolicZero):
    y_dot = _shift_input_tangent(xp_dot, kernel, strides, dilation)
  if not isinstance(kernel_dot, SymbolicZero):
    term = _shift_kernel_tangent(xp, kernel_dot, strides, dilation)
    y_dot = term if y_dot is None else y_dot + term
  if y_dot is None:
    y_dot = jnp.zeros_like(y)
  return y, y_dot


_shift.defjvp(_shift_jvp, symbolic_zeros=True)


def depthwise(
  x: Array,
  kernel: Array,
  *,
  strides: int | Sequence[int] = 1,
  padding: opt.PaddingLike = "SAME",
  dilation: int | Sequence[int] = 1,
  implementation: DepthwiseImpl = "auto",
  precision: PrecisionLike = None,
) -> Array:
  """Depthwise convolution with depth multiplier ``m``.

  .. math::
    y_{n,h,w,c m + j} = \\sum_{a,b} x_{n, s_h h + d_h a, s_w w + d_w b, c}\\, K_{a,b,c,j}

  Equal to ``conv(x, kernel.reshape(kh, kw, 1, C*m), feature_group_count=C)``.

  Args:
    x: ``(N, H, W, C)``.
    kernel: ``(kh, kw, C, m)``.
    strides: int or ``(sh, sw)``.
    padding: any form accepted by :func:`efficonv.kernels.resolve_padding`.
    dilation: int or ``(dh, dw)``.
    implementation: ``"auto"`` (per backend), ``"shift"`` or ``"xla"``.
    precision: used by the ``"xla"`` path.

  Returns:
    ``(N, H', W', C·m)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from efficonv.kernels import depthwise
    >>> depthwise(jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 2)), strides=2).shape
    (2, 4, 4, 8)
  """
  opt.check_input(x)
  if getattr(kernel, "ndim", None) != 4 or kernel.shape[2] != x.shape[-1]:
    raise ValueError(
      f"kernel must have shape (kh, kw, {x.shape[-1]}, depth_multiplier) for x of shape "
      f"{x.shape}, got {getattr(kernel, 'shape', None)}"
    )
  s = opt.pair(strides, "strides")
  d = opt.pair(dilation, "dilation")
  pads, mode = opt.resolve_padding(padding, x.shape[1:3], kernel.shape[:2], s, d)
  return depthwise_valid(opt.pad_input(x, pads, mode), kernel, s, d, implementation, precision)


def depthwise_shift(x: Array, kernel: Array, **kwargs) -> Array:
  """:func:`depthwise` forced onto the shift-and-add path."""
  return depthwise(x, kernel, implementation="shift", **kwargs)


def depthwise_xla(x: Array, kernel: Array, **kwargs) -> Array:
  """:func:`depthwise` forced onto XLA's grouped convolution."""
  return depthwise(x, kernel, implementation="xla", **kwargs)
