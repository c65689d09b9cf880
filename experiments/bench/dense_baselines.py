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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from efficonv import kernels
from efficonv.compression import replace_dense
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

DENSE_BUILDS = ("nnx", "auto", "im2col")
"""Dense builds of a network: its own ``nnx.Conv`` (``nnx``), or every conv an :class:`efficonv.nnx.Conv`
with that implementation (:func:`efficonv.compression.replace_dense`)."""

COMPILE_SETTINGS = ("default", "no_ynn", "eigen")
"""XLA compile settings: the default, no YNNPACK fusion, and XLA's own (Eigen) convolutions (CPU only)."""


def compile_settings(backend: str | None = None) -> dict[str, dict[str, str]]:
  """Compile setting → XLA options (on a GPU/TPU only the default: the others are XLA:CPU options)."""
  if (backend or jax.default_backend()) != "cpu":
    return {"default": {}}
  return {"default": {}, "no_ynn": dict(NO_YNN_FUSION_OPTIONS), "eigen": dict(EIGEN_CONV_OPTIONS)}


def dense_build_name(build: str, setting: str) -> str:
  """``dense`` / ``dense/efficonv`` / ``dense/efficonv_im2col``, with ``/<setting>`` unless the default."""
  base = {"nnx": "dense", "auto": "dense/efficonv"}.get(build, f"dense/efficonv_{build}")
  return base if setting == "default" else f"{base}/{setting}"


def dense_network_builds(
  model: Any,
  builds: Sequence[str] = ("nnx", "auto"),
  settings: Sequence[str] = COMPILE_SETTINGS,
  backend: str | None = None,
) -> dict[str, tuple[Any, dict[str, str]]]:
  """Every dense build of ``model`` that is timed; the fastest one is the baseline of a network's speedups.

  One definition for the whole-network benchmark and the compression pipeline, so that both search the
  same space: each of ``builds`` (:data:`DENSE_BUILDS`) compiled under each of ``settings`` that the
  backend has (:func:`compile_settings`). All builds compute the same function with the same weights.

  Args:
    model: the dense :class:`flax.nnx.Module`.
    builds: of :data:`DENSE_BUILDS`.
    settings: of :data:`COMPILE_SETTINGS`; those the backend lacks are left out.
    backend: the backend compiled for (default: JAX's).

  Returns:
    ``{name: (model, compiler options)}`` in build-major order, named by :func:`dense_build_name`; a build's
    model object is shared by its settings.

  Raises:
    ValueError: naming ``builds`` or ``settings`` when empty or not of the lists above.
  """
  if not builds or any(b not in DENSE_BUILDS for b in builds):
    raise ValueError(f"builds must name builds of {DENSE_BUILDS}, got {list(builds)}")
  if not settings or any(s not in COMPILE_SETTINGS for s in settings):
    raise ValueError(f"settings must name settings of {COMPILE_SETTINGS}, got {list(settings)}")
  available = compile_settings(backend)
  out: dict[str, tuple[Any, dict[str, str]]] = {}
  for build in builds:
    built = model if build == "nnx" else replace_dense(model, build)
    for setting in (s for s in settings if s in available):
      out[dense_build_name(build, setting)] = (built, available[setting])
  return out


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
