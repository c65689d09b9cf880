"""The shared body of efficonv's factorized NNX convolution layers."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from efficonv import _factorized, schemes
from efficonv.convert import conv_kernel, conv_padding
from efficonv.formats import Format
from efficonv.kernels.sharding import with_out_sharding
from efficonv.layer_options import (
  OBJECTIVES,
  DepthwiseImplementation,
  Implementation,
  Initializer,
  Objective,
  PaddingLike,
  batch_inputs,
  check_feature_group_count,
  check_input_dilation,
  check_one_layer,
  check_options,
  check_promote_dtype,
  default_bias_init,
  restore_batch,
)
from efficonv.layer_options import stack_shape as leading_stack
from efficonv.nnx import _metadata
from efficonv.planning import Plan
from efficonv.typing import Array, Dtype, PrecisionLike

# nnx.Conv's promote_dtype argument: (arrays tuple, *, dtype) -> arrays tuple.
PromoteDtype = Callable[..., Any]


def set_objective(model: nnx.Module, objective: Objective) -> int:
  """Sets what ``implementation="auto"``/``"autotune"`` optimise in every factorized layer of ``model``.

  ``model.train()`` and ``model.eval()`` (flax's mode switches) do the same: they set ``deterministic``,
  which every factorized layer ties to its ``objective`` (``False``: ``"training"``, ``True``:
  ``"inference"``), as does ``nnx.view(model, deterministic=...)``. This function sets only the objective.

  ``"inference"`` (the default of every layer) picks the path with the fastest forward pass;
  ``"training"`` the fastest forward and backward pass. They differ where a path has a slow
  backward: on CPU, a separable conv with depth multiplier 4 runs faster factorized in inference
  and faster reconstructed in training. The attribute is static, so call this before
  :func:`flax.nnx.split` / :func:`flax.nnx.jit` traces the model.

  Args:
    model: any NNX module; nested factorized layers are found with :func:`flax.nnx.iter_modules`.
    objective: ``"inference"`` or ``"training"``.

  Returns:
    The number of layers set.

  Example:
    >>> from flax import nnx
    >>> from efficonv.nnx import CPConv, set_objective
    >>> layer = CPConv(8, 8, (3, 3), rank=2, rngs=nnx.Rngs(0))
    >>> set_objective(layer, "training")
    1
    >>> layer.plan((1, 8, 8, 8)).reason.startswith("auto on cpu (training)")
    True
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
  count = 0
  for _, module in nnx.iter_modules(model):
    if isinstance(module, FactorizedConv):
      module.objective = objective
      count += 1
  return count


class FactorizedConv(nnx.Module):
  """Base class: a conv layer whose kernel is held as a factor :class:`~efficonv.Format`.

  The constructor takes :class:`flax.nnx.Conv`'s arguments, in its order,
  plus the scheme's ``rank``; a subclass sets ``format_type`` and draws its
  factors in :meth:`_init_format`, and declares its own ``__init__`` only
  when it takes other scheme arguments (see :class:`~efficonv.nnx.TTConv`).
  The layer stores each factor as an :class:`flax.nnx.Param` named like the
  format's field (lists of factors in :class:`flax.nnx.List`), so optax,
  ``nnx.state`` filters and checkpoints see ordinary parameters.

  Args:
    in_features: input channels ``C_in``.
    out_features: output channels ``C_out``.
    kernel_size: ``k`` or ``(kh, kw)``.
    strides: int or ``(sh, sw)``; applied to the spatial steps only.
    rank: the scheme's rank (an int, or a tuple where the scheme has several; NumPy and
      0-d JAX integers count as ints, floats and bools are refused).
    padding: ``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, ``"REFLECT"``, int or ``((lo, hi), (lo, hi))``.
    input_dilation: int or ``(dh, dw)``: ``d - 1`` zeros between input pixels, as
      ``nnx.Conv`` (a transposed conv); above 1 it takes an explicit padding, as there.
      Both paths run it.
    kernel_dilation: int or ``(dh, dw)``.
    feature_group_count: channel groups, as ``nnx.Conv``: the format holds the kernel
      ``(kh, kw, C_in // groups, C_out)`` and the layer runs reconstructed (a grouped
      dense conv); the factorized sequence has no grouped form.
    use_bias: add a bias to the output.
    mask: an array of the kernel's shape multiplied into the reconstructed kernel, as
      ``nnx.Conv``; the layer then runs reconstructed.
    dtype: computation dtype (inferred from inputs and params when ``None``).
    param_dtype: parameter dtype.
    precision: XLA precision of the matmuls/convs.
    kernel_init: the initializer of the dense kernel, as for ``nnx.Conv``:
      the factors are drawn so that the reconstructed kernel has the variance
      of its draw (``None``: LeCun normal's, ``nnx.Conv``'s default; see
      :func:`efficonv.formats.init.init_factors`). It may be wrapped by
      :func:`flax.nnx.with_partitioning` (names for the dense axes ``(kh, kw,
      C_in, C_out)``, moved onto the factors as ``kernel_metadata``'s).
    bias_init: bias initializer.
    promote_dtype: as ``nnx.Conv``'s, ``promote_dtype(arrays, dtype=dtype)`` on one tuple:
      ``(inputs, kernel, bias)`` on the reconstructed path (the dense kernel, as ``nnx.Conv``),
      ``(inputs, *factors, bias)`` on the factorized path (:meth:`efficonv.Format.arrays`).
    preferred_element_type: passed to the reconstructed path's XLA conv, as ``nnx.Conv``;
      the layer then runs reconstructed.
    implementation: ``"auto"``, ``"autotune"``, ``"factorized"`` or ``"reconstructed"``;
      ``"factorized"`` is refused with ``feature_group_count > 1``, ``mask`` or
      ``preferred_element_type``.
    depthwise_implementation: ``"auto"``, ``"shift"`` or ``"xla"``.
    rngs: random number streams.
    kernel_metadata: metadata of the dense kernel, as for ``nnx.Conv``, set
      on every factor; its sharding (``out_sharding``, one name per dense axis
      ``(kh, kw, C_in, C_out)``) goes to the factor axes along those dense axes
      (:meth:`efficonv.Format.factor_axes`), rank and mode axes unsharded.
    bias_metadata: metadata of the bias, as for ``nnx.Conv``.
    factor_metadata: per-factor metadata over ``kernel_metadata``'s, keyed by
      factor name (the format's fields, e.g. ``{"first": {"out_sharding":
      (None, "model")}}`` to shard CP's rank axis); a list of factors (TT's
      ``cores``) takes one mapping for all or one per array. On an Explicit
      mesh a sharding is the factor's storage layout: the layer gathers the
      factors and runs data parallel (:mod:`efficonv.kernels.sharding`).
    **scheme_args: the subclass's other scheme arguments, passed to :meth:`_init_format`.

  Inputs are ``(*batch, H, W, C_in)`` with any number of batch axes, as ``nnx.Conv``.

  Training and inference: ``implementation="auto"``/``"autotune"`` choose the path that is fastest
  for :attr:`objective`, ``"inference"`` (forward pass, the default) or ``"training"`` (forward and
  backward). It follows flax's mode switches: ``model.train()`` sets ``"training"``,
  ``model.eval()`` ``"inference"`` (through :attr:`deterministic`, the attribute they set), and
  :func:`set_objective` sets it directly. The objective is static: switch before
  :func:`flax.nnx.jit` traces (a switch retraces, as for ``nnx.Dropout``).
  """

  format_type: ClassVar[type[Format]]

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    *,
    rank: int | Sequence[int],
    padding: PaddingLike = "SAME",
    input_dilation: int | Sequence[int] | None = 1,
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    use_bias: bool = True,
    mask: Array | None = None,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    precision: PrecisionLike = None,
    kernel_init: Initializer | None = None,
    bias_init: Initializer = default_bias_init,
    promote_dtype: PromoteDtype = dtypes.promote_dtype,
    preferred_element_type: Dtype | None = None,
    implementation: Implementation = "auto",
    depthwise_implementation: DepthwiseImplementation = "auto",
    rngs: nnx.Rngs,
    kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
    bias_metadata: Mapping[str, Any] = MappingProxyType({}),
    factor_metadata: Mapping[str, Any] = MappingProxyType({}),
    **scheme_args: Any,
  ):
    ks, s, d = check_options(
      in_features,
      out_features,
      kernel_size,
      strides,
      padding,
      kernel_dilation,
      implementation,
      depthwise_implementation,
    )
    di = check_input_dilation(input_dilation, padding)
    groups = check_feature_group_count(feature_group_count, in_features=in_features, out_features=out_features)
    check_promote_dtype(promote_dtype)
    _factorized.check_reconstructed_only(implementation, groups, mask, preferred_element_type)
    # With groups the format holds nnx.Conv's grouped kernel (kh, kw, C_in // groups, C_out).
    dense_metadata = dict(kernel_metadata)
    initializer = None if kernel_init is None else _metadata.unboxed(kernel_init, dense_metadata)
    fmt = self._init_format(
      rngs.params(),
      in_features // groups,
      out_features,
      ks,
      rank,
      dtype=param_dtype,
      initializer=initializer,
      **scheme_args,
    )
    _factorized.check_mask(mask, fmt.kernel_shape)
    self.in_features = in_features
    self.out_features = fmt.out_features
    self.kernel_size = fmt.kernel_size
    self.strides = s
    self.padding = padding
    self.input_dilation = di
    self.kernel_dilation = d
    self.feature_group_count = groups
    self.use_bias = use_bias
    self.mask = mask
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision
    self.promote_dtype = promote_dtype
    self.preferred_element_type = preferred_element_type
    self.implementation: Implementation = implementation
    self.depthwise_implementation: DepthwiseImplementation = depthwise_implementation
    # What "auto"/"autotune" optimise; see set_objective and deterministic.
    self.objective: Objective = "inference"
    metadata = iter(_metadata.factor_metadata(fmt, dense_metadata, factor_metadata))
    for name in fmt._fields:
      value = getattr(fmt, name)
      if isinstance(value, tuple):
        setattr(self, name, nnx.List([nnx.Param(jnp.asarray(v, param_dtype), **next(metadata)) for v in value]))
      else:
        setattr(self, name, nnx.Param(jnp.asarray(value, param_dtype), **next(metadata)))
    self.bias: nnx.Param | None = (
      nnx.Param(bias_init(rngs.params(), (fmt.out_features,), param_dtype), **bias_metadata) if use_bias else None
    )

  @classmethod
  def _init_format(
    cls,
    key: jax.Array,
    in_features: int,
    out_features: int,
    kernel_size: tuple[int, int],
    rank: Any,
    *,
    dtype: Dtype,
    initializer: Initializer | None,
    **scheme_args: Any,
  ) -> Format:
    """Draws this scheme's factors (the per-scheme hook of the constructor; the Linen layers call it too).

    The default is the format's own :meth:`efficonv.Format.init`, which validates the rank against the
    scheme's range and matches LeCun's variance.

    Args:
      key: PRNG key.
      in_features, out_features, kernel_size: the conv's shape (``kernel_size`` a pair).
      rank: the constructor's ``rank``.
      dtype: the parameter dtype.
      initializer: ``kernel_init``, the dense kernel's initializer (``None``: LeCun normal's variance).
      **scheme_args: the scheme's other arguments (TT: ``in_modes``, ``out_modes``).

    Returns:
      The format.
    """
    return cls.format_type.init(
      key, in_features, out_features, kernel_size, rank, dtype=dtype, initializer=initializer, **scheme_args
    )

  @property
  def format(self) -> Format:
    """The current factors as a format object (in ``param_dtype``)."""
    values = []
    for name in self.format_type._fields:
      attr = getattr(self, name)
      values.append(tuple(p[...] for p in attr) if isinstance(attr, nnx.List) else attr[...])
    return self.format_type(*values)

  @property
  def stack_shape(self) -> tuple[int, ...]:
    """The leading axes of a stack of these layers (``nnx.vmap`` over the constructor); ``()`` for one layer."""
    fmt = self.format
    own = fmt.factor_shapes(fmt.kernel_shape, fmt.rank, **{k: getattr(fmt, k) for k in fmt.option_names})
    return leading_stack(fmt.arrays()[0].shape, len(own[0]))

  def to_dense(self) -> Array:
    """The dense HWIO kernel the layer currently represents.

    Raises:
      ValueError: for a stack of layers (:attr:`stack_shape`).
    """
    check_one_layer(self, self.stack_shape, "to_dense()")
    return self.format.to_dense()

  @property
  def deterministic(self) -> bool:
    """``objective == "inference"``: the flag flax's ``train()``/``eval()`` set on every module that has it.

    ``model.train()`` sets ``deterministic=False`` (here: ``objective="training"``), ``model.eval()``
    ``True`` (``"inference"``), as they switch ``nnx.Dropout``; so a model's mode also chooses what
    ``"auto"``/``"autotune"`` optimise.

    Example:
      >>> from flax import nnx
      >>> from efficonv.nnx import CPConv
      >>> model = nnx.Sequential(CPConv(8, 8, 3, rank=2, rngs=nnx.Rngs(0)), nnx.Dropout(0.1))
      >>> model.train()
      >>> model.layers[0].objective, model.layers[1].deterministic
      ('training', False)
      >>> model.eval()
      >>> model.layers[0].objective
      'inference'
    """
    return self.objective == "inference"

  @deterministic.setter
  def deterministic(self, value: bool) -> None:
    self.objective = "inference" if value else "training"

  def set_view(self, deterministic: bool | None = None) -> None:
    """Used by :func:`flax.nnx.view`: ``nnx.view(model, deterministic=False)`` plans for training.

    Args:
      deterministic: ``True`` for ``objective="inference"``, ``False`` for ``"training"``; ``None`` keeps it.
    """
    if deterministic is not None:
      self.deterministic = deterministic

  def plan(self, input_shape: Sequence[int]) -> Plan:
    """Which implementation this layer runs on ``input_shape`` (``(*batch, H, W, C_in)``), and why.

    With ``feature_group_count > 1``, a ``mask`` or ``preferred_element_type`` it is the reconstructed
    path, with that reason; with an input dilation the times are those of the dilated input.
    """
    fmt = self.format
    stack = self.stack_shape
    if stack:  # the layers of a stack share their shapes, and so their plan
      fmt = jax.tree.map(lambda a: a[(0,) * len(stack)], fmt)
    return _factorized.layer_plan(
      fmt,
      input_shape,
      strides=self.strides,
      padding=self.padding,
      input_dilation=self.input_dilation,
      kernel_dilation=self.kernel_dilation,
      feature_group_count=self.feature_group_count,
      mask=self.mask,
      preferred_element_type=self.preferred_element_type,
      implementation=self.implementation,
      depthwise_implementation=self.depthwise_implementation,
      objective=self.objective,
      dtype=self.dtype,
      precision=self.precision,
    )

  def cost_params(self) -> int:
    """Parameters of the factors and the bias (of every layer, for a stack)."""
    return self.format.params() + (int(self.bias.size) if self.bias is not None else 0)

  def cost_macs(self, input_shape: Sequence[int]) -> int:
    """MACs on ``input_shape`` (bias adds excluded): of the factorized sequence, or of the dense conv where
    an option forces the reconstructed path (groups, mask, ``preferred_element_type``)."""
    shape = _factorized.conv_input_shape(input_shape, self.input_dilation, self.feature_group_count)
    dense = _factorized.reconstruction_reason(self.feature_group_count, self.mask, self.preferred_element_type)
    count = self.format.dense_macs if dense else self.format.macs
    macs = count(shape, strides=self.strides, padding=self.padding, dilation=self.kernel_dilation)
    return macs * math.prod(self.stack_shape)  # every layer's, for a stack

  def __call__(self, inputs: Array, out_sharding: Any = None) -> Array:
    """Applies the layer.

    Args:
      inputs: ``(*batch, H, W, in_features)``: NHWC, unbatched ``(H, W, in_features)``, or
        several batch axes (flattened for the conv and restored, as ``nnx.Conv``).
      out_sharding: as for ``nnx.Conv``: the output's sharding (a ``PartitionSpec``
        or ``NamedSharding``); by default, on an Explicit mesh, the input's batch sharding.

    Returns:
      ``(*batch, H', W', out_features)``.

    Raises:
      ValueError: for a stack of layers (:attr:`stack_shape`), which ``nnx.scan`` applies layer by layer.
    """
    check_one_layer(self, self.stack_shape, "calling it")
    x, batch_shape = batch_inputs(inputs, self.in_features)
    y = _factorized.layer_conv(
      self.format,
      x,
      self.bias[...] if self.bias is not None else None,
      strides=self.strides,
      padding=self.padding,
      input_dilation=self.input_dilation,
      kernel_dilation=self.kernel_dilation,
      feature_group_count=self.feature_group_count,
      mask=self.mask,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      precision=self.precision,
      promote=lambda arrays, dtype: self.promote_dtype(arrays, dtype=dtype),
      preferred_element_type=self.preferred_element_type,
      implementation=self.implementation,
      depthwise_implementation=self.depthwise_implementation,
      objective=self.objective,
    )
    y = restore_batch(y, batch_shape)
    return y if out_sharding is None else with_out_sharding(y, out_sharding)

  @classmethod
  def from_format(
    cls,
    fmt: Format,
    *,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    input_dilation: int | Sequence[int] | None = 1,
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    use_bias: bool | None = None,
    bias: Array | None = None,
    mask: Array | None = None,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    precision: PrecisionLike = None,
    bias_init: Initializer = default_bias_init,
    promote_dtype: PromoteDtype = dtypes.promote_dtype,
    preferred_element_type: Dtype | None = None,
    implementation: Implementation = "auto",
    depthwise_implementation: DepthwiseImplementation = "auto",
    rngs: nnx.Rngs | None = None,
  ) -> Any:
    """Builds the layer around existing factors.

    Args:
      fmt: a format of this layer's type (e.g. :class:`efficonv.CP` for ``CPConv``); with
        ``feature_group_count`` groups its kernel is ``(kh, kw, C_in // groups, C_out)``.
      strides, padding, input_dilation, kernel_dilation, feature_group_count: the conv options.
      use_bias: whether to add a bias (``True`` by default, like ``nnx.Conv``).
      bias: initial bias ``(out_features,)``; zeros via ``bias_init`` when ``None``.
      mask, dtype, param_dtype, precision, bias_init, promote_dtype, preferred_element_type,
      implementation, depthwise_implementation: as for the constructor.
      rngs: only needed for a random ``bias_init`` (``nnx.Rngs(0)`` otherwise).

    Returns:
      The layer.
    """
    if not isinstance(fmt, cls.format_type):
      raise ValueError(f"fmt must be an efficonv.{cls.format_type.__name__}, got {type(fmt).__name__}")
    groups = check_feature_group_count(feature_group_count, out_features=fmt.out_features)
    layer = cls(
      fmt.in_features * groups,
      fmt.out_features,
      fmt.kernel_size,
      strides,
      **cls._format_kwargs(fmt),
      padding=padding,
      input_dilation=input_dilation,
      kernel_dilation=kernel_dilation,
      feature_group_count=groups,
      use_bias=True if use_bias is None else use_bias,
      mask=mask,
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      bias_init=bias_init,
      promote_dtype=promote_dtype,
      preferred_element_type=preferred_element_type,
      implementation=implementation,
      depthwise_implementation=depthwise_implementation,
      rngs=rngs if rngs is not None else nnx.Rngs(0),
    )
    layer._load_format(fmt)
    if bias is not None:
      if layer.bias is None:
        raise ValueError("bias was given but use_bias=False")
      if tuple(bias.shape) != (fmt.out_features,):
        raise ValueError(f"bias must have shape ({fmt.out_features},), got {tuple(bias.shape)}")
      layer.bias[...] = jnp.asarray(bias, layer.param_dtype)
    return layer

  @classmethod
  def from_conv(
    cls,
    conv: nnx.Conv,
    rank: Any,
    *,
    implementation: Implementation = "auto",
    depthwise_implementation: DepthwiseImplementation = "auto",
    return_info: bool = False,
    **decompose_kwargs: Any,
  ) -> Any:
    """Replaces a trained :class:`flax.nnx.Conv` by this layer, decomposing its kernel.

    The new layer keeps the conv's strides, padding, dilation, bias, dtypes
    and precision; its output equals the conv's up to the kernel's
    reconstruction error (``info.relative_error``).

    Args:
      conv: a 2-D ``nnx.Conv`` with ``feature_group_count=1``, no input
        dilation and no mask.
      rank: the scheme's rank (CP/spatial: int; Tucker: ``(R1, R2)``; TT:
        ranks; separable: depth multiplier).
      implementation, depthwise_implementation: as for the constructor.
      return_info: also return the :class:`efficonv.decompose.FitInfo`.
      **decompose_kwargs: passed to the :mod:`efficonv.decompose` function
        (e.g. ``n_iter``, ``init`` for CP; ``in_modes``/``out_modes`` for TT).

    Returns:
      The layer, or ``(layer, info)`` with ``return_info=True``.

    Example:
      >>> from flax import nnx
      >>> from efficonv.nnx import CPConv
      >>> conv = nnx.Conv(16, 32, (3, 3), strides=2, rngs=nnx.Rngs(0))
      >>> layer, info = CPConv.from_conv(conv, 8, return_info=True)
      >>> layer.strides, layer.format.rank
      ((2, 2), 8)
    """
    kernel = conv_kernel(conv)
    fmt, info = cls._decompose(kernel, rank, **decompose_kwargs)
    layer = cls.from_format(
      fmt,
      strides=1 if conv.strides is None else conv.strides,
      padding=conv_padding(conv),
      kernel_dilation=1 if conv.kernel_dilation is None else conv.kernel_dilation,
      use_bias=conv.bias is not None,
      bias=conv.bias[...] if conv.bias is not None else None,
      dtype=conv.dtype,
      param_dtype=conv.param_dtype,
      precision=conv.precision,
      implementation=implementation,
      depthwise_implementation=depthwise_implementation,
    )
    return (layer, info) if return_info else layer

  @classmethod
  def _decompose(cls, kernel: Array, rank: Any, **kwargs: Any) -> tuple[Format, Any]:
    """Runs this scheme's decomposition (the registry's, :mod:`efficonv.schemes`)."""
    return schemes.of_format(cls.format_type).decompose(kernel, rank, **kwargs)

  @classmethod
  def _format_kwargs(cls, fmt: Any) -> dict[str, Any]:
    """Constructor keywords (the rank and any other scheme argument) that make a layer of ``fmt``'s shape."""
    return {"rank": fmt.rank}

  def _load_format(self, fmt: Format) -> None:
    """Overwrites the factor parameters with ``fmt``'s arrays (shapes must match)."""
    for name in fmt._fields:
      value, attr = getattr(fmt, name), getattr(self, name)
      pairs = zip(attr, value) if isinstance(attr, nnx.List) else [(attr, value)]
      for param, v in pairs:
        if tuple(param.shape) != tuple(v.shape):
          raise ValueError(f"fmt.{name} must have shape {tuple(param.shape)}, got {tuple(v.shape)}")
        param[...] = jnp.asarray(v, self.param_dtype)
