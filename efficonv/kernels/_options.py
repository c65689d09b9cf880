"""Validation and normalisation of convolution options (strides, dilation, padding).

Every kernel in :mod:`efficonv.kernels` resolves its options here, once, so that
the factorized paths and the dense reference agree to the pixel. Padding is
always turned into explicit ``((lo, hi), (lo, hi))`` amounts plus a pad mode;
factorized paths pad their (cheapest) intermediate once and then run ``VALID``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Literal, SupportsIndex, Union

import jax.numpy as jnp
from jax.errors import InconclusiveDimensionOperation

from efficonv.typing import Array

PadPairs = tuple[tuple[int, int], tuple[int, int]]
PadMode = Literal["constant", "wrap", "reflect"]
PaddingLike = Union[str, int, Sequence[Union[int, tuple[int, int]]]]

_STRING_MODES: dict[str, PadMode] = {"CIRCULAR": "wrap", "REFLECT": "reflect"}


def _as_index(value: object) -> int | None:
  """``value`` as an int when it is an integer (Python or NumPy, not bool), else ``None``.

  ``operator.index`` rather than ``int`` so that ``1.5`` is rejected instead of
  silently truncated to ``1``.
  """
  if isinstance(value, bool) or not isinstance(value, SupportsIndex):
    return None
  try:
    return operator.index(value)
  except TypeError:
    return None


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
  """Returns ``value`` as a ``(h, w)`` pair of positive ints.

  Raises:
    ValueError: naming ``name`` when the value is neither a positive int nor a sequence of two.
  """
  single = _as_index(value)
  if single is not None:
    out = (single, single)
  else:
    if isinstance(value, (bool, str)) or not isinstance(value, Iterable):
      raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    try:
      items = [_as_index(v) for v in value]
    except TypeError as e:
      raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}") from e
    ints = [v for v in items if v is not None]
    if len(ints) != len(items):
      raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    # As flax.nnx.Conv: a sequence gives one entry per spatial axis, so (2,) is an error, not (2, 2).
    if len(ints) != 2:
      raise ValueError(f"{name} must be a positive int or a pair (h, w), one per spatial axis, got {value!r}")
    out = (ints[0], ints[1])
  if out[0] < 1 or out[1] < 1:
    raise ValueError(f"{name} must be >= 1, got {value!r}")
  return out


def effective_size(kernel_size: int, dilation: int) -> int:
  """Spatial extent of a kernel of ``kernel_size`` taps dilated by ``dilation``."""
  return (kernel_size - 1) * dilation + 1


def resolve_padding(
  padding: PaddingLike,
  in_hw: Sequence[int],
  kernel_hw: Sequence[int],
  strides: tuple[int, int],
  dilation: tuple[int, int],
) -> tuple[PadPairs, PadMode]:
  """Turns any accepted ``padding`` into explicit per-axis amounts and a mode.

  Args:
    padding: ``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, ``"REFLECT"``, an int ``p``
      (``((p, p), (p, p))``), a pair of ints, or ``((lo, hi), (lo, hi))``.
      ``"SAME"`` follows :func:`jax.lax.conv_general_dilated`; ``"CIRCULAR"``
      and ``"REFLECT"`` follow :class:`flax.nnx.Conv` (pad ``((e-1)//2, e//2)``
      with the effective kernel size ``e``, then ``VALID``).
    in_hw: input height and width.
    kernel_hw: kernel height and width (undilated).
    strides: ``(sh, sw)``.
    dilation: ``(dh, dw)`` kernel dilation.

  Returns:
    ``(((top, bottom), (left, right)), mode)`` with ``mode`` in
    ``"constant" | "wrap" | "reflect"``.

  Raises:
    ValueError: naming ``padding`` when it is not one of the accepted forms, or
      when the padded input is smaller than the dilated kernel.
  """
  eff = (effective_size(kernel_hw[0], dilation[0]), effective_size(kernel_hw[1], dilation[1]))
  mode: PadMode = "constant"
  if isinstance(padding, str):
    key = padding.upper()
    if key == "VALID":
      pads: PadPairs = ((0, 0), (0, 0))
    elif key == "SAME":
      both = []
      for n, e, s in zip(in_hw, eff, strides):
        out = -(-n // s)
        total = max((out - 1) * s + e - n, 0)
        both.append((total // 2, total - total // 2))
      pads = (both[0], both[1])
    elif key in _STRING_MODES:
      mode = _STRING_MODES[key]
      pads = (((eff[0] - 1) // 2, eff[0] // 2), ((eff[1] - 1) // 2, eff[1] // 2))
    else:
      raise ValueError(
        f"padding must be 'SAME', 'VALID', 'CIRCULAR', 'REFLECT', an int or ((lo, hi), (lo, hi)); got {padding!r}"
      )
  else:
    pads = _explicit_pads(padding)
  if not all(isinstance(v, int) for p in pads for v in p):
    # A symbolic size (jax.export) whose SAME pads depend on its value, e.g. its parity under a stride of 2.
    raise ValueError(
      f"padding {padding!r} with strides {strides} on the symbolic input size {tuple(in_hw)} gives pads that "
      f"depend on the size ({pads}); export with a size the strides divide (e.g. '{strides[0]}*h'), or with "
      "explicit padding"
    )
  for axis, ((lo, hi), n, e) in enumerate(zip(pads, in_hw, eff)):
    try:
      too_small = n + lo + hi < e
      reflect_too_small = mode == "reflect" and max(lo, hi) >= n
    except InconclusiveDimensionOperation as err:
      need = max(e - lo - hi, max(lo, hi) + 1 if mode == "reflect" else 1)
      raise ValueError(
        f"padding {padding!r} needs input axis {axis + 1} of at least {need} pixels, which the symbolic size "
        f"{n} may not have: add the constraint '{n} >= {need}' to jax.export.symbolic_shape"
      ) from err
    if too_small:
      raise ValueError(
        f"padding {padding!r} leaves input axis {axis + 1} with {n + lo + hi} pixels, "
        f"fewer than the dilated kernel extent {e}"
      )
    if reflect_too_small:
      raise ValueError(f"padding 'REFLECT' needs input axis {axis + 1} larger than its pad {max(lo, hi)}, got {n}")
  return pads, mode


def _explicit_pads(padding: PaddingLike) -> PadPairs:
  err = ValueError(
    "padding must be 'SAME', 'VALID', 'CIRCULAR', 'REFLECT', an int or "
    f"((lo, hi), (lo, hi)) of non-negative ints; got {padding!r}"
  )
  single = _as_index(padding)
  if single is not None:
    pads: list[tuple[int, int]] = [(single, single), (single, single)]
  else:
    if not isinstance(padding, Iterable):
      raise err
    try:
      items = list(padding)
    except TypeError as e:
      raise err from e
    if len(items) != 2:
      raise err
    per_axis = [v for v in (_as_index(i) for i in items) if v is not None]
    if len(per_axis) == len(items):
      pads = [(v, v) for v in per_axis]
    else:
      pads = []
      for item in items:
        if isinstance(item, str) or not isinstance(item, Iterable):
          raise err
        try:
          lo_hi = [_as_index(v) for v in item]
        except TypeError as e:
          raise err from e
        if len(lo_hi) != 2 or lo_hi[0] is None or lo_hi[1] is None:
          raise err
        pads.append((lo_hi[0], lo_hi[1]))
  if any(v < 0 for p in pads for v in p):
    raise err
  return ((pads[0][0], pads[0][1]), (pads[1][0], pads[1][1]))


def pad_input(x: Array, pads: PadPairs, mode: PadMode) -> Array:
  """Pads the spatial axes of an NHWC array; a no-op when every pad is zero."""
  if pads == ((0, 0), (0, 0)):
    return x
  return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), mode=mode)


def output_size(n: int, kernel: int, stride: int, dilation: int, lo: int, hi: int) -> int:
  """Output length of a convolution along one axis."""
  return (n + lo + hi - effective_size(kernel, dilation)) // stride + 1


def check_input(x: Array, name: str = "x", channels: int | None = None) -> None:
  """Checks that ``x`` is an NHWC array (rank 4) with ``channels`` channels.

  Raises:
    ValueError: naming ``name`` and the expected layout.
  """
  if getattr(x, "ndim", None) != 4:
    raise ValueError(
      f"{name} must be an NHWC array of rank 4 (batch, height, width, channels), "
      f"got shape {getattr(x, 'shape', type(x))}"
    )
  if channels is not None and x.shape[-1] != channels:
    raise ValueError(f"{name} must have {channels} channels in its last axis (NHWC), got shape {x.shape}")
