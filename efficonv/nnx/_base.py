"""The shared body of efficonv's factorized NNX convolution layers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from efficonv import schemes
from efficonv.convert import conv_kernel, conv_padding
from efficonv.formats import Format
from efficonv.layer_options import (
  OBJECTIVES,
  DepthwiseImplementation,
  Implementation,
  Initializer,
  Objective,
  PaddingLike,
  batch_inputs,
  check_one_layer,
  check_options,
  default_bias_init,
  promote_tree,
)
from efficonv.layer_options import (
  stack_shape as leading_stack,
)
from efficonv.planning import Plan
from efficonv.typing import Array, Dtype, PrecisionLike


def set_objective(model: nnx.Module, objective: Objective) -> int:
  """Sets what ``implementation="auto"``/``"autotune"`` optimise in every factorized layer of ``model``.

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
    rank: the scheme's rank (an int, or a tuple where the scheme has several).
    padding: ``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, ``"REFLECT"``, int or ``((lo, hi), (lo, hi))``.
    kernel_dilation: int or ``(dh, dw)``.
    use_bias: add a bias to the output.
    dtype: computation dtype (inferred from inputs and params when ``None``).
    param_dtype: parameter dtype.
    precision: XLA precision of the matmuls/convs.
    kernel_init: ``None`` draws factors whose reconstructed kernel has
      LeCun-normal variance (as ``nnx.Conv``); an initializer is applied to
      every factor instead.
    bias_init: bias initializer.
    implementation: ``"auto"``, ``"autotune"``, ``"factorized"`` or ``"reconstructed"``.
    depthwise_implementation: ``"auto"``, ``"shift"`` or ``"xla"``.
    rngs: random number streams.
    **scheme_args: the subclass's other scheme arguments, passed to :meth:`_init_format`.
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
    kernel_dilation: int | Sequence[int] = 1,
    use_bias: bool = True,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    precision: PrecisionLike = None,
    kernel_init: Initializer | None = None,
    bias_init: Initializer = default_bias_init,
    implementation: Implementation = "auto",
    depthwise_implementation: DepthwiseImplementation = "auto",
    rngs: nnx.Rngs,
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
    fmt = self._init_format(
      rngs.params(), in_features, out_features, ks, rank, dtype=param_dtype, initializer=kernel_init, **scheme_args
    )
    self.in_features = fmt.in_features
    self.out_features = fmt.out_features
    self.kernel_size = fmt.kernel_size
    self.strides = s
    self.padding = padding
    self.kernel_dilation = d
    self.use_bias = use_bias
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision
    self.implementation: Implementation = implementation
    self.depthwise_implementation: DepthwiseImplementation = depthwise_implementation
    # What "auto"/"autotune" optimise; see set_objective.
    self.objective: Objective = "inference"
    for name in fmt._fields:
      value = getattr(fmt, name)
      if isinstance(value, tuple):
        setattr(self, name, nnx.List([nnx.Param(jnp.asarray(v, param_dtype)) for v in value]))
      else:
        setattr(self, name, nnx.Param(jnp.asarray(value, param_dtype)))
    self.bias: nnx.Param | None = (
      nnx.Param(bias_init(rngs.params(), (fmt.out_features,), param_dtype)) if use_bias else None
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
      initializer: ``kernel_init`` (``None``: the variance-matched draw).
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

  def plan(self, input_shape: Sequence[int]) -> Plan:
    """Which implementation this layer runs on ``input_shape`` (NHWC), and why (each layer's, for a stack)."""
    fmt = self.format
    stack = self.stack_shape
    if stack:  # the layers of a stack share their shapes, and so their plan
      fmt = jax.tree.map(lambda a: a[(0,) * len(stack)], fmt)
    return fmt.plan(
      input_shape,
      strides=self.strides,
      padding=self.padding,
      dilation=self.kernel_dilation,
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
    """MACs of the factorized sequence on ``input_shape`` (bias adds excluded; each layer's on it, for a stack)."""
    macs = self.format.macs(input_shape, strides=self.strides, padding=self.padding, dilation=self.kernel_dilation)
    return macs * math.prod(self.stack_shape)

  def __call__(self, inputs: Array) -> Array:
    """Applies the layer.

    Args:
      inputs: ``(N, H, W, in_features)``, or unbatched ``(H, W, in_features)``.

    Returns:
      ``(N, H', W', out_features)`` (unbatched in, unbatched out).

    Raises:
      ValueError: for a stack of layers (:attr:`stack_shape`), which ``nnx.scan`` applies layer by layer.
    """
    check_one_layer(self, self.stack_shape, "calling it")
    inputs, unbatched = batch_inputs(inputs, self.in_features)
    fmt = self.format
    bias = self.bias[...] if self.bias is not None else None
    inputs, fmt, bias = promote_tree((inputs, fmt, bias), self.dtype)
    y = fmt.conv(
      inputs,
      strides=self.strides,
      padding=self.padding,
      dilation=self.kernel_dilation,
      implementation=self.implementation,
      depthwise_implementation=self.depthwise_implementation,
      objective=self.objective,
      precision=self.precision,
    )
    if bias is not None:
      y = y + bias.reshape(1, 1, 1, -1)
    return y[0] if unbatched else y

  @classmethod
  def from_format(
    cls,
    fmt: Format,
    *,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
    use_bias: bool | None = None,
    bias: Array | None = None,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    precision: PrecisionLike = None,
    bias_init: Initializer = default_bias_init,
    implementation: Implementation = "auto",
    depthwise_implementation: DepthwiseImplementation = "auto",
    rngs: nnx.Rngs | None = None,
  ) -> Any:
    """Builds the layer around existing factors.

    Args:
      fmt: a format of this layer's type (e.g. :class:`efficonv.CP` for ``CPConv``).
      strides, padding, kernel_dilation: the conv options.
      use_bias: whether to add a bias (``True`` by default, like ``nnx.Conv``).
      bias: initial bias ``(out_features,)``; zeros via ``bias_init`` when ``None``.
      dtype, param_dtype, precision, bias_init, implementation,
      depthwise_implementation: as for the constructor.
      rngs: only needed for a random ``bias_init`` (``nnx.Rngs(0)`` otherwise).

    Returns:
      The layer.
    """
    if not isinstance(fmt, cls.format_type):
      raise ValueError(f"fmt must be an efficonv.{cls.format_type.__name__}, got {type(fmt).__name__}")
    layer = cls(
      fmt.in_features,
      fmt.out_features,
      fmt.kernel_size,
      strides,
      **cls._format_kwargs(fmt),
      padding=padding,
      kernel_dilation=kernel_dilation,
      use_bias=True if use_bias is None else use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      bias_init=bias_init,
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
