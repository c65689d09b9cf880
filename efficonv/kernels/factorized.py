"""Factorized convolutions: the cheap sequences that replace one dense conv.

Every function computes ``conv(x, <format>_to_dense(factors), ...)`` — the same
strides, padding (``SAME``, ``VALID``, explicit, ``CIRCULAR``, ``REFLECT``) and
dilation — without forming the dense kernel. Strides and dilation go to the
spatial factors only, never to the 1×1s. Padding is resolved once against the
full kernel and applied to the cheapest intermediate (after the first 1×1 when
there is one: padding commutes with a per-pixel linear map), then every
spatial step runs ``VALID``.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import jax.numpy as jnp

from efficonv.kernels import _options as opt
from efficonv.kernels.conv import conv_valid, pointwise
from efficonv.kernels.depthwise import depthwise_valid
from efficonv.typing import Array, PrecisionLike


def _check_shape(name: str, value: Array, expected: tuple[int | None, ...]) -> tuple[int, ...]:
  """Returns ``value.shape`` after checking it against ``expected`` (``None``: any size).

  Raises:
    ValueError: naming ``name`` and the expected shape, so that factors that do
      not chain fail here rather than as a broadcasting error (or, for TT cores
      with a last rank above 1, a silently wrong channel count).
  """
  shape = tuple(int(v) for v in getattr(value, "shape", ()))
  if len(shape) != len(expected) or any(e is not None and v != e for v, e in zip(shape, expected)):
    want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
    raise ValueError(f"{name} must have shape {want}, got {shape}")
  return shape


def _prepare(
  x: Array,
  kernel_hw: tuple[int, int],
  strides: int | Sequence[int],
  padding: opt.PaddingLike,
  dilation: int | Sequence[int],
  in_features: int,
) -> tuple[tuple[int, int], tuple[int, int], opt.PadPairs, opt.PadMode]:
  opt.check_input(x, channels=in_features)
  s = opt.pair(strides, "strides")
  d = opt.pair(dilation, "dilation")
  pads, mode = opt.resolve_padding(padding, x.shape[1:3], kernel_hw, s, d)
  return s, d, pads, mode


def spatial_conv(
  x: Array,
  vertical: Array,
  horizontal: Array,
  *,
  strides: int | Sequence[int] = 1,
  padding: opt.PaddingLike = "SAME",
  dilation: int | Sequence[int] = 1,
  conv_implementation: str = "xla",
  precision: PrecisionLike = None,
) -> Array:
  """Spatially factorized conv: ``kh×1`` (``C_in→K``) then ``1×kw`` (``K→C_out``).

  Args:
    x: ``(N, H, W, C_in)``.
    vertical: ``(kh, C_in, K)``.
    horizontal: ``(kw, K, C_out)``.
    strides, padding, dilation: as for :func:`efficonv.kernels.conv`.
    conv_implementation: ``"xla"`` or ``"shift"`` for the two thin convs
      (see :func:`efficonv.kernels.conv_valid`).
    precision: passed to XLA.

  Returns:
    ``(N, H', W', C_out)``.
  """
  kh, cin, k = _check_shape("vertical", vertical, (None, None, None))
  kw = _check_shape("horizontal", horizontal, (None, k, None))[0]
  s, d, pads, mode = _prepare(x, (kh, kw), strides, padding, dilation, cin)
  h = conv_valid(
    opt.pad_input(x, pads, mode),
    vertical[:, None],
    (s[0], 1),
    (d[0], 1),
    conv_implementation,
    precision,
  )
  return conv_valid(h, horizontal[None], (1, s[1]), (1, d[1]), conv_implementation, precision)


def cp_conv(
  x: Array,
  first: Array,
  vertical: Array,
  horizontal: Array,
  last: Array,
  *,
  strides: int | Sequence[int] = 1,
  padding: opt.PaddingLike = "SAME",
  dilation: int | Sequence[int] = 1,
  depthwise_implementation: str = "auto",
  precision: PrecisionLike = None,
) -> Array:
  """CP-decomposed conv (Lebedev et al. 2014).

  ``1×1 (C_in→R)`` → depthwise ``kh×1`` over ``R`` → depthwise ``1×kw`` over
  ``R`` → ``1×1 (R→C_out)``. Costs ``R(C_in + C_out) + R(kh + kw)`` MACs per
  output pixel instead of ``kh·kw·C_in·C_out``.

  Args:
    x: ``(N, H, W, C_in)``.
    first: ``(C_in, R)``.
    vertical: ``(kh, R)``.
    horizontal: ``(kw, R)``.
    last: ``(R, C_out)``.
    strides, padding, dilation: as for :func:`efficonv.kernels.conv`.
    depthwise_implementation: ``"auto" | "shift" | "xla"``.
    precision: passed to XLA.

  Returns:
    ``(N, H', W', C_out)``.

  References:
    Lebedev et al., `Speeding-up Convolutional Neural Networks Using Fine-tuned
    CP-Decomposition <https://arxiv.org/abs/1412.6553>`_, 2014 (ICLR 2015).
  """
  cin, rank = _check_shape("first", first, (None, None))
  kh = _check_shape("vertical", vertical, (None, rank))[0]
  kw = _check_shape("horizontal", horizontal, (None, rank))[0]
  _check_shape("last", last, (rank, None))
  s, d, pads, mode = _prepare(x, (kh, kw), strides, padding, dilation, cin)
  h = opt.pad_input(pointwise(x, first, precision=precision), pads, mode)
  h = depthwise_valid(h, vertical[:, None, :, None], (s[0], 1), (d[0], 1), depthwise_implementation, precision)
  h = depthwise_valid(h, horizontal[None, :, :, None], (1, s[1]), (1, d[1]), depthwise_implementation, precision)
  return pointwise(h, last, precision=precision)


def tucker2_conv(
  x: Array,
  first: Array,
  core: Array,
  last: Array,
  *,
  strides: int | Sequence[int] = 1,
  padding: opt.PaddingLike = "SAME",
  dilation: int | Sequence[int] = 1,
  conv_implementation: str = "xla",
  precision: PrecisionLike = None,
) -> Array:
  """Tucker-2 conv (Kim et al. 2016): ``1×1 (C_in→R1)`` → ``kh×kw (R1→R2)`` → ``1×1 (R2→C_out)``.

  Args:
    x: ``(N, H, W, C_in)``.
    first: ``(C_in, R1)``.
    core: ``(kh, kw, R1, R2)``.
    last: ``(R2, C_out)``.
    strides, padding, dilation: as for :func:`efficonv.kernels.conv`.
    conv_implementation: ``"xla"`` or ``"shift"`` for the core conv.
    precision: passed to XLA.

  Returns:
    ``(N, H', W', C_out)``.

  References:
    Kim et al., `Compression of Deep Convolutional Neural Networks for Fast and
    Low Power Mobile Applications <https://arxiv.org/abs/1511.06530>`_, ICLR 2016.
  """
  cin, r1 = _check_shape("first", first, (None, None))
  kh, kw, _, r2 = _check_shape("core", core, (None, None, r1, None))
  _check_shape("last", last, (r2, None))
  s, d, pads, mode = _prepare(x, (kh, kw), strides, padding, dilation, cin)
  h = opt.pad_input(pointwise(x, first, precision=precision), pads, mode)
  h = conv_valid(h, core, s, d, conv_implementation, precision)
  return pointwise(h, last, precision=precision)


def separable_conv(
  x: Array,
  depthwise: Array,
  pointwise_weight: Array,
  *,
  strides: int | Sequence[int] = 1,
  padding: opt.PaddingLike = "SAME",
  dilation: int | Sequence[int] = 1,
  depthwise_implementation: str = "auto",
  precision: PrecisionLike = None,
) -> Array:
  """Depthwise-separable conv: depthwise ``kh×kw`` with multiplier ``m``, then ``1×1``.

  Args:
    x: ``(N, H, W, C_in)``.
    depthwise: ``(kh, kw, C_in, m)``.
    pointwise_weight: ``(C_in·m, C_out)``.
    strides, padding, dilation: as for :func:`efficonv.kernels.conv`.
    depthwise_implementation: ``"auto" | "shift" | "xla"``.
    precision: passed to XLA.

  Returns:
    ``(N, H', W', C_out)``.
  """
  kh, kw, cin, m = _check_shape("depthwise", depthwise, (None, None, None, None))
  _check_shape("pointwise_weight", pointwise_weight, (cin * m, None))
  s, d, pads, mode = _prepare(x, (kh, kw), strides, padding, dilation, cin)
  h = depthwise_valid(opt.pad_input(x, pads, mode), depthwise, s, d, depthwise_implementation, precision)
  return pointwise(h, pointwise_weight, precision=precision)


def tt_conv(
  x: Array,
  spatial: Array,
  cores: Sequence[Array],
  *,
  strides: int | Sequence[int] = 1,
  padding: opt.PaddingLike = "SAME",
  dilation: int | Sequence[int] = 1,
  depthwise_implementation: str = "auto",
  precision: PrecisionLike = None,
) -> Array:
  """Tensor-Train conv (Garipov et al. 2016).

  The spatial core runs first as a depthwise conv with multiplier ``r_0`` (so
  the channel chain runs at the strided output resolution), then the channel
  cores contract the input modes ``c_1…c_d`` one at a time into ``s_1…s_d``.

  Args:
    x: ``(N, H, W, ∏c_k)``.
    spatial: ``(kh, kw, r_0)``.
    cores: core ``k`` of shape ``(r_{k-1}, c_k, s_k, r_k)``, last rank 1.
    strides, padding, dilation: as for :func:`efficonv.kernels.conv`.
    depthwise_implementation: ``"auto" | "shift" | "xla"`` for the spatial core.
    precision: passed to XLA.

  Returns:
    ``(N, H', W', ∏s_k)``.

  References:
    Garipov et al., `Ultimate tensorization: compressing convolutional and FC
    layers alike <https://arxiv.org/abs/1611.03214>`_, 2016.
  """
  kh, kw, r0 = _check_shape("spatial", spatial, (None, None, None))
  if len(cores) == 0:
    raise ValueError("cores must hold at least one channel core, got none")
  prev = r0
  for k, core in enumerate(cores):
    # Core k is (r_{k-1}, c_k, s_k, r_k); the last one closes the chain with r_d = 1.
    prev = _check_shape(f"cores[{k}]", core, (prev, None, None, 1 if k == len(cores) - 1 else None))[3]
  in_modes = [int(c.shape[1]) for c in cores]
  cin = 1
  for c in in_modes:
    cin *= c
  s, d, pads, mode = _prepare(x, (kh, kw), strides, padding, dilation, cin)
  xp = opt.pad_input(x, pads, mode)
  # The spatial core is shared by every input channel: a depthwise kernel.
  dw = jnp.broadcast_to(spatial[:, :, None, :], (kh, kw, cin, r0))
  h = depthwise_valid(xp, dw, s, d, depthwise_implementation, precision)
  n, ho, wo, _ = h.shape
  t = h.reshape(n, ho, wo, *in_modes, r0)
  letters = iter(string.ascii_letters)
  nhw = "".join(next(letters) for _ in range(3))
  c_idx = [next(letters) for _ in in_modes]
  s_idx = [next(letters) for _ in in_modes]
  r_idx = [next(letters) for _ in range(len(in_modes) + 1)]
  for k, core in enumerate(cores):
    lhs = nhw + "".join(c_idx[k:]) + "".join(s_idx[:k]) + r_idx[k]
    rhs = r_idx[k] + c_idx[k] + s_idx[k] + r_idx[k + 1]
    out = nhw + "".join(c_idx[k + 1 :]) + "".join(s_idx[: k + 1]) + r_idx[k + 1]
    t = jnp.einsum(f"{lhs},{rhs}->{out}", t, core, precision=precision)
  return t.reshape(n, ho, wo, -1)
