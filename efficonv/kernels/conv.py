"""Dense and pointwise convolutions (NHWC inputs, HWIO kernels)."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from efficonv.kernels import _options as opt
from efficonv.kernels import dense, targets
from efficonv.typing import Array, PrecisionLike


def promote_operands(x: Array, kernel: Array) -> tuple[Array, Array]:
  """Casts ``x`` and ``kernel`` to their common dtype.

  :func:`jax.lax.conv_general_dilated` rejects mixed dtypes while the einsum
  steps of the factorized paths promote; promoting here keeps every path (and
  so ``implementation="auto"``) accepting the same inputs with the same result
  dtype, e.g. a bfloat16 input with float32 factors gives float32.
  """
  dtype = jnp.result_type(x, kernel)
  return x.astype(dtype), kernel.astype(dtype)


def conv(
  x: Array,
  kernel: Array,
  *,
  strides: int | Sequence[int] = 1,
  padding: opt.PaddingLike = "SAME",
  dilation: int | Sequence[int] = 1,
  feature_group_count: int = 1,
  precision: PrecisionLike = None,
  implementation: str = "auto",
) -> Array:
  """Dense 2-D convolution (NHWC/HWIO), by whichever formulation is fastest here.

  Accepts every padding form of :func:`efficonv.kernels.resolve_padding`
  (including ``"CIRCULAR"``), so it is the reference every factorized path is
  compared with. The formulations (see :mod:`efficonv.kernels.dense`) give the
  same output up to float rounding:

  * ``"xla"``: :func:`jax.lax.conv_general_dilated` with the padding inside the conv;
  * ``"xla_valid"``: the input padded first, then XLA's conv ``VALID``;
  * ``"im2col"``: one patch array times the flattened kernel;
  * ``"shift"``: the sum over taps of a strided slice times the tap's matrix;
  * ``"auto"``: :func:`efficonv.kernels.dense_implementation` picks per backend and shape.

  Grouped convolutions (``feature_group_count > 1``) always run on ``"xla"``.

  Args:
    x: input, shape ``(N, H, W, C_in)``.
    kernel: shape ``(kh, kw, C_in // feature_group_count, C_out)``.
    strides: int or ``(sh, sw)``.
    padding: see :func:`efficonv.kernels.resolve_padding`.
    dilation: kernel dilation, int or ``(dh, dw)``.
    feature_group_count: number of channel groups.
    precision: passed to XLA.
    implementation: ``"auto"``, or one of ``"xla"``, ``"xla_valid"``, ``"im2col"``, ``"shift"``.

  Returns:
    Output of shape ``(N, H', W', C_out)``, of the operands' common dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from efficonv.kernels import conv
    >>> conv(jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4))).shape
    (1, 8, 8, 4)
    >>> conv(jnp.ones((2, 2, 2, 8)), jnp.ones((3, 3, 8, 4)), implementation="im2col").shape
    (2, 2, 2, 4)
  """
  opt.check_input(x)
  if getattr(kernel, "ndim", None) != 4:
    raise ValueError(f"kernel must be HWIO of rank 4, got shape {getattr(kernel, 'shape', None)}")
  if feature_group_count < 1 or x.shape[-1] % feature_group_count:
    raise ValueError(f"feature_group_count must divide the {x.shape[-1]} input channels, got {feature_group_count}")
  if kernel.shape[2] * feature_group_count != x.shape[-1]:
    raise ValueError(
      f"kernel must have {x.shape[-1] // feature_group_count} input channels (axis 2) for "
      f"x with {x.shape[-1]} channels and feature_group_count={feature_group_count}, "
      f"got kernel shape {kernel.shape}"
    )
  if kernel.shape[3] % feature_group_count:
    raise ValueError(
      f"kernel output channels {kernel.shape[3]} must be divisible by feature_group_count={feature_group_count}"
    )
  s = opt.pair(strides, "strides")
  d = opt.pair(dilation, "dilation")
  pads, mode = opt.resolve_padding(padding, x.shape[1:3], kernel.shape[:2], s, d)
  if mode != "constant":
    x = opt.pad_input(x, pads, mode)
    pads = ((0, 0), (0, 0))
  x, kernel = promote_operands(x, kernel)

  def decide(backend: str) -> str:
    return dense.choose(
      x.shape, kernel.shape, s, pads, d, feature_group_count, backend, implementation, x.dtype.itemsize
    )[0]

  def run(impl: str, x: Array) -> Array:
    return dense.dense_padded(x, kernel, s, pads, d, impl, precision, feature_group_count)

  # Per planned platform (efficonv.kernels.targets): "auto" differs between CPU and GPU.
  return targets.dispatch(x, decide, run)


def pointwise(x: Array, weight: Array, *, precision: PrecisionLike = None) -> Array:
  """1×1 convolution as a matrix product over the channel axis.

  On CPU this runs about 2× faster than the same 1×1 as
  :func:`jax.lax.conv_general_dilated` (measured on 2 cores), and it never
  takes a stride: strides belong to the spatial factors.

  Args:
    x: shape ``(N, H, W, C_in)``.
    weight: shape ``(C_in, C_out)`` or HWIO ``(1, 1, C_in, C_out)``.
    precision: passed to :func:`jax.numpy.einsum`.

  Returns:
    Shape ``(N, H, W, C_out)``.
  """
  opt.check_input(x)
  if weight.ndim == 4:
    if weight.shape[:2] != (1, 1):
      raise ValueError(f"weight must be (C_in, C_out) or (1, 1, C_in, C_out), got {weight.shape}")
    weight = weight[0, 0]
  if weight.ndim != 2 or x.shape[-1] != weight.shape[0]:
    raise ValueError(f"weight must have shape ({x.shape[-1]}, C_out) for x of shape {x.shape}, got {weight.shape}")
  return jnp.einsum("nhwc,co->nhwo", x, weight, precision=precision)


def conv_valid(
  xp: Array,
  kernel: Array,
  strides: tuple[int, int],
  dilation: tuple[int, int],
  implementation: str = "xla",
  precision: PrecisionLike = None,
) -> Array:
  """Dense convolution of an already padded input (``VALID``).

  Args:
    xp: padded input ``(N, Hp, Wp, C_in)``.
    kernel: ``(kh, kw, C_in, C_out)``.
    strides: ``(sh, sw)``.
    dilation: ``(dh, dw)``.
    implementation: ``"xla"`` (:func:`jax.lax.conv_general_dilated`),
      ``"shift"`` (sum over the ``kh·kw`` taps of a strided slice times the
      tap's ``C_in×C_out`` matrix — plain matmuls, which XLA's CPU backend runs
      faster than its convolution for thin ``k×1`` kernels); see :mod:`efficonv.kernels.dense`.
    precision: passed to XLA.

  Returns:
    ``(N, H', W', C_out)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from efficonv.kernels import conv_valid
    >>> conv_valid(jnp.ones((1, 6, 6, 2)), jnp.ones((3, 1, 2, 4)), (1, 1), (1, 1), "shift").shape
    (1, 4, 6, 4)
  """
  if implementation not in ("xla", "shift"):
    raise ValueError(f"implementation must be 'xla' or 'shift', got {implementation!r}")
  xp, kernel = promote_operands(xp, kernel)
  return dense.dense_padded(xp, kernel, strides, ((0, 0), (0, 0)), dilation, implementation, precision)
