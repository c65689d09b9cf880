"""``Bottleneck``: 1×1 squeeze, k×k map, 1×1 expand, with nonlinearities between."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from efficonv import _blocks
from efficonv.formats.tucker2 import Tucker2
from efficonv.kernels.sharding import data_parallel
from efficonv.layer_options import (
  ActivationFn,
  Initializer,
  PaddingLike,
  batch_inputs,
  bottleneck_widths,
  check_features,
  check_geometry,
  check_input_dilation,
  check_one_layer,
  check_promote_dtype,
  check_unsupported,
  default_bias_init,
  default_kernel_init,
  dilate_input,
  restore_batch,
)
from efficonv.layer_options import stack_shape as leading_stack
from efficonv.nnx._base import PromoteDtype
from efficonv.typing import Array, Dtype, PrecisionLike


class Bottleneck(nnx.Module):
  """Bottleneck block: ``1×1 (C_in→w1) → act → k×k (w1→w2) → act → 1×1 (w2→C_out)``.

  The ResNet bottleneck as one drop-in layer for a ``k×k`` conv. Each of the
  three convs is initialized over its own fan-in (LeCun normal by default,
  what a block with nonlinearities needs) and always runs as its own conv:
  the block has no dense or depthwise alternative to choose, so it takes no
  ``implementation`` and has no ``plan``. The ``k×k`` conv takes the strides,
  padding and dilation.

  ``activation=None`` keeps the three-conv structure and its initialization
  but makes the block linear; then only the last conv has a bias (intermediate
  biases would make it affine in a way no single conv is), the block equals one
  ``k×k`` conv, and :meth:`to_dense` gives its kernel. For a linear Tucker-2
  layer with a variance-matched initialization and the choice between the
  factorized and the reconstructed path, use :class:`TuckerConv`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from efficonv.nnx import Bottleneck
    >>> layer = Bottleneck(64, 64, 3, 2, width=16, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 8, 8, 64))).shape
    (2, 4, 4, 64)
    >>> layer.cost_macs((2, 8, 8, 64)) == 2 * (64 * 64 * 16 + 16 * (9 * 16 * 16 + 16 * 64))
    True

  Args:
    in_features: input channels ``C_in``.
    out_features: output channels ``C_out``.
    kernel_size: ``k`` or ``(kh, kw)`` of the middle conv.
    strides: int or ``(sh, sw)``; applied to the ``k×k`` conv.
    width: bottleneck channels: an int ``w`` for both (default
      ``max(1, out_features // 4)``), or ``(w1, w2)`` for the ``k×k`` conv's
      input and output channels.
    activation: nonlinearity after the first two convs (default ReLU);
      ``None`` for a linear block.
    padding: ``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, ``"REFLECT"``, int or
      ``((lo, hi), (lo, hi))``, for the ``k×k`` conv.
    input_dilation: int or ``(dh, dw)``, as ``nnx.Conv``: the block runs on the input with
      ``d - 1`` zeros between pixels (above 1 with an explicit ``padding``, as there).
    kernel_dilation: int or ``(dh, dw)``, for the ``k×k`` conv.
    feature_group_count: must be 1 (``nnx.Conv``'s argument, taken so that its
      keywords pass; the block has no one kernel to group).
    use_bias: give the convs biases (all three with an activation, else only the last).
    mask: must be ``None`` (no one kernel to mask).
    dtype: computation dtype (inferred from inputs and params when ``None``).
    param_dtype: parameter dtype.
    precision: XLA precision of the matmuls/convs.
    kernel_init: initializer of each conv's kernel (fan-in is its own).
    bias_init: bias initializer.
    promote_dtype: as ``nnx.Conv``'s, called on one tuple
      ``(inputs, first, core, last, first_bias, core_bias, bias)`` (absent biases ``None``).
    preferred_element_type: must be ``None`` (three convs, not one to pass it to).
    rngs: random number streams.

  Raises:
    ValueError: naming ``feature_group_count``, ``mask`` or ``preferred_element_type``
      when set to other than ``nnx.Conv``'s default.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    *,
    width: int | Sequence[int] | None = None,
    activation: ActivationFn | None = nnx.relu,
    padding: PaddingLike = "SAME",
    input_dilation: int | Sequence[int] | None = 1,
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    use_bias: bool = True,
    mask: Array | None = None,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    precision: PrecisionLike = None,
    kernel_init: Initializer = default_kernel_init,
    bias_init: Initializer = default_bias_init,
    promote_dtype: PromoteDtype = dtypes.promote_dtype,
    preferred_element_type: Dtype | None = None,
    rngs: nnx.Rngs,
  ):
    check_features(in_features=in_features, out_features=out_features)
    ks, s, d = check_geometry(kernel_size, strides, padding, kernel_dilation)
    self.input_dilation = check_input_dilation(input_dilation, padding)
    check_unsupported(
      "Bottleneck",
      "its three convs have no one kernel to group, mask or pass preferred_element_type to",
      feature_group_count=(feature_group_count, 1),
      mask=(mask, None),
      preferred_element_type=(preferred_element_type, None),
    )
    self.promote_dtype = check_promote_dtype(promote_dtype)
    w1, w2 = bottleneck_widths(out_features, width)
    self.in_features, self.out_features, self.kernel_size, self.width = in_features, out_features, ks, (w1, w2)
    self.strides, self.padding, self.kernel_dilation = s, padding, d
    self.activation = activation
    self.use_bias, self.dtype, self.param_dtype, self.precision = use_bias, dtype, param_dtype, precision
    self.first = nnx.Param(kernel_init(rngs.params(), (in_features, w1), param_dtype))
    self.core = nnx.Param(kernel_init(rngs.params(), (*ks, w1, w2), param_dtype))
    self.last = nnx.Param(kernel_init(rngs.params(), (w2, out_features), param_dtype))
    inner = use_bias and activation is not None
    self.first_bias = nnx.Param(bias_init(rngs.params(), (w1,), param_dtype)) if inner else None
    self.core_bias = nnx.Param(bias_init(rngs.params(), (w2,), param_dtype)) if inner else None
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias else None

  @property
  def factors(self) -> Tucker2:
    """The three kernels as a :class:`~efficonv.Tucker2` (its ``to_dense`` is the block's kernel only when linear)."""
    return Tucker2(self.first[...], self.core[...], self.last[...])

  @property
  def stack_shape(self) -> tuple[int, ...]:
    """The leading axes of a stack of these layers (``nnx.vmap`` over the constructor); ``()`` for one layer."""
    return leading_stack(self.first.shape, 2)

  def __call__(self, inputs: Array) -> Array:
    """``(*batch, H, W, in_features)`` → ``(*batch, H', W', out_features)``, any number of batch axes."""
    check_one_layer(self, self.stack_shape, "calling it")
    x, batch_shape = batch_inputs(inputs, self.in_features)
    x = dilate_input(x, self.input_dilation)
    arrays = (self.first, self.core, self.last, self.first_bias, self.core_bias, self.bias)
    x, *promoted = self.promote_dtype((x, *(a[...] if a is not None else None for a in arrays)), dtype=self.dtype)
    # On an Explicit mesh: data parallel over the input's batch sharding, the kernels gathered.
    x, promoted = data_parallel(x, promoted)
    y = _blocks.bottleneck_conv(
      x,
      (promoted[0], promoted[1], promoted[2]),
      (promoted[3], promoted[4], promoted[5]),
      activation=self.activation,
      strides=self.strides,
      padding=self.padding,
      kernel_dilation=self.kernel_dilation,
      precision=self.precision,
    )
    return restore_batch(y, batch_shape)

  def to_dense(self) -> Array:
    """The single ``k×k`` HWIO kernel equal to the block (only with ``activation=None``).

    Raises:
      ValueError: when the block has an activation (it is not one conv then).
    """
    if self.activation is not None:
      raise ValueError("to_dense needs activation=None: a nonlinear block is not one convolution")
    check_one_layer(self, self.stack_shape, "to_dense()")
    return self.factors.to_dense()

  def cost_params(self) -> int:
    """Parameters of the three kernels and their biases."""
    params = (self.first, self.core, self.last, self.first_bias, self.core_bias, self.bias)
    return sum(int(p.size) for p in params if p is not None)

  def cost_macs(self, input_shape: Sequence[int]) -> int:
    """MACs of the three convs on ``input_shape`` (bias adds and activations excluded; every block's, for a stack)."""
    k = len(self.stack_shape)
    return math.prod(self.stack_shape) * _blocks.bottleneck_macs(
      input_shape,
      (self.first.shape[k:], self.core.shape[k:], self.last.shape[k:]),
      strides=self.strides,
      padding=self.padding,
      kernel_dilation=self.kernel_dilation,
    )
