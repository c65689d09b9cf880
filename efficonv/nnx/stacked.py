"""``StackedConv``: several small convs covering one large receptive field."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from efficonv.formats.init import Initializer
from efficonv.kernels import _options as opt
from efficonv.kernels.conv import conv_valid
from efficonv.nnx._base import batch_inputs, default_bias_init, promote_tree
from efficonv.typing import Array, Dtype, PrecisionLike

default_kernel_init = nnx.initializers.lecun_normal()


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
    small_kernel_size: size of each small conv (default 3).
    features: channels between the small convs (default ``out_features``).
    activation: applied between the small convs (not after the last);
      ``None`` keeps the layer linear.
    strides, padding, kernel_dilation, use_bias, dtype, param_dtype,
    precision, kernel_init, bias_init: as :class:`flax.nnx.Conv`; each small
    conv is LeCun-initialized over its own fan-in (what a deep stack with
    nonlinearities needs). With an activation, every small conv has a bias;
    without, only the last (intermediate biases would make it affine in a
    way no single conv is).
    rngs: random number streams.

  Raises:
    ValueError: naming ``kernel_size``/``small_kernel_size`` when
      ``k - 1`` is not a multiple of ``k_s - 1``.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    *,
    small_kernel_size: int | Sequence[int] = 3,
    features: int | None = None,
    activation: Callable[[Array], Array] | None = None,
    strides: int | Sequence[int] = 1,
    padding: opt.PaddingLike = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
    use_bias: bool = True,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    precision: PrecisionLike = None,
    kernel_init: Initializer = default_kernel_init,
    bias_init: Initializer = default_bias_init,
    rngs: nnx.Rngs,
  ):
    for name, value in (("in_features", in_features), ("out_features", out_features), ("features", features)):
      if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    ks = opt.pair(kernel_size, "kernel_size")  # type: ignore[arg-type]
    small = opt.pair(small_kernel_size, "small_kernel_size")  # type: ignore[arg-type]
    counts = []
    for k, s in zip(ks, small):
      if s < 2 or (k - 1) % (s - 1):
        raise ValueError(
          f"small_kernel_size {small} must be >= 2 and satisfy (k - 1) % (k_s - 1) == 0 for kernel_size {ks}"
        )
      counts.append((k - 1) // (s - 1))
    if counts[0] != counts[1] or counts[0] < 1:
      raise ValueError(
        f"kernel_size {ks} and small_kernel_size {small} need the same number of small convs on both axes, got {counts}"
      )
    self.num_layers = counts[0]
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size, self.small_kernel_size = ks, small
    self.features = out_features if features is None else features
    self.activation = activation
    self.strides = opt.pair(strides, "strides")  # type: ignore[arg-type]
    self.kernel_dilation = opt.pair(kernel_dilation, "kernel_dilation")  # type: ignore[arg-type]
    opt.resolve_padding(padding, (10**6, 10**6), ks, self.strides, self.kernel_dilation)
    self.padding = padding
    self.use_bias, self.dtype, self.param_dtype, self.precision = use_bias, dtype, param_dtype, precision
    widths = [in_features] + [self.features] * (self.num_layers - 1) + [out_features]
    self.kernels = nnx.List(
      [
        nnx.Param(kernel_init(rngs.params(), (*small, widths[i], widths[i + 1]), param_dtype))
        for i in range(self.num_layers)
      ]
    )
    biased = range(self.num_layers) if activation is not None else [self.num_layers - 1]
    self.biases = nnx.List(
      [
        nnx.Param(bias_init(rngs.params(), (widths[i + 1],), param_dtype)) if use_bias and i in biased else None
        for i in range(self.num_layers)
      ]
    )

  def __call__(self, inputs: Array) -> Array:
    """``(N, H, W, in_features)`` → ``(N, H', W', out_features)`` (unbatched ``(H, W, in_features)`` too)."""
    inputs, unbatched = batch_inputs(inputs, self.in_features)
    pads, mode = opt.resolve_padding(
      self.padding, inputs.shape[1:3], self.kernel_size, self.strides, self.kernel_dilation
    )
    kernels = [k[...] for k in self.kernels]
    biases = [b[...] if b is not None else None for b in self.biases]
    inputs, kernels, biases = promote_tree((inputs, kernels, biases), self.dtype)
    h = opt.pad_input(inputs, pads, mode)
    for i, (k, b) in enumerate(zip(kernels, biases)):
      last = i == self.num_layers - 1
      h = conv_valid(h, k, self.strides if last else (1, 1), self.kernel_dilation, "xla", self.precision)
      if b is not None:
        h = h + b.reshape(1, 1, 1, -1)
      if not last and self.activation is not None:
        h = self.activation(h)
    return h[0] if unbatched else h

  def to_dense(self) -> Array:
    """The single ``k×k`` HWIO kernel equal to the stack (only without ``activation``).

    Raises:
      ValueError: when the layer has an activation (it is not one conv then).
    """
    if self.activation is not None:
      raise ValueError("to_dense needs activation=None: a nonlinear stack is not one convolution")
    # The stack is linear and shift-invariant: push a one-hot basis through it.
    kh, kw = self.kernel_size
    cin = self.in_features
    basis = jnp.eye(kh * kw * cin, dtype=self.param_dtype).reshape(kh * kw * cin, kh, kw, cin)
    h = basis
    for k in self.kernels:
      h = conv_valid(h, k[...], (1, 1), (1, 1), "xla", jax.lax.Precision.HIGHEST)
    return h.reshape(kh, kw, cin, self.out_features)

  def cost_params(self) -> int:
    """Parameters of all small convs and biases."""
    return sum(int(k.size) for k in self.kernels) + sum(int(b.size) for b in self.biases if b is not None)

  def cost_macs(self, input_shape: Sequence[int]) -> int:
    """MACs of the small convs on ``input_shape`` (bias adds excluded)."""
    n, h, w, _ = (int(v) for v in input_shape)
    pads, _ = opt.resolve_padding(self.padding, (h, w), self.kernel_size, self.strides, self.kernel_dilation)
    h, w = h + sum(pads[0]), w + sum(pads[1])
    total = 0
    for i, k in enumerate(self.kernels):
      last = i == self.num_layers - 1
      s = self.strides if last else (1, 1)
      h = opt.output_size(h, k.shape[0], s[0], self.kernel_dilation[0], 0, 0)
      w = opt.output_size(w, k.shape[1], s[1], self.kernel_dilation[1], 0, 0)
      total += n * h * w * int(k.size)
    return total
