"""Reading a trained :class:`flax.nnx.Conv` into the forms efficonv's decompositions and layers take.

:func:`efficonv.compress` and ``FactorizedConv.from_conv`` replace convs by
factorized layers; both read the conv through these two functions, so a conv
that no factorized layer can reproduce is refused with the same message.

Example:
  >>> from flax import nnx
  >>> from efficonv.convert import conv_kernel, conv_padding
  >>> conv = nnx.Conv(4, 8, (3, 3), padding=[1, (0, 2)], rngs=nnx.Rngs(0))
  >>> conv_kernel(conv).shape, conv_padding(conv)
  ((3, 3, 4, 8), ((1, 1), (0, 2)))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from flax import nnx
from flax.nnx.nn.linear import canonicalize_padding

from efficonv.kernels._options import PaddingLike
from efficonv.typing import Array


def conv_kernel(conv: Any) -> Array:
  """The HWIO kernel of a plain 2-D :class:`flax.nnx.Conv`.

  Args:
    conv: the conv to read.

  Returns:
    ``conv.kernel`` as a ``(kh, kw, C_in, C_out)`` array.

  Raises:
    ValueError: naming ``conv`` when it is not a 2-D conv without groups,
      input dilation or mask (no factorized layer reproduces those).
  """
  if not isinstance(conv, nnx.Conv):
    raise ValueError(f"conv must be a flax.nnx.Conv, got {type(conv).__name__}")
  kernel = conv.kernel[...]
  if kernel.ndim != 4:
    raise ValueError(f"conv must be a 2-D convolution (HWIO kernel of rank 4), got kernel shape {kernel.shape}")
  if conv.feature_group_count != 1:
    raise ValueError(f"conv must have feature_group_count=1, got {conv.feature_group_count}")
  if conv.input_dilation not in (None, 1, (1, 1), [1, 1]):
    raise ValueError(f"conv must have input_dilation=1, got {conv.input_dilation}")
  if conv.mask is not None:
    raise ValueError("conv must not have a kernel mask")
  return kernel


def conv_padding(conv: nnx.Conv) -> PaddingLike:
  """The padding of a 2-D :class:`flax.nnx.Conv` in a form efficonv accepts.

  ``nnx.Conv`` also takes a per-axis mix of ints and pairs (``[1, (0, 2)]``);
  flax's own canonicalization turns every explicit form into ``((lo, hi), (lo, hi))``.

  Args:
    conv: a 2-D ``nnx.Conv`` (checked by :func:`conv_kernel` first).

  Returns:
    ``conv.padding`` when it is a string (``"SAME"``, ``"VALID"``, ``"CIRCULAR"``,
    ``"REFLECT"``), else ``((top, bottom), (left, right))``.
  """
  if isinstance(conv.padding, str):
    return conv.padding
  # flax types its result as any padding; for a non-string padding it is one (lo, hi) pair per axis.
  pads = cast(Sequence[tuple[int, int]], canonicalize_padding(conv.padding, 2))
  (top, bottom), (left, right) = pads
  return ((int(top), int(bottom)), (int(left), int(right)))
