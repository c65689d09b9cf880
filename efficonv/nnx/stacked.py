"""``StackedConv``: several small convs covering one large receptive field."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from efficonv import _blocks
from efficonv.kernels import _options as opt
from efficonv.kernels.sharding import data_parallel
from efficonv.layer_options import (
  ActivationFn,
  Initializer,
  PaddingLike,
  batch_inputs,
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


class StackedConv(nnx.Module):
  """``n`` small ``k_s×k_s`` convs in a row, with the receptive field of one ``k×k``.

  Two 3×3 replace a 5×5 (``18·C²`` instead of ``25·C²`` MACs per pixel),
  three a 7×7. Padding is resolved against the full ``k×k`` kernel and applied
  once to the input; every small conv then runs ``VALID`` and the last one
  takes the stride. So the layer has exactly the output geometry of the
  ``k×k`` conv it replaces, for every padding mode, and without
  ``activation`` it *is* a ``k×k`` conv (see :meth:`to_dense`).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from efficonv.nnx import StackedConv
    >>> layer = StackedConv(16, 32, 5, activation=nnx.relu, rngs=nnx.Rngs(0))
    >>> layer.num_layers, layer(jnp.ones((2, 8, 8, 16))).shape
    (2, (2, 8, 8, 32))

  Args:
    in_features: input channels.
    out_features: output channels.
    kernel_size: the receptive field ``k`` (or ``(kh, kw)``) to cover.
    strides: int or ``(sh, sw)``; taken by the last small conv.
    small_kernel_size: size of each small conv (default 3).
    hidden_features: channels between the small convs (default ``out_features``).
    activation: applied between the small convs (not after the last);
      ``None`` keeps the layer linear.
    padding, input_dilation, kernel_dilation, use_bias, dtype, param_dtype, precision,
    kernel_init, bias_init: as :class:`flax.nnx.Conv`; each small conv is
      LeCun-initialized over its own fan-in (what a deep stack with
      nonlinearities needs). With an activation, every small conv has a bias;
      without, only the last (intermediate biases would make it affine in a
      way no single conv is). An ``input_dilation`` above 1 takes an explicit
      ``padding``, as in ``nnx.Conv``.
    feature_group_count, mask, preferred_element_type: ``nnx.Conv``'s, taken so
      that its keywords pass; only their defaults (1, ``None``, ``None``): the
      stack has no one kernel to group, mask or pass the element type to.
    promote_dtype: as ``nnx.Conv``'s, called on one tuple
      ``(inputs, *kernels, *biases)`` (absent biases ``None``).
    rngs: random number streams.

  Raises:
    ValueError: naming ``kernel_size``/``small_kernel_size`` when
      ``k - 1`` is not a multiple of ``k_s - 1``; naming ``feature_group_count``,
      ``mask`` or ``preferred_element_type`` when not at their defaults.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    *,
    small_kernel_size: int | Sequence[int] = 3,
    hidden_features: int | None = None,
    activation: ActivationFn | None = None,
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
    check_features(in_features=in_features, out_features=out_features, hidden_features=hidden_features)
    ks, s, d = check_geometry(kernel_size, strides, padding, kernel_dilation)
    self.input_dilation = check_input_dilation(input_dilation, padding)
    check_unsupported(
      "StackedConv",
      "its small convs have no one kernel to group, mask or pass preferred_element_type to",
      feature_group_count=(feature_group_count, 1),
      mask=(mask, None),
      preferred_element_type=(preferred_element_type, None),
    )
    self.promote_dtype = check_promote_dtype(promote_dtype)
    small = opt.pair(small_kernel_size, "small_kernel_size")
    self.num_layers = _blocks.stacked_count(ks, small)
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size, self.small_kernel_size = ks, small
    self.hidden_features = out_features if hidden_features is None else hidden_features
    self.activation = activation
    self.strides, self.padding, self.kernel_dilation = s, padding, d
    self.use_bias, self.dtype, self.param_dtype, self.precision = use_bias, dtype, param_dtype, precision
    widths = _blocks.stacked_widths(in_features, self.hidden_features, out_features, self.num_layers)
    biased = _blocks.stacked_biased(self.num_layers, activation)
    self.kernels = nnx.List(
      [
        nnx.Param(kernel_init(rngs.params(), (*small, widths[i], widths[i + 1]), param_dtype))
        for i in range(self.num_layers)
      ]
    )
    self.biases = nnx.List(
      [
        nnx.Param(bias_init(rngs.params(), (widths[i + 1],), param_dtype)) if use_bias and biased[i] else None
        for i in range(self.num_layers)
      ]
    )

  @property
  def stack_shape(self) -> tuple[int, ...]:
    """The leading axes of a stack of these layers (``nnx.vmap`` over the constructor); ``()`` for one layer."""
    return leading_stack(self.kernels[0].shape, 4)

  def __call__(self, inputs: Array) -> Array:
    """``(*batch, H, W, in_features)`` → ``(*batch, H', W', out_features)``, any number of batch axes."""
    check_one_layer(self, self.stack_shape, "calling it")
    x, batch_shape = batch_inputs(inputs, self.in_features)
    x = dilate_input(x, self.input_dilation)
    kernels = [k[...] for k in self.kernels]
    biases = [b[...] if b is not None else None for b in self.biases]
    x, *promoted = self.promote_dtype((x, *kernels, *biases), dtype=self.dtype)
    # On an Explicit mesh: data parallel over the input's batch sharding, the kernels gathered.
    x, promoted = data_parallel(x, promoted)
    y = _blocks.stacked_conv(
      x,
      promoted[: self.num_layers],
      promoted[self.num_layers :],
      activation=self.activation,
      kernel_size=self.kernel_size,
      strides=self.strides,
      padding=self.padding,
      kernel_dilation=self.kernel_dilation,
      precision=self.precision,
    )
    return restore_batch(y, batch_shape)

  def to_dense(self) -> Array:
    """The single ``k×k`` HWIO kernel equal to the stack (only without ``activation``).

    Raises:
      ValueError: when the layer has an activation (it is not one conv then).
    """
    if self.activation is not None:
      raise ValueError("to_dense needs activation=None: a nonlinear stack is not one convolution")
    check_one_layer(self, self.stack_shape, "to_dense()")
    return _blocks.stacked_to_dense([k[...] for k in self.kernels], self.kernel_size, self.param_dtype)

  def cost_params(self) -> int:
    """Parameters of all small convs and biases."""
    return sum(int(k.size) for k in self.kernels) + sum(int(b.size) for b in self.biases if b is not None)

  def cost_macs(self, input_shape: Sequence[int]) -> int:
    """MACs of the small convs on ``input_shape`` (bias adds excluded; every layer's, for a stack of layers)."""
    n = len(self.stack_shape)
    return math.prod(self.stack_shape) * _blocks.stacked_macs(
      input_shape,
      [k.shape[n:] for k in self.kernels],
      kernel_size=self.kernel_size,
      strides=self.strides,
      padding=self.padding,
      kernel_dilation=self.kernel_dilation,
    )
