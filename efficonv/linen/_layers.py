"""The Linen wrappers (see :mod:`efficonv.linen`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import jax
import jax.numpy as jnp
from flax import linen
from flax.linen import dtypes

from efficonv import _blocks, _dense_layer, _factorized
from efficonv import nnx as enn
from efficonv.formats import Format
from efficonv.kernels import _options as opt
from efficonv.kernels.conv import conv as dense_conv
from efficonv.kernels.dense import check_layer_implementation
from efficonv.layer_options import (
  OBJECTIVES,
  ActivationFn,
  DepthwiseImplementation,
  Implementation,
  Initializer,
  Objective,
  PaddingLike,
  batch_inputs,
  bottleneck_widths,
  check_feature_group_count,
  check_features,
  check_geometry,
  check_input_dilation,
  check_options,
  check_unsupported,
  default_bias_init,
  default_kernel_init,
  dilate_input,
  restore_batch,
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
  """Shared body: one Linen param per factor, drawn by the NNX layer's format hook and applied as the NNX layer.

  The fields are :class:`flax.linen.Conv`'s (``input_dilation``, ``feature_group_count``, ``mask`` and
  ``promote_dtype`` as there; groups and a mask run the reconstructed path, see
  :class:`efficonv.nnx.FactorizedConv`) plus ``implementation``, ``depthwise_implementation`` and
  ``objective``: what ``"auto"``/``"autotune"`` optimise, ``"inference"`` (forward) or ``"training"``
  (forward and backward). Linen has no train/eval mode, so pass ``objective=`` to the call in the
  training step (``layer(x, objective="training")``), as ``deterministic`` to ``linen.Dropout``;
  the call's value overrides the field.
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: PaddingLike = "SAME"
  input_dilation: int | Sequence[int] | None = 1
  kernel_dilation: int | Sequence[int] = 1
  feature_group_count: int = 1
  use_bias: bool = True
  mask: Array | None = None
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: PrecisionLike = None
  kernel_init: Initializer | None = None
  bias_init: Initializer = default_bias_init
  promote_dtype: Any = dtypes.promote_dtype
  implementation: Implementation = "auto"
  depthwise_implementation: DepthwiseImplementation = "auto"
  objective: Objective = "inference"

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
  def __call__(self, inputs: Array, objective: Objective | None = None) -> Array:
    """``(*batch, H, W, C_in)`` → ``(*batch, H', W', features)``, any number of batch axes (as ``linen.Conv``).

    Args:
      inputs: the input; its channels fix ``C_in`` at ``init``.
      objective: overrides the field for this call (``"training"`` in a training step).
    """
    objective = self.objective if objective is None else objective
    if objective not in OBJECTIVES:
      raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    given_shape = getattr(inputs, "shape", None)
    x, batch_shape = batch_inputs(inputs, None)
    cin = x.shape[-1]
    ks, s, d = check_options(
      cin,
      self.features,
      self.kernel_size,
      self.strides,
      self.padding,
      self.kernel_dilation,
      self.implementation,
      self.depthwise_implementation,
    )
    di = check_input_dilation(self.input_dilation, self.padding)
    groups = check_feature_group_count(self.feature_group_count, in_features=cin, out_features=self.features)
    _factorized.check_reconstructed_only(self.implementation, groups, self.mask, None)
    format_type = self.nnx_layer.format_type
    fields = format_type._fields
    if all(self.has_variable("params", name) for name in fields):
      stored = format_type(*(self.get_variable("params", name) for name in fields))
      if stored.in_features * groups != cin:
        raise ValueError(
          f"inputs must have {stored.in_features * groups} channels in its last axis, got shape {given_shape}"
        )
    # Each factor is drawn from its own key with the jointly matched std (see efficonv.formats.init).
    values = [
      self.param(name, lambda key, n=name: getattr(self._init_format(key, cin // groups, ks), n)) for name in fields
    ]
    fmt = format_type(*values)
    _factorized.check_mask(self.mask, fmt.kernel_shape)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    y = _factorized.layer_conv(
      fmt,
      x,
      bias,
      strides=s,
      padding=self.padding,
      input_dilation=di,
      kernel_dilation=d,
      feature_group_count=groups,
      mask=self.mask,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      precision=self.precision,
      promote=lambda arrays, dtype: tuple(self.promote_dtype(*arrays, dtype=dtype)),
      preferred_element_type=None,
      implementation=self.implementation,
      depthwise_implementation=self.depthwise_implementation,
      objective=objective,
    )
    return restore_batch(y, batch_shape)


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
  input_dilation: int | Sequence[int] | None = 1
  kernel_dilation: int | Sequence[int] = 1
  feature_group_count: int = 1
  use_bias: bool = True
  mask: Array | None = None
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: PrecisionLike = None
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = default_bias_init
  promote_dtype: Any = dtypes.promote_dtype

  @linen.compact
  def __call__(self, inputs: Array) -> Array:
    """``(*batch, H, W, C_in)`` → ``(*batch, H', W', features)``, any number of batch axes."""
    given_shape = getattr(inputs, "shape", None)
    x, batch_shape = batch_inputs(inputs, None)
    cin = x.shape[-1]
    check_features(features=self.features)
    ks, s, d = check_geometry(self.kernel_size, self.strides, self.padding, self.kernel_dilation)
    x = dilate_input(x, check_input_dilation(self.input_dilation, self.padding))
    check_unsupported(
      "Bottleneck",
      "its three convs have no one kernel to group or mask",
      feature_group_count=(self.feature_group_count, 1),
      mask=(self.mask, None),
    )
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
    x, *promoted = self.promote_dtype(x, *kernels, *biases, dtype=self.dtype)
    y = _blocks.bottleneck_conv(
      x,
      (promoted[0], promoted[1], promoted[2]),
      (promoted[3], promoted[4], promoted[5]),
      activation=self.activation,
      strides=s,
      padding=self.padding,
      kernel_dilation=d,
      precision=self.precision,
    )
    return restore_batch(y, batch_shape)


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
  input_dilation: int | Sequence[int] | None = 1
  kernel_dilation: int | Sequence[int] = 1
  feature_group_count: int = 1
  use_bias: bool = True
  mask: Array | None = None
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: PrecisionLike = None
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = default_bias_init
  promote_dtype: Any = dtypes.promote_dtype

  @linen.compact
  def __call__(self, inputs: Array) -> Array:
    """``(*batch, H, W, C_in)`` → ``(*batch, H', W', features)``, any number of batch axes."""
    given_shape = getattr(inputs, "shape", None)
    x, batch_shape = batch_inputs(inputs, None)
    cin = x.shape[-1]
    check_features(features=self.features, hidden_features=self.hidden_features)
    ks, s, d = check_geometry(self.kernel_size, self.strides, self.padding, self.kernel_dilation)
    x = dilate_input(x, check_input_dilation(self.input_dilation, self.padding))
    check_unsupported(
      "StackedConv",
      "its small convs have no one kernel to group or mask",
      feature_group_count=(self.feature_group_count, 1),
      mask=(self.mask, None),
    )
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
    x, *promoted = self.promote_dtype(x, *kernels, *biases, dtype=self.dtype)
    y = _blocks.stacked_conv(
      x,
      promoted[:count],
      promoted[count:],
      activation=self.activation,
      kernel_size=ks,
      strides=s,
      padding=self.padding,
      kernel_dilation=d,
      precision=self.precision,
    )
    return restore_batch(y, batch_shape)


class Conv(linen.Conv):
  """Linen :class:`efficonv.nnx.Conv`: :class:`flax.linen.Conv` whose 2-D conv runs :func:`efficonv.kernels.conv`.

  Same fields, the same params (``kernel``, ``bias``) and the same outputs (up to float rounding) as
  ``linen.Conv``, plus ``implementation`` (``"auto"``, ``"autotune"`` or one of
  :data:`efficonv.kernels.DENSE_IMPLEMENTATIONS`). What efficonv's conv does not cover runs on
  ``linen.Conv``'s own ``__call__``, unchanged: 1-D and 3-D kernels, ``mask``, ``input_dilation`` other
  than 1, a custom ``conv_general_dilated`` and paddings outside :func:`efficonv.kernels.resolve_padding`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import linen
    >>> from efficonv.linen import Conv
    >>> x = jnp.ones((2, 4, 4, 8))
    >>> variables = linen.Conv(4, (3, 3)).init(jax.random.key(0), x)
    >>> fast = Conv(4, (3, 3), implementation="im2col")
    >>> bool(jnp.allclose(fast.apply(variables, x), linen.Conv(4, (3, 3)).apply(variables, x), atol=1e-5))
    True
    >>> fast.implementation_for(x.shape)
    ('im2col', 'forced by the caller')
  """

  implementation: str = "auto"

  def __post_init__(self) -> None:
    check_layer_implementation(self.implementation)
    super().__post_init__()

  def _kernel_size(self) -> tuple[int, ...]:
    return (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)

  def _fallback_reason(self, input_shape: Sequence[int]) -> str | None:
    return _dense_layer.fallback_reason(
      input_shape,
      kernel_size=self._kernel_size(),
      strides=self.strides,
      padding=self.padding,
      input_dilation=self.input_dilation,
      kernel_dilation=self.kernel_dilation,
      mask=self.mask,
      custom_conv=self.conv_general_dilated is not None or self.conv_general_dilated_cls is not None,
    )

  def implementation_for(
    self, input_shape: Sequence[int], dtype: Any = None, backend: str | None = None
  ) -> tuple[str, str]:
    """The formulation a call on ``input_shape`` runs, and why (as :meth:`efficonv.nnx.Conv.implementation_for`).

    Args:
      input_shape: ``(*batch, H, W, C_in)``, as the layer is called.
      dtype: the input's dtype; ``param_dtype`` when ``None``.
      backend: a JAX platform name; the default backend when ``None``.

    Returns:
      ``(name, reason)``, ``"xla"`` with a reason naming ``linen.Conv`` where its own ``__call__`` runs.
    """
    why = self._fallback_reason(input_shape)
    if why is not None:
      return "xla", f"linen.Conv's own __call__ ({why})"
    groups = check_feature_group_count(self.feature_group_count, in_features=input_shape[-1])
    return _dense_layer.implementation_for(
      input_shape,
      (*self._kernel_size(), input_shape[-1] // groups, self.features),
      implementation=self.implementation,
      strides=self.strides,
      padding=self.padding,
      kernel_dilation=self.kernel_dilation,
      feature_group_count=groups,
      dtype=self.dtype or jnp.result_type(dtype or self.param_dtype, self.param_dtype),
      precision=self.precision,
      backend=backend,
    )

  @linen.compact
  def __call__(self, inputs: Array) -> Array:
    """``(*batch, H, W, C_in)`` → ``(*batch, H', W', features)`` (see :meth:`flax.linen.Conv.__call__`)."""
    if self._fallback_reason(inputs.shape) is not None:
      return super().__call__(inputs)
    x, batch_shape = batch_inputs(inputs, None)
    groups = check_feature_group_count(self.feature_group_count, in_features=x.shape[-1])
    kernel_shape = (*self._kernel_size(), x.shape[-1] // groups, self.features)
    kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    # Promotion keeps the arrays (flax types its result as optional arrays).
    x, kernel, bias = cast(tuple[Array, Array, Any], tuple(self.promote_dtype(x, kernel, bias, dtype=self.dtype)))
    implementation = self.implementation
    if implementation == "autotune":  # measured once per shape (cached), also while an outer jit traces
      implementation, _ = self.implementation_for(x.shape, x.dtype)
    y = dense_conv(
      x,
      kernel,
      strides=_dense_layer.broadcast(self.strides, 2),
      padding=self.padding,
      dilation=_dense_layer.broadcast(self.kernel_dilation, 2),
      feature_group_count=groups,
      precision=self.precision,
      implementation=implementation,
    )
    y = y if bias is None else y + bias.reshape(1, 1, 1, -1)
    return restore_batch(y, batch_shape)
