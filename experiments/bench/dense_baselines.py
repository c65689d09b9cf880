"""The dense convolutions every speedup is measured against, and the passes timed.

A factorized layer is only faster if it beats the *fastest* dense conv the
machine offers, so several dense implementations are timed in the same run
and the fastest one per pass is the baseline:

* ``lax`` — :func:`jax.lax.conv_general_dilated`, default compilation (on CPU
  XLA hands it to YNNPACK).
* ``lax_eigen`` — the same conv compiled with
  ``xla_cpu_experimental_ynn_fusion_type`` lacking ``INDIVIDUAL_CONVOLUTION``,
  so XLA's own (Eigen) convolution runs; faster for some shapes and passes.
* ``im2col`` — gather the ``kh·kw`` shifted windows, one matmul.
* ``shift`` — :func:`efficonv.kernels.conv_valid` with ``"shift"``: one
  matmul per tap, summed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from efficonv import kernels
from efficonv.typing import Array

# Routes dots and reductions to YNNPACK but leaves convolutions to XLA's own
# emitter (the default list also holds LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION).
EIGEN_CONV_OPTIONS: dict[str, str] = {
  "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
}

# XLA:CPU with no YNNPACK library fusion at all. Its default fuses a reduction (a max-pool, say) with the
# elementwise ops that produce it, and for that materializes every shifted slice of a shift-and-add
# depthwise conv: a separable network at widths 16/32 ran 25 ms per batch of 64 by default and 4.8 ms
# with these options (the dense network 9.7 and 9.1 ms). `experiments.bench.network` times every network
# both ways.
NO_YNN_FUSION_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": ""}

PASSES = ("forward", "forward_backward")


@dataclasses.dataclass(frozen=True)
class DenseMethod:
  """One way to run a dense ``SAME``, stride-1 convolution.

  Attributes:
    name: short label used in the results.
    fn: ``(x (N,H,W,Cin), kernel (kh,kw,Cin,Cout)) -> (N,H,W,Cout)``.
    compiler_options: XLA options the executable is compiled with (empty: default).
  """

  name: str
  fn: Callable[[Array, Array], Array]
  compiler_options: Mapping[str, str]


def _same_pad(x: Array, kh: int, kw: int) -> Array:
  top, left = (kh - 1) // 2, (kw - 1) // 2
  return jnp.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))


def im2col_conv(x: Array, kernel: Array) -> Array:
  """``SAME`` stride-1 conv as one ``(N·H·W, kh·kw·C_in) × (kh·kw·C_in, C_out)`` matmul.

  Args:
    x: ``(N, H, W, C_in)``.
    kernel: ``(kh, kw, C_in, C_out)``.

  Returns:
    ``(N, H, W, C_out)``.
  """
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  xp = _same_pad(x, kh, kw)
  patches = jnp.concatenate([xp[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
  return (patches.reshape(n * h * w, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)).reshape(n, h, w, cout)


def shift_conv(x: Array, kernel: Array) -> Array:
  """``SAME`` stride-1 conv as one matmul per tap (:func:`efficonv.kernels.conv_valid`, ``"shift"``)."""
  kh, kw = kernel.shape[:2]
  return kernels.conv_valid(_same_pad(x, kh, kw), kernel, (1, 1), (1, 1), "shift")


def dense_methods(backend: str | None = None) -> tuple[DenseMethod, ...]:
  """Every dense implementation that is tried, in a fixed order.

  Args:
    backend: the JAX backend the methods will run on (default: :func:`jax.default_backend`); ``lax_eigen``,
      an XLA *CPU* option, is left out on any other backend.
  """
  backend = jax.default_backend() if backend is None else backend
  return (
    DenseMethod("lax", kernels.conv, {}),
    *((DenseMethod("lax_eigen", kernels.conv, EIGEN_CONV_OPTIONS),) if backend == "cpu" else ()),
    DenseMethod("im2col", im2col_conv, {}),
    DenseMethod("shift", shift_conv, {}),
  )


def with_pass(fn: Callable[..., Array], pass_name: str) -> Callable[..., Any]:
  """Wraps ``fn(x, params)`` into the timed pass.

  ``"forward"`` is ``fn`` itself; ``"forward_backward"`` is
  ``(x, params, cotangent) -> (y, (dx, dparams))``: the forward pass and the
  gradients with respect to the input and every parameter, as one training
  step needs them.

  Raises:
    ValueError: naming ``pass_name`` when it is not in :data:`PASSES`.
  """
  if pass_name == "forward":
    return fn
  if pass_name != "forward_backward":
    raise ValueError(f"pass_name must be one of {PASSES}, got {pass_name!r}")

  def forward_backward(x: Array, params: Any, cotangent: Array) -> tuple[Array, Any]:
    y, pullback = jax.vjp(fn, x, params)
    return y, pullback(cotangent)

  return forward_backward


def pass_args(x: Array, params: Any, pass_name: str, cotangent: Array) -> tuple[Any, ...]:
  """The arguments of the function :func:`with_pass` returns."""
  return (x, params) if pass_name == "forward" else (x, params, cotangent)
