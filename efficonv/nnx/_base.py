"""The shared body of efficonv's factorized NNX convolution layers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.linear import canonicalize_padding

from efficonv.formats import Format
from efficonv.formats.init import Initializer
from efficonv.kernels import _options as opt
from efficonv.kernels.depthwise import _DEPTHWISE_IMPLS
from efficonv.planning import IMPLEMENTATIONS, OBJECTIVES, Plan
from efficonv.typing import Array, Dtype, PrecisionLike

default_bias_init = nnx.initializers.zeros_init()


def check_options(
  in_features: int,
  out_features: int,
  kernel_size: int | Sequence[int],
  strides: int | Sequence[int],
  padding: opt.PaddingLike,
  kernel_dilation: int | Sequence[int],
  implementation: str,
  depthwise_implementation: str,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
  """Validates the constructor arguments shared by every layer.

  Returns:
    ``(kernel_size, strides, kernel_dilation)`` as pairs.

  Raises:
    ValueError: naming the offending argument.
  """
  for name, value in (("in_features", in_features), ("out_features", out_features)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive int, got {value!r}")
  ks = opt.pair(kernel_size, "kernel_size")  # type: ignore[arg-type]
  s = opt.pair(strides, "strides")  # type: ignore[arg-type]
  d = opt.pair(kernel_dilation, "kernel_dilation")  # type: ignore[arg-type]
  # Validates the padding's form now (sizes are checked per call).
  opt.resolve_padding(padding, (10**6, 10**6), ks, s, d)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  if depthwise_implementation not in _DEPTHWISE_IMPLS:
    raise ValueError(f"depthwise_implementation must be one of {_DEPTHWISE_IMPLS}, got {depthwise_implementation!r}")
  return ks, s, d


def set_objective(model: nnx.Module, objective: str) -> int:
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

  Subclasses set ``format_type`` and create the factor parameters. The layer
  stores each factor as an :class:`flax.nnx.Param` named like the format's
  field (lists of factors in :class:`flax.nnx.List`), so optax, ``nnx.state``
  filters and checkpoints see ordinary parameters.
  """

  format_type: ClassVar[type[Format]]

  def _setup(
    self,
    fmt: Format,
    *,
    strides: tuple[int, int],
    padding: opt.PaddingLike,
    kernel_dilation: tuple[int, int],
    use_bias: bool,
    dtype: Dtype | None,
    param_dtype: Dtype,
    precision: PrecisionLike,
    bias_init: Initializer,
    implementation: str,
    depthwise_implementation: str,
    rngs: nnx.Rngs,
  ) -> None:
    self.in_features = fmt.in_features
    self.out_features = fmt.out_features
    self.kernel_size = fmt.kernel_size
    self.strides = strides
    self.padding = padding
    self.kernel_dilation = kernel_dilation
    self.use_bias = use_bias
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision
    self.implementation = implementation
    self.depthwise_implementation = depthwise_implementation
    # What "auto"/"autotune" optimise; see set_objective.
    self.objective = "inference"
    for name in fmt._fields:
      value = getattr(fmt, name)
      if isinstance(value, tuple):
        setattr(self, name, nnx.List([nnx.Param(jnp.asarray(v, param_dtype)) for v in value]))
      else:
        setattr(self, name, nnx.Param(jnp.asarray(value, param_dtype)))
    self.bias: nnx.Param | None = (
      nnx.Param(bias_init(rngs.params(), (fmt.out_features,), param_dtype)) if use_bias else None
    )

  @property
  def format(self) -> Format:
    """The current factors as a format object (in ``param_dtype``)."""
    values = []
    for name in self.format_type._fields:
      attr = getattr(self, name)
      values.append(tuple(p[...] for p in attr) if isinstance(attr, nnx.List) else attr[...])
    return self.format_type(*values)

  def to_dense(self) -> Array:
    """The dense HWIO kernel the layer currently represents."""
    return self.format.to_dense()

  def plan(self, input_shape: Sequence[int]) -> Plan:
    """Which implementation this layer runs on ``input_shape`` (NHWC), and why."""
    return self.format.plan(
      input_shape,
      strides=self.strides,
      padding=self.padding,
      dilation=self.kernel_dilation,
      implementation=self.implementation,  # type: ignore[arg-type]
      depthwise_implementation=self.depthwise_implementation,
      objective=self.objective,  # type: ignore[arg-type]
      dtype=self.dtype,
      precision=self.precision,
    )

  def cost_params(self) -> int:
    """Parameters of the factors and the bias."""
    return self.format.params() + (self.out_features if self.use_bias else 0)

  def cost_macs(self, input_shape: Sequence[int]) -> int:
    """MACs of the factorized sequence on ``input_shape`` (bias adds excluded)."""
    return self.format.macs(input_shape, strides=self.strides, padding=self.padding, dilation=self.kernel_dilation)

  def __call__(self, inputs: Array) -> Array:
    """Applies the layer.

    Args:
      inputs: ``(N, H, W, in_features)``, or unbatched ``(H, W, in_features)``.

    Returns:
      ``(N, H', W', out_features)`` (unbatched in, unbatched out).
    """
    inputs, unbatched = batch_inputs(inputs, self.in_features)
    fmt = self.format
    bias = self.bias[...] if self.bias is not None else None
    inputs, fmt, bias = promote_tree((inputs, fmt, bias), self.dtype)
    y = fmt.conv(
      inputs,
      strides=self.strides,
      padding=self.padding,
      dilation=self.kernel_dilation,
      implementation=self.implementation,  # type: ignore[arg-type]
      depthwise_implementation=self.depthwise_implementation,
      objective=self.objective,  # type: ignore[arg-type]
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
    padding: opt.PaddingLike = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
    use_bias: bool | None = None,
    bias: Array | None = None,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    precision: PrecisionLike = None,
    bias_init: Initializer = default_bias_init,
    implementation: str = "auto",
    depthwise_implementation: str = "auto",
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
      **cls._format_kwargs(fmt),
      strides=strides,
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
    implementation: str = "auto",
    depthwise_implementation: str = "auto",
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
    """Runs this scheme's :mod:`efficonv.decompose` function."""
    raise NotImplementedError

  @classmethod
  def _format_kwargs(cls, fmt: Format) -> dict[str, Any]:
    """Constructor keywords (rank etc.) that make a layer of ``fmt``'s shape."""
    raise NotImplementedError

  def _load_format(self, fmt: Format) -> None:
    """Overwrites the factor parameters with ``fmt``'s arrays (shapes must match)."""
    for name in fmt._fields:
      value, attr = getattr(fmt, name), getattr(self, name)
      pairs = zip(attr, value) if isinstance(attr, nnx.List) else [(attr, value)]
      for param, v in pairs:
        if tuple(param.shape) != tuple(v.shape):
          raise ValueError(f"fmt.{name} must have shape {tuple(param.shape)}, got {tuple(v.shape)}")
        param[...] = jnp.asarray(v, self.param_dtype)


ActivationFn = Callable[[Array], Array]


def batch_inputs(inputs: Array, in_features: int | None) -> tuple[Array, bool]:
  """Checks layer ``inputs`` and gives unbatched ones a batch axis (as :class:`flax.nnx.Conv` accepts them).

  Args:
    inputs: ``(N, H, W, in_features)`` or unbatched ``(H, W, in_features)``.
    in_features: the channels the layer expects (``None``: any, for layers that infer them).

  Returns:
    ``(inputs as (N, H, W, in_features), whether the batch axis was added)``.

  Raises:
    ValueError: naming ``inputs`` when it is not rank 3 or 4 or has the wrong channel count.
  """
  ndim = getattr(inputs, "ndim", None)
  if ndim not in (3, 4):
    raise ValueError(
      f"inputs must be NHWC (rank 4) or unbatched HWC (rank 3), got shape {getattr(inputs, 'shape', type(inputs))}"
    )
  unbatched = ndim == 3
  if unbatched and in_features is not None and inputs.shape[-1] != in_features:
    # Checked before adding the axis so the message shows the shape the caller passed.
    raise ValueError(f"inputs must have {in_features} channels in its last axis (HWC), got shape {inputs.shape}")
  inputs = inputs[None] if unbatched else inputs
  opt.check_input(inputs, "inputs", in_features)
  return inputs, unbatched


def promote_tree(tree: Any, dtype: Dtype | None) -> Any:
  """Casts every inexact array leaf of ``tree`` to ``dtype``.

  With ``dtype=None`` the common result type of all leaves is used (as
  :func:`flax.nnx.nn.dtypes.promote_dtype`, which takes only flat tuples).
  """
  leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree) if leaf is not None]
  target = dtype if dtype is not None else jnp.result_type(*leaves)
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, target), tree)


def conv_kernel(conv: Any) -> Array:
  """The HWIO kernel of a plain 2-D :class:`flax.nnx.Conv`.

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


def conv_padding(conv: nnx.Conv) -> opt.PaddingLike:
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
  pads = canonicalize_padding(conv.padding, 2)
  return (tuple(pads[0]), tuple(pads[1]))  # type: ignore[return-value]
