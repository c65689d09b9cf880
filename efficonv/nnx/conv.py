"""A drop-in :class:`flax.nnx.Conv` whose 2-D convolution runs the fastest dense formulation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from efficonv import _dense_layer
from efficonv.kernels import targets
from efficonv.kernels.conv import conv as dense_conv
from efficonv.kernels.dense import check_layer_implementation
from efficonv.layer_options import check_one_layer
from efficonv.layer_options import stack_shape as leading_stack
from efficonv.typing import Array


class Conv(nnx.Conv):
  """:class:`flax.nnx.Conv` with ``implementation=``: its 2-D conv runs :func:`efficonv.kernels.conv`.

  Same constructor arguments, same attributes and the same state (``kernel``,
  ``bias``) as :class:`flax.nnx.Conv`, so the state of an ``nnx.Conv`` loads into
  it with :func:`flax.nnx.update` and the outputs agree up to float rounding.
  What :func:`efficonv.kernels.conv` does not cover runs on ``nnx.Conv``'s own
  ``__call__``, unchanged: 1-D and 3-D kernels, ``mask``, ``input_dilation``
  other than 1, a custom ``conv_general_dilated``, ``preferred_element_type``,
  ``out_sharding`` and paddings outside :func:`efficonv.kernels.resolve_padding`.
  :meth:`implementation_for` says which path a given input takes.

  Args:
    *args: as for :class:`flax.nnx.Conv`.
    implementation: ``"auto"`` (:func:`efficonv.kernels.dense_implementation` per
      backend and shape), ``"autotune"`` (every formulation timed once per shape,
      :func:`efficonv.planning.autotune_dense`) or one of :data:`efficonv.kernels.DENSE_IMPLEMENTATIONS`.
    **kwargs: as for :class:`flax.nnx.Conv`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from efficonv.nnx import Conv
    >>> ref = nnx.Conv(8, 4, (3, 3), rngs=nnx.Rngs(0))
    >>> fast = Conv(8, 4, (3, 3), rngs=nnx.Rngs(1))
    >>> nnx.update(fast, nnx.state(ref))
    >>> x = jnp.ones((2, 2, 2, 8))
    >>> bool(jnp.allclose(fast(x), ref(x), atol=1e-5))
    True
    >>> fast.implementation_for(x.shape, backend="cpu")[0]
    'im2col'
  """

  def __init__(self, *args: Any, implementation: str = "auto", **kwargs: Any) -> None:
    check_layer_implementation(implementation)
    super().__init__(*args, **kwargs)
    self.implementation = implementation

  def _pair(self, value: int | Sequence[int] | None) -> tuple[int, ...]:
    return _dense_layer.broadcast(value, len(self.kernel_size))

  def _fallback_reason(self, input_shape: Sequence[int], out_sharding: Any = None) -> str | None:
    """Why ``nnx.Conv.__call__`` must run instead of efficonv's conv, or ``None``."""
    return _dense_layer.fallback_reason(
      input_shape,
      kernel_size=self.kernel_size,
      strides=self.strides,
      padding=self.padding,
      input_dilation=self.input_dilation,
      kernel_dilation=self.kernel_dilation,
      mask=self.mask,
      custom_conv=self.conv_general_dilated is not jax.lax.conv_general_dilated,
      preferred_element_type=self.preferred_element_type,
      out_sharding=out_sharding,
    )

  def implementation_for(
    self, input_shape: Sequence[int], dtype: Any = None, backend: str | None = None
  ) -> tuple[str, str]:
    """The formulation a call on ``input_shape`` runs, and why.

    Args:
      input_shape: ``(*batch, H, W, C_in)``, as the layer is called.
      dtype: the input's dtype (for the patch-array size); ``param_dtype`` when ``None``.
      backend: a JAX platform name; the default backend when ``None``.

    Returns:
      ``(name, reason)``; ``name`` is one of :data:`efficonv.kernels.DENSE_IMPLEMENTATIONS`,
      ``"xla"`` with a reason naming ``nnx.Conv`` where its own ``__call__`` runs.
    """
    why = self._fallback_reason(input_shape)
    if why is not None:
      return "xla", f"nnx.Conv's own __call__ ({why})"
    return _dense_layer.implementation_for(
      input_shape,
      self.kernel_shape,
      implementation=self.implementation,
      strides=self.strides,
      padding=self.padding,
      kernel_dilation=self.kernel_dilation,
      feature_group_count=self.feature_group_count,
      dtype=self.dtype or jnp.result_type(dtype or self.param_dtype, self.param_dtype),
      precision=self.precision,
      backend=backend,
    )

  def __call__(self, inputs: Array, out_sharding: Any = None) -> Array:
    """Applies the convolution (see :meth:`flax.nnx.Conv.__call__`).

    Args:
      inputs: ``(*batch, H, W, C_in)``; any number of batch axes, including none.
      out_sharding: passed to :class:`flax.nnx.Conv` (which then runs itself).

    Returns:
      ``(*batch, H', W', C_out)``.
    """
    check_one_layer(self, leading_stack(self.kernel.shape, len(self.kernel_size) + 2), "calling it")
    if self._fallback_reason(inputs.shape, out_sharding) is not None:
      return super().__call__(inputs, out_sharding=out_sharding)
    batch_shape = inputs.shape[:-3]
    if len(batch_shape) != 1:
      inputs = jnp.reshape(inputs, (-1, *inputs.shape[-3:]))
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
    implementation = self.implementation
    if implementation == "autotune":  # measured once per shape (cached), also while an outer jit traces
      implementation, _ = self.implementation_for(inputs.shape, inputs.dtype)
    y = dense_conv(
      inputs,
      kernel,
      strides=self._pair(self.strides),
      padding=self.padding,
      dilation=self._pair(self.kernel_dilation),
      feature_group_count=self.feature_group_count,
      precision=self.precision,
      implementation=implementation,
    )
    if self.implementation == "autotune":  # measured here: the program holds this platform's choice only
      y = targets.check_platforms(y)
    if bias is not None:
      y = y + bias.reshape(1, 1, 1, -1)
    if len(batch_shape) != 1:
      y = jnp.reshape(y, (*batch_shape, *y.shape[1:]))
    return y
