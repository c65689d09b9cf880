"""Conv geometry and dense MACs: the sizes of one convolution call, resolved once.

Every layer of efficonv that needs a conv's output size or cost — the formats' step costs, the planner,
:mod:`efficonv.cost`, the rank rules — asks this module, so the arithmetic lives in one place.

Example:
  >>> from efficonv.kernels import conv_geometry, dense_macs
  >>> g = conv_geometry((8, 32, 32, 64), (3, 3), 64, strides=2, padding="SAME", dilation=1)
  >>> g.out_hw, g.pads
  ((16, 16), ((0, 1), (0, 1)))
  >>> dense_macs(g, (3, 3), 64, 128)
  150994944
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from efficonv.kernels import _options as opt


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Resolved sizes of one convolution call.

  Attributes:
    batch: ``N``.
    in_hw: input ``(H, W)``.
    padded_hw: ``(H + top + bottom, W + left + right)``.
    out_hw: output ``(H', W')``.
    strides: ``(sh, sw)``.
    dilation: ``(dh, dw)``.
    pads: ``((top, bottom), (left, right))``.
    mode: pad mode (``"constant"``, ``"wrap"``, ``"reflect"``).
  """

  batch: int
  in_hw: tuple[int, int]
  padded_hw: tuple[int, int]
  out_hw: tuple[int, int]
  strides: tuple[int, int]
  dilation: tuple[int, int]
  pads: opt.PadPairs
  mode: opt.PadMode

  @property
  def out_pixels(self) -> int:
    """``N·H'·W'``: the number of output positions (batch included)."""
    return self.batch * self.out_hw[0] * self.out_hw[1]


def conv_geometry(
  input_shape: Sequence[int],
  kernel_hw: tuple[int, int],
  in_features: int,
  strides: int | Sequence[int] = 1,
  padding: opt.PaddingLike = "SAME",
  dilation: int | Sequence[int] = 1,
) -> Geometry:
  """Validates an NHWC ``input_shape`` and resolves the geometry of a conv on it.

  Args:
    input_shape: ``(N, H, W, C_in)``; every entry a concrete int.
    kernel_hw: ``(kh, kw)``.
    in_features: the channels the kernel expects.
    strides: int or ``(sh, sw)``.
    padding: any form of :func:`efficonv.kernels.resolve_padding`.
    dilation: kernel dilation, int or ``(dh, dw)``.

  Returns:
    A :class:`Geometry`.

  Raises:
    ValueError: naming ``input_shape`` when it is not rank 4 or has the wrong channel count, or the option
      that is malformed.
  """
  shape = tuple(int(v) for v in input_shape)
  if len(shape) != 4:
    raise ValueError(f"input_shape must be NHWC (rank 4), got {shape}")
  if shape[-1] != in_features:
    raise ValueError(f"input must have {in_features} channels in its last axis (NHWC), got shape {shape}")
  s = opt.pair(strides, "strides")
  d = opt.pair(dilation, "dilation")
  pads, mode = opt.resolve_padding(padding, (shape[1], shape[2]), kernel_hw, s, d)
  padded = (shape[1] + pads[0][0] + pads[0][1], shape[2] + pads[1][0] + pads[1][1])
  out = (
    opt.output_size(padded[0], kernel_hw[0], s[0], d[0], 0, 0),
    opt.output_size(padded[1], kernel_hw[1], s[1], d[1], 0, 0),
  )
  return Geometry(shape[0], (shape[1], shape[2]), padded, out, s, d, pads, mode)


def dense_macs(g: Geometry, kernel_hw: tuple[int, int], in_features: int, out_features: int, groups: int = 1) -> int:
  """Multiply-accumulates of a dense conv on geometry ``g``: ``N·H'·W'·kh·kw·(C_in/groups)·C_out``.

  Counts every tap, those on zero padding included (see :mod:`efficonv.cost`).
  """
  return g.out_pixels * kernel_hw[0] * kernel_hw[1] * (in_features // groups) * out_features
