"""``Bottleneck``: 1×1 squeeze, k×k map, 1×1 expand, with nonlinearities between."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from efficonv.formats.init import Initializer
from efficonv.formats.tucker2 import Tucker2
from efficonv.kernels import _options as opt
from efficonv.kernels.conv import conv_valid, pointwise
from efficonv.nnx._base import batch_inputs, default_bias_init, promote_tree
from efficonv.nnx.tucker import TuckerConv
from efficonv.typing import Array, Dtype, PrecisionLike

default_kernel_init = nnx.initializers.lecun_normal()


class Bottleneck(TuckerConv):
  """Bottleneck block: ``1×1 (C_in→w) → act → k×k (w→w) → act → 1×1 (w→C_out)``.

  The ResNet bottleneck as one drop-in layer for a ``k×k`` conv. Without an
  activation it is exactly :class:`TuckerConv` with ranks ``(w, w)`` (and its
  factors get the Tucker variance-matched init); with one, each of the three
  convs is LeCun-initialized over its own fan-in and has its own bias, and the
  layer always runs factorized (a nonlinear block has no dense kernel).
  :meth:`from_format` builds the linear layer (``activation=None``): a
  :class:`~efficonv.Tucker2` is one linear conv.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from efficonv.nnx import Bottleneck
    >>> Bottleneck(64, 64, 3, width=16, rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 64))).shape
    (2, 8, 8, 64)

  Args:
    in_features, out_features, kernel_size: as :class:`flax.nnx.Conv`.
    width: bottleneck channels ``w`` (default ``max(1, out_features // 4)``);
      ``ranks=(R1, R2)`` may be given instead for unequal widths.
    activation: nonlinearity between the convs (default ReLU; ``None`` for
      a linear Tucker-2 layer).
    strides, padding, kernel_dilation: go to the ``k×k`` conv only.
    use_bias, dtype, param_dtype, precision, kernel_init, bias_init,
    implementation, depthwise_implementation, rngs: as :class:`TuckerConv`.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    *,
    width: int | None = None,
    ranks: int | Sequence[int] | None = None,
    activation: Callable[[Array], Array] | None = nnx.relu,
    strides: int | Sequence[int] = 1,
    padding: opt.PaddingLike = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
    use_bias: bool = True,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    precision: PrecisionLike = None,
    kernel_init: Initializer | None = None,
    bias_init: Initializer = default_bias_init,
    implementation: str = "auto",
    depthwise_implementation: str = "auto",
    rngs: nnx.Rngs,
  ):
    if width is not None and ranks is not None:
      raise ValueError(f"give width or ranks, not both (got width={width}, ranks={ranks})")
    if ranks is None:
      ranks = max(1, out_features // 4) if width is None else width
    super().__init__(
      in_features,
      out_features,
      kernel_size,
      ranks=ranks,
      strides=strides,
      padding=padding,
      kernel_dilation=kernel_dilation,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      kernel_init=kernel_init,
      bias_init=bias_init,
      implementation=implementation,
      depthwise_implementation=depthwise_implementation,
      rngs=rngs,
    )
    self.activation = activation
    if activation is None:
      self.first_bias = self.core_bias = None
      return
    init = kernel_init or default_kernel_init
    kh, kw = self.kernel_size
    r1, r2 = self.format.rank
    self.first[...] = init(rngs.params(), (in_features, r1), param_dtype)
    self.core[...] = init(rngs.params(), (kh, kw, r1, r2), param_dtype)
    self.last[...] = init(rngs.params(), (r2, out_features), param_dtype)
    self.first_bias: nnx.Param | None = nnx.Param(bias_init(rngs.params(), (r1,), param_dtype)) if use_bias else None
    self.core_bias: nnx.Param | None = nnx.Param(bias_init(rngs.params(), (r2,), param_dtype)) if use_bias else None

  def __call__(self, inputs: Array) -> Array:
    """``(N, H, W, in_features)`` → ``(N, H', W', out_features)`` (unbatched ``(H, W, in_features)`` too)."""
    if self.activation is None:
      return super().__call__(inputs)
    inputs, unbatched = batch_inputs(inputs, self.in_features)
    act = self.activation
    fmt: Tucker2 = self.format  # type: ignore[assignment]
    biases = [b[...] if b is not None else None for b in (self.first_bias, self.core_bias, self.bias)]
    inputs, fmt, biases = promote_tree((inputs, fmt, biases), self.dtype)
    pads, mode = opt.resolve_padding(
      self.padding, inputs.shape[1:3], self.kernel_size, self.strides, self.kernel_dilation
    )
    h = pointwise(inputs, fmt.first, precision=self.precision)
    h = act(_add_bias(h, biases[0]))
    # Padding after the activation: the k×k conv sees zeros, as a standalone conv would.
    h = opt.pad_input(h, pads, mode)
    h = act(_add_bias(conv_valid(h, fmt.core, self.strides, self.kernel_dilation, "xla", self.precision), biases[1]))
    y = _add_bias(pointwise(h, fmt.last, precision=self.precision), biases[2])
    return y[0] if unbatched else y

  def to_dense(self) -> Array:
    """The Tucker-2 kernel (only without ``activation``)."""
    if self.activation is not None:
      raise ValueError("to_dense needs activation=None: a nonlinear block is not one convolution")
    return super().to_dense()

  @classmethod
  def _format_kwargs(cls, fmt: Any) -> dict[str, Any]:
    # A Tucker-2 format is one linear conv: the layer built around it must be that conv, not a
    # ReLU block (whose extra biases the format does not carry).
    return {"ranks": fmt.rank, "activation": None}

  def cost_params(self) -> int:
    extra = sum(int(b.size) for b in (self.first_bias, self.core_bias) if b is not None)
    return super().cost_params() + extra


def _add_bias(h: Array, bias: Array | None) -> Array:
  return h if bias is None else h + bias.reshape(1, 1, 1, -1)
