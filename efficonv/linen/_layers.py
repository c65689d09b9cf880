"""The Linen wrappers (see :mod:`efficonv.linen`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen

from efficonv import _blocks
from efficonv import nnx as enn
from efficonv.formats import Format
from efficonv.kernels import _options as opt
from efficonv.layer_options import (
  ActivationFn,
  DepthwiseImplementation,
  Implementation,
  Initializer,
  PaddingLike,
  batch_inputs,
  bottleneck_widths,
  check_features,
  check_geometry,
  check_options,
  default_bias_init,
  default_kernel_init,
  promote_tree,
)
from efficonv.typing import Array, Dtype, PrecisionLike


def _check_stored_channels(module: linen.Module, param: str, cin: int, given_shape: Any) -> None:
  """Raises naming ``inputs`` when ``param`` was initialized for other than ``cin`` input channels.

  Checked before ``self.param``, which would raise a flax ``ScopeParamShapeError`` naming a factor instead.
  """
  if module.has_variable("params", param):
    stored: Array = module.get_variable("params", param)
    expected = stored.shape[-2] if stored.ndim == 4 else stored.shape[0]
    if expected != cin:
      raise ValueError(f"inputs must have {expected} channels in its last axis, got shape {given_shape}")


class _FactorizedConv(linen.Module):
  """Shared body: one Linen param per factor, drawn by the NNX layer's format hook and applied by ``Format.conv``."""

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: PaddingLike = "SAME"
  kernel_dilation: int | Sequence[int] = 1
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: PrecisionLike = None
  kernel_init: Initializer | None = None
  bias_init: Initializer = default_bias_init
  implementation: Implementation = "auto"
  depthwise_implementation: DepthwiseImplementation = "auto"

  # The NNX layer of the same scheme: its `_init_format` draws the factors, so both APIs initialize alike.
  nnx_layer: ClassVar[type[enn.FactorizedConv]]
  # The field holding the scheme's rank, and the other scheme fields passed to `_init_format`.
  rank_field: ClassVar[str] = "rank"
  scheme_fields: ClassVar[tuple[str, ...]] = ()

  def _init_format(self, key: jax.Array, in_features: int, kernel_size: tuple[int, int]) -> Format:
    return self.nnx_layer._init_format(
      key,
      in_features,
      self.features,
      kernel_size,
      getattr(self, self.rank_field),
      dtype=self.param_dtype,
      initializer=self.kernel_init,
      **{name: getattr(self, name) for name in self.scheme_fields},
    )

  @linen.compact
  def __call__(self, inputs: Array) -> Array:
    """``(N, H, W, C_in)`` → ``(N, H', W', features)`` (unbatched ``(H, W, C_in)`` too, as ``linen.Conv``)."""
    given_shape = getattr(inputs, "shape", None)
    inputs, unbatched = batch_inputs(inputs, None)
    cin = inputs.shape[-1]
    ks, _, _ = check_options(
      cin,
      self.features,
      self.kernel_size,
      self.strides,
      self.padding,
      self.kernel_dilation,
      self.implementation,
      self.depthwise_implementation,
    )
    format_type = self.nnx_layer.format_type
    fields = format_type._fields
    if all(self.has_variable("params", name) for name in fields):
      stored = format_type(*(self.get_variable("params", name) for name in fields))
      if stored.in_features != cin:
        raise ValueError(f"inputs must have {stored.in_features} channels in its last axis, got shape {given_shape}")
    # Each factor is drawn from its own key with the jointly matched std (see efficonv.formats.init).
    values = [self.param(name, lambda key, n=name: getattr(self._init_format(key, cin, ks), n)) for name in fields]
    fmt = format_type(*values)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    inputs, fmt, bias = promote_tree((inputs, fmt, bias), self.dtype)
    y = fmt.conv(
      inputs,
      strides=self.strides,
      padding=self.padding,
      dilation=self.kernel_dilation,
      implementation=self.implementation,
      depthwise_implementation=self.depthwise_implementation,
      precision=self.precision,
    )
    y = y if bias is None else y + bias.reshape(1, 1, 1, -1)
    return y[0] if unbatched else y


class CPConv(_FactorizedConv):
  """Linen :class:`efficonv.nnx.CPConv`: ``rank`` is the CP rank."""

  rank: int = 1
  nnx_layer: ClassVar[type[enn.FactorizedConv]] = enn.CPConv


class TuckerConv(_FactorizedConv):
  """Linen :class:`efficonv.nnx.TuckerConv`: ``rank`` is ``(R1, R2)`` or an int for both."""

  rank: int | Sequence[int] = 1
  nnx_layer: ClassVar[type[enn.FactorizedConv]] = enn.TuckerConv


class SpatialConv(_FactorizedConv):
  """Linen :class:`efficonv.nnx.SpatialConv`: ``rank`` intermediate channels."""

  rank: int = 1
  nnx_layer: ClassVar[type[enn.FactorizedConv]] = enn.SpatialConv


class SeparableConv(_FactorizedConv):
  """Linen :class:`efficonv.nnx.SeparableConv` with ``depth_multiplier``."""

  depth_multiplier: int = 1
  nnx_layer: ClassVar[type[enn.FactorizedConv]] = enn.SeparableConv
  rank_field: ClassVar[str] = "depth_multiplier"


class TTConv(_FactorizedConv):
  """Linen :class:`efficonv.nnx.TTConv`: ``rank`` (TT ranks or one int), optional ``in_modes``/``out_modes``."""

  rank: int | Sequence[int] = 1
  in_modes: Sequence[int] | None = None
  out_modes: Sequence[int] | None = None
  nnx_layer: ClassVar[type[enn.FactorizedConv]] = enn.TTConv
  scheme_fields: ClassVar[tuple[str, ...]] = ("in_modes", "out_modes")


class Bottleneck(linen.Module):
  """Linen :class:`efficonv.nnx.Bottleneck`: ``1×1 → act → k×k → act → 1×1``, input channels inferred.

  Params ``first`` ``(C_in, w1)``, ``core`` ``(kh, kw, w1, w2)``, ``last``
  ``(w2, features)`` and the biases ``first_bias``, ``core_bias`` (only with
  an activation) and ``bias``, named as in the NNX layer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from efficonv.linen import Bottleneck
    >>> layer = Bottleneck(features=32, kernel_size=3, strides=2, width=8)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 8, 8, 16)))
    >>> layer.apply(variables, jnp.ones((4, 8, 8, 16))).shape
    (4, 4, 4, 32)
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  width: int | Sequence[int] | None = None
  activation: ActivationFn | None = linen.relu
  padding: PaddingLike = "SAME"
  kernel_dilation: int | Sequence[int] = 1
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: PrecisionLike = None
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = default_bias_init

  @linen.compact
  def __call__(self, inputs: Array) -> Array:
    """``(N, H, W, C_in)`` → ``(N, H', W', features)`` (unbatched ``(H, W, C_in)`` too)."""
    given_shape = getattr(inputs, "shape", None)
    inputs, unbatched = batch_inputs(inputs, None)
    cin = inputs.shape[-1]
    check_features(features=self.features)
    ks, s, d = check_geometry(self.kernel_size, self.strides, self.padding, self.kernel_dilation)
    w1, w2 = bottleneck_widths(self.features, self.width)
    _check_stored_channels(self, "first", cin, given_shape)
    kernels = (
      self.param("first", self.kernel_init, (cin, w1), self.param_dtype),
      self.param("core", self.kernel_init, (*ks, w1, w2), self.param_dtype),
      self.param("last", self.kernel_init, (w2, self.features), self.param_dtype),
    )
    inner = self.use_bias and self.activation is not None
    biases = (
      self.param("first_bias", self.bias_init, (w1,), self.param_dtype) if inner else None,
      self.param("core_bias", self.bias_init, (w2,), self.param_dtype) if inner else None,
      self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None,
    )
    inputs, kernels, biases = promote_tree((inputs, kernels, biases), self.dtype)
    y = _blocks.bottleneck_conv(
      inputs,
      kernels,
      biases,
      activation=self.activation,
      strides=s,
      padding=self.padding,
      kernel_dilation=d,
      precision=self.precision,
    )
    return y[0] if unbatched else y


class StackedConv(linen.Module):
  """Linen :class:`efficonv.nnx.StackedConv`: small convs covering ``kernel_size``, input channels inferred.

  Params ``kernel_0 … kernel_{n-1}`` and ``bias_i`` for the small convs that
  have one (all with an activation, else only the last), in the NNX layer's
  ``kernels`` / ``biases`` order.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from efficonv.linen import StackedConv
    >>> layer = StackedConv(features=32, kernel_size=5, activation=jax.nn.relu)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 8, 8, 16)))
    >>> sorted(variables["params"]), layer.apply(variables, jnp.ones((4, 8, 8, 16))).shape
    (['bias_0', 'bias_1', 'kernel_0', 'kernel_1'], (4, 8, 8, 32))
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  small_kernel_size: int | Sequence[int] = 3
  hidden_features: int | None = None
  activation: ActivationFn | None = None
  padding: PaddingLike = "SAME"
  kernel_dilation: int | Sequence[int] = 1
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: PrecisionLike = None
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = default_bias_init

  @linen.compact
  def __call__(self, inputs: Array) -> Array:
    """``(N, H, W, C_in)`` → ``(N, H', W', features)`` (unbatched ``(H, W, C_in)`` too)."""
    given_shape = getattr(inputs, "shape", None)
    inputs, unbatched = batch_inputs(inputs, None)
    cin = inputs.shape[-1]
    check_features(features=self.features, hidden_features=self.hidden_features)
    ks, s, d = check_geometry(self.kernel_size, self.strides, self.padding, self.kernel_dilation)
    small = opt.pair(self.small_kernel_size, "small_kernel_size")
    count = _blocks.stacked_count(ks, small)
    hidden = self.features if self.hidden_features is None else self.hidden_features
    widths = _blocks.stacked_widths(cin, hidden, self.features, count)
    biased = _blocks.stacked_biased(count, self.activation)
    _check_stored_channels(self, "kernel_0", cin, given_shape)
    kernels = [
      self.param(f"kernel_{i}", self.kernel_init, (*small, widths[i], widths[i + 1]), self.param_dtype)
      for i in range(count)
    ]
    biases = [
      self.param(f"bias_{i}", self.bias_init, (widths[i + 1],), self.param_dtype)
      if self.use_bias and biased[i]
      else None
      for i in range(count)
    ]
    inputs, kernels, biases = promote_tree((inputs, kernels, biases), self.dtype)
    y = _blocks.stacked_conv(
      inputs,
      kernels,
      biases,
      activation=self.activation,
      kernel_size=ks,
      strides=s,
      padding=self.padding,
      kernel_dilation=d,
      precision=self.precision,
    )
    return y[0] if unbatched else y
