"""Shared helpers of the NNX layer tests: one small configuration per layer and an independent reference.

The reference conv is written here from :func:`jax.lax.conv_general_dilated`
and :func:`jax.numpy.pad` alone (``"CIRCULAR"`` padded as :class:`flax.nnx.Conv`
does), never through :mod:`efficonv.kernels`, so a padding bug in the layers
cannot hide in it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from efficonv import nnx as enn
from efficonv.kernels._options import PaddingLike
from efficonv.typing import Array

IN_FEATURES, OUT_FEATURES = 6, 4  # TT: in_modes (2, 3), out_modes (2, 2)
INPUT_SHAPE = (2, 10, 9, IN_FEATURES)  # non-square

# A random bias: with the default zeros a dropped bias would go unnoticed.
RANDOM_BIAS = nnx.initializers.normal(1.0)
# Each layer with a non-square kernel and ranks that are neither 1 nor full.
LAYER_OPTIONS: dict[str, dict[str, Any]] = {
  name: {**options, "bias_init": RANDOM_BIAS}
  for name, options in {
    "SpatialConv": {"kernel_size": (3, 2), "rank": 3},
    "StackedConv": {"kernel_size": (5, 3), "small_kernel_size": (3, 2), "hidden_features": 5},
    "Bottleneck": {"kernel_size": (3, 2), "width": (3, 2), "activation": None},
    "SeparableConv": {"kernel_size": (2, 3), "depth_multiplier": 2},
    "CPConv": {"kernel_size": (3, 2), "rank": 3},
    "TuckerConv": {"kernel_size": (2, 3), "rank": (3, 2)},
    "TTConv": {"kernel_size": (3, 2), "rank": (2, 3), "in_modes": (2, 3), "out_modes": (2, 2)},
  }.items()
}
LAYER_NAMES = tuple(LAYER_OPTIONS)
# Layers built around a format (all but the blocks StackedConv and Bottleneck): they take `implementation`.
BLOCK_NAMES = ("StackedConv", "Bottleneck")
FORMAT_LAYER_NAMES = tuple(name for name in LAYER_NAMES if name not in BLOCK_NAMES)
IMPLEMENTATIONS = ("factorized", "reconstructed", "auto")

STRIDES = (1, 2)
PADDINGS: tuple[PaddingLike, ...] = ("SAME", "VALID", ((1, 2), (0, 1)), "CIRCULAR")
DILATIONS = (1, 2)
CONV_OPTIONS: list[dict[str, Any]] = [
  {"strides": s, "padding": p, "kernel_dilation": d} for s, p, d in itertools.product(STRIDES, PADDINGS, DILATIONS)
]


# Tests compile many tiny programs whose run time is negligible; XLA's CPU backend optimizations
# would triple their compile time (random initializers above all) without changing what is tested.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def run_compiled(fn: Callable[..., Any], *args: Any) -> Any:
  """``jax.jit(fn)(*args)``, compiled with :data:`FAST_COMPILE`."""
  return jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args)


def construct(name: str, seed: int = 0, **overrides: Any) -> nnx.Module:
  """Calls the constructor of ``name`` with :data:`LAYER_OPTIONS` and ``overrides`` (eagerly)."""
  options = {**LAYER_OPTIONS[name], **overrides}
  kernel_size = options.pop("kernel_size")
  return getattr(enn, name)(IN_FEATURES, OUT_FEATURES, kernel_size, **options, rngs=nnx.Rngs(seed))


# Options that change how a layer runs but not its parameters.
CALL_OPTIONS = frozenset(
  {
    "strides",
    "padding",
    "input_dilation",
    "kernel_dilation",
    "implementation",
    "depthwise_implementation",
    "precision",
    "dtype",
    "promote_dtype",
    "preferred_element_type",
  }
)
_PARAMS_CACHE: dict[tuple[Any, ...], nnx.State] = {}


def make_layer(name: str, seed: int = 0, **overrides: Any) -> nnx.Module:
  """The layer ``name`` of :data:`LAYER_OPTIONS` on ``IN_FEATURES → OUT_FEATURES`` channels.

  The constructor runs abstractly for the graph (so every option is
  validated and stored by the real code) and, for the parameters, in one
  compiled program per distinct initialization (cached: drawing the random
  factors eagerly compiles one program per factor shape, the slowest part of
  these tests). Each call returns a layer with its own, fresh variables.

  Args:
    name: a class name of :mod:`efficonv.nnx`.
    seed: ``nnx.Rngs`` seed.
    **overrides: constructor keywords replacing or extending the defaults.

  Returns:
    The layer.
  """
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: construct(name, seed, **overrides)))
  init_options = {k: v for k, v in overrides.items() if k not in CALL_OPTIONS}
  key = (name, seed, *sorted(init_options.items()))
  if key not in _PARAMS_CACHE:
    _PARAMS_CACHE[key] = run_compiled(lambda: nnx.state(construct(name, seed, **init_options)))
  # tree.map rebuilds the Variables: layers never share (and so never mutate) each other's.
  return nnx.merge(graphdef, jax.tree.map(lambda a: a, _PARAMS_CACHE[key]))


def build_compiled(factory: Callable[..., nnx.Module], *args: Any) -> nnx.Module:
  """``factory(*args)``, its parameters computed in one compiled program (as :func:`make_layer`)."""
  graphdef = nnx.graphdef(nnx.eval_shape(factory, *args))
  return nnx.merge(graphdef, run_compiled(lambda *a: nnx.state(factory(*a)), *args))


def layer_variants(name: str, options: Sequence[dict[str, Any]], seed: int = 0, **common: Any) -> list[nnx.Module]:
  """The layer ``name`` once per entry of ``options`` (each through the real constructor), same parameters."""
  return [make_layer(name, seed, **common, **extra) for extra in options]


def random_input(seed: int = 1, shape: Sequence[int] = INPUT_SHAPE) -> Array:
  return jax.random.normal(jax.random.key(seed), tuple(shape), jnp.float32)


def effective_size(kernel: int, dilation: int) -> int:
  return (kernel - 1) * dilation + 1


def expected_hw(
  in_hw: Sequence[int], kernel_size: Sequence[int], strides: int, padding: PaddingLike, dilation: int
) -> tuple[int, int]:
  """Output ``(H', W')`` by the textbook formulas (independent of the layers' padding code)."""
  out = []
  for axis, (n, k) in enumerate(zip(in_hw, kernel_size)):
    e = effective_size(k, dilation)
    if padding in ("SAME", "CIRCULAR"):
      out.append(-(-n // strides))
    elif padding == "VALID":
      out.append((n - e) // strides + 1)
    else:
      lo, hi = padding[axis]  # type: ignore[index]
      out.append((n + lo + hi - e) // strides + 1)
  return out[0], out[1]


def reference_conv(
  x: Array, kernel: Array, bias: Array | None, *, strides: int, padding: PaddingLike, kernel_dilation: int
) -> Array:
  """``lax.conv_general_dilated`` (NHWC/HWIO, ``precision="highest"``) plus bias."""
  if padding == "CIRCULAR":
    kh, kw = kernel.shape[:2]
    eh, ew = effective_size(kh, kernel_dilation), effective_size(kw, kernel_dilation)
    x = jnp.pad(x, ((0, 0), ((eh - 1) // 2, eh // 2), ((ew - 1) // 2, ew // 2), (0, 0)), mode="wrap")
    padding = "VALID"
  y = jax.lax.conv_general_dilated(
    x,
    kernel,
    window_strides=(strides, strides),
    padding=padding,  # type: ignore[arg-type]
    rhs_dilation=(kernel_dilation, kernel_dilation),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=jax.lax.Precision.HIGHEST,
  )
  return y if bias is None else y + bias.reshape(1, 1, 1, -1)


def bias_of(layer: nnx.Module) -> Array | None:
  bias = getattr(layer, "bias", None)
  if bias is None:  # StackedConv keeps its (only linear-case) bias on the last small conv
    biases = getattr(layer, "biases", None)
    bias = biases[-1] if biases is not None else None
  return None if bias is None else bias[...]
