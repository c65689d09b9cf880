"""The Linen wrappers (see :mod:`efficonv.linen`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen

from efficonv.formats import CP, TT, Format, Separable, Spatial, Tucker2
from efficonv.formats.init import Initializer
from efficonv.kernels import _options as opt
from efficonv.nnx._base import batch_inputs, check_options, promote_tree
from efficonv.nnx.tt import tt_modes
from efficonv.nnx.tucker import tucker_ranks
from efficonv.typing import Array, Dtype, PrecisionLike


class _FactorizedConv(linen.Module):
  """Shared body: one Linen param per factor, applied by ``Format.conv``."""

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: opt.PaddingLike = "SAME"
  kernel_dilation: int | Sequence[int] = 1
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: PrecisionLike = None
  kernel_init: Initializer | None = None
  bias_init: Initializer = linen.initializers.zeros_init()
  implementation: str = "auto"
  depthwise_implementation: str = "auto"

  format_type: ClassVar[type[Format]]

  def init_format(self, key: jax.Array, in_features: int, kernel_size: tuple[int, int]) -> Format:
    raise NotImplementedError

  @linen.compact
  def __call__(self, inputs: Array) -> Array:
    """``(N, H, W, C_in)`` → ``(N, H', W', features)`` (unbatched ``(H, W, C_in)`` too, as ``linen.Conv``)."""
    given_shape = getattr(inputs, "shape", None)
    inputs, unbatched = batch_inputs(inputs, None)
    ks, _, _ = check_options(
      inputs.shape[-1],
      self.features,
      self.kernel_size,
      self.strides,
      self.padding,
      self.kernel_dilation,
      self.implementation,
      self.depthwise_implementation,
    )
    cin = inputs.shape[-1]
    fields = self.format_type._fields
    if all(self.has_variable("params", name) for name in fields):
      # Checked before self.param, which would raise a flax ScopeParamShapeError naming a factor instead.
      stored = self.format_type(*(self.get_variable("params", name) for name in fields))
      if stored.in_features != cin:
        raise ValueError(f"inputs must have {stored.in_features} channels in its last axis, got shape {given_shape}")
    # Each factor is drawn from its own key with the jointly matched std (see efficonv.formats.init).
    values = [self.param(name, lambda key, n=name: getattr(self.init_format(key, cin, ks), n)) for name in fields]
    fmt = self.format_type(*values)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    inputs, fmt, bias = promote_tree((inputs, fmt, bias), self.dtype)
    y = fmt.conv(
      inputs,
      strides=self.strides,
      padding=self.padding,
      dilation=self.kernel_dilation,
      implementation=self.implementation,  # type: ignore[arg-type]
      depthwise_implementation=self.depthwise_implementation,
      precision=self.precision,
    )
    y = y if bias is None else y + bias.reshape(1, 1, 1, -1)
    return y[0] if unbatched else y


class CPConv(_FactorizedConv):
  """Linen :class:`efficonv.nnx.CPConv`: ``rank`` is the CP rank."""

  rank: int = 1
  format_type: ClassVar[type[Format]] = CP

  def init_format(self, key: jax.Array, in_features: int, kernel_size: tuple[int, int]) -> Format:
    return CP.init(
      key, in_features, self.features, kernel_size, self.rank, dtype=self.param_dtype, initializer=self.kernel_init
    )


class TuckerConv(_FactorizedConv):
  """Linen :class:`efficonv.nnx.TuckerConv`: ``ranks`` is ``(R1, R2)`` or an int."""

  ranks: Any = 1
  format_type: ClassVar[type[Format]] = Tucker2

  def init_format(self, key: jax.Array, in_features: int, kernel_size: tuple[int, int]) -> Format:
    return Tucker2.init(
      key,
      in_features,
      self.features,
      kernel_size,
      tucker_ranks(self.ranks),
      dtype=self.param_dtype,
      initializer=self.kernel_init,
    )


class SpatialConv(_FactorizedConv):
  """Linen :class:`efficonv.nnx.SpatialConv`: ``rank`` intermediate channels."""

  rank: int = 1
  format_type: ClassVar[type[Format]] = Spatial

  def init_format(self, key: jax.Array, in_features: int, kernel_size: tuple[int, int]) -> Format:
    return Spatial.init(
      key, in_features, self.features, kernel_size, self.rank, dtype=self.param_dtype, initializer=self.kernel_init
    )


class SeparableConv(_FactorizedConv):
  """Linen :class:`efficonv.nnx.SeparableConv` with ``depth_multiplier``."""

  depth_multiplier: int = 1
  format_type: ClassVar[type[Format]] = Separable

  def init_format(self, key: jax.Array, in_features: int, kernel_size: tuple[int, int]) -> Format:
    return Separable.init(
      key,
      in_features,
      self.features,
      kernel_size,
      self.depth_multiplier,
      dtype=self.param_dtype,
      initializer=self.kernel_init,
    )


class TTConv(_FactorizedConv):
  """Linen :class:`efficonv.nnx.TTConv`: ``ranks``, optional ``in_modes``/``out_modes``."""

  ranks: Any = 1
  in_modes: Sequence[int] | None = None
  out_modes: Sequence[int] | None = None
  format_type: ClassVar[type[Format]] = TT

  def init_format(self, key: jax.Array, in_features: int, kernel_size: tuple[int, int]) -> Format:
    in_modes, out_modes = tt_modes(in_features, self.features, self.in_modes, self.out_modes)
    return TT.init(
      key,
      in_features,
      self.features,
      kernel_size,
      self.ranks,
      in_modes=in_modes,
      out_modes=out_modes,
      dtype=self.param_dtype,
      initializer=self.kernel_init,
    )
