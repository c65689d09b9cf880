"""Tests of efficonv.cost: hand formulas, jaxpr counts, and XLA's own flop count."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax import lax

import efficonv
from efficonv import cost
from efficonv import nnx as enx
from efficonv.kernels.conv import conv as dense_conv
from efficonv.kernels.factorized import separable_conv

C_IN, C_OUT = 6, 8
X_SHAPE = (2, 9, 11, C_IN)  # odd, unequal H and W so that a swapped axis shows up
KH, KW = 3, 5  # non-square for the same reason


def _normal(i: int, shape: tuple[int, ...]) -> jax.Array:
  return jax.random.normal(jax.random.key(i), shape)


def _formats() -> dict[str, efficonv.Format]:
  return {
    "cp": efficonv.CP(_normal(0, (C_IN, 3)), _normal(1, (KH, 3)), _normal(2, (KW, 3)), _normal(3, (3, C_OUT))),
    "tucker2": efficonv.Tucker2(_normal(0, (C_IN, 3)), _normal(1, (KH, KW, 3, 2)), _normal(2, (2, C_OUT))),
    "spatial": efficonv.Spatial(_normal(0, (KH, C_IN, 4)), _normal(1, (KW, 4, C_OUT))),
    "separable": efficonv.Separable(_normal(0, (KH, KW, C_IN, 2)), _normal(1, (2 * C_IN, C_OUT))),
    # in_modes (2, 3), out_modes (4, 2), ranks (2, 3).
    "tt": efficonv.TT(_normal(0, (KH, KW, 2)), (_normal(1, (2, 2, 4, 3)), _normal(2, (3, 3, 2, 1)))),
  }


FORMATS = _formats()
GEOMETRIES = [("VALID", 1), ("VALID", 2), ("SAME", 1), ("SAME", 2), (((2, 0), (1, 3)), 1)]


def _out_and_padded_width(fmt: efficonv.Format, padding: Any, stride: int) -> tuple[int, int, int]:
  """(H', W', padded W) from the conv's actual output shape, independently of efficonv's geometry code."""
  out = jax.eval_shape(lambda x: fmt.conv(x, strides=stride, padding=padding, implementation="reconstructed"), _x())
  ho, wo = out.shape[1:3]
  if padding == "VALID":
    wp = X_SHAPE[2]
  elif padding == "SAME":  # lax pads just enough for the last window: max((W'-1)·s + kw, W)
    wp = max((wo - 1) * stride + KW, X_SHAPE[2])
  else:
    wp = X_SHAPE[2] + sum(padding[1])
  return ho, wo, wp


def _x() -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(X_SHAPE, jnp.float32)


def _hand_macs(name: str, padding: Any, stride: int) -> int:
  """MACs of each factorized scheme, written from the papers' step-by-step costs."""
  n, h, w, c = X_SHAPE
  s = C_OUT
  ho, wo, wp = _out_and_padded_width(FORMATS[name], padding, stride)
  out_pixels = n * ho * wo
  if name == "cp":  # 1×1 at input resolution, kh×1 depthwise (full width), 1×kw depthwise, 1×1
    r = 3
    return n * h * w * c * r + n * ho * wp * r * KH + out_pixels * r * KW + out_pixels * r * s
  if name == "tucker2":
    r1, r2 = 3, 2
    return n * h * w * c * r1 + out_pixels * KH * KW * r1 * r2 + out_pixels * r2 * s
  if name == "spatial":
    k = 4
    return n * ho * wp * KH * c * k + out_pixels * KW * k * s
  if name == "separable":
    m = 2
    return out_pixels * KH * KW * c * m + out_pixels * c * m * s
  if name == "tt":  # depthwise spatial core with multiplier r0, then cores (r0,c1,s1,r1), (r1,c2,s2,1)
    return out_pixels * (KH * KW * c * 2 + 3 * 2 * 2 * 4 * 3 + 4 * 3 * 3 * 2 * 1)
  raise AssertionError(name)


def _hand_params(name: str) -> int:
  return {
    "cp": 3 * (C_IN + KH + KW + C_OUT),
    "tucker2": C_IN * 3 + KH * KW * 3 * 2 + 2 * C_OUT,
    "spatial": KH * C_IN * 4 + KW * 4 * C_OUT,
    "separable": KH * KW * C_IN * 2 + 2 * C_IN * C_OUT,
    "tt": KH * KW * 2 + 2 * 2 * 4 * 3 + 3 * 3 * 2,
  }[name]


def _xla_flops(fn: Any, *args: Any) -> float:
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # a list of per-module dicts in some jax versions
    analysis = analysis[0]
  return float(analysis["flops"])


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize(("padding", "stride"), GEOMETRIES)
def test_format_macs_and_params_match_hand_formulas(name: str, padding: Any, stride: int) -> None:
  fmt = FORMATS[name]
  assert cost.macs(fmt, X_SHAPE, strides=stride, padding=padding) == _hand_macs(name, padding, stride)
  assert cost.params(fmt) == _hand_params(name)


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("depthwise", ["xla", "shift"])
@pytest.mark.parametrize(("padding", "stride"), [("SAME", 2), ("VALID", 1)])
def test_format_macs_equal_traced_factorized_path(name: str, depthwise: str, padding: str, stride: int) -> None:
  # The format's formula and the jaxpr of what its factorized path runs must agree; on the
  # shift path this needs the marked elementwise multiplies to be counted.
  fmt = FORMATS[name]

  def run(x: jax.Array) -> jax.Array:
    return fmt.conv(x, strides=stride, padding=padding, implementation="factorized", depthwise_implementation=depthwise)

  assert cost.macs_of_fn(run, _x()) == cost.macs(fmt, X_SHAPE, strides=stride, padding=padding)


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("stride", [1, 2])
def test_xla_flops_are_twice_format_macs_without_padding(name: str, stride: int) -> None:
  # With depthwise_implementation="xla" every step is a conv or a dot, and XLA's HloCostAnalysis
  # counts 2 flops per conv/dot MAC. Without padding no tap is skipped, so the relation is exact.
  fmt = FORMATS[name]
  x = jnp.ones(X_SHAPE)

  def run(x: jax.Array) -> jax.Array:
    return fmt.conv(x, strides=stride, padding="VALID", implementation="factorized", depthwise_implementation="xla")

  assert _xla_flops(run, x) == 2 * cost.macs(fmt, X_SHAPE, strides=stride, padding="VALID")


def test_xla_flops_of_shift_depthwise_count_adds_once_per_tap_but_the_first() -> None:
  # Shift-and-add does kh·kw multiplies and kh·kw - 1 adds per output element, then one identity
  # reduce_precision (the fusion fence of efficonv.kernels.depthwise); XLA counts each elementwise op as
  # 1 flop, so flops = 2·MACs - (depthwise outputs) + (depthwise outputs). The 1×1 is a dot (2 per MAC).
  fmt = FORMATS["separable"]
  x = jnp.ones(X_SHAPE)

  def run(x: jax.Array) -> jax.Array:
    return separable_conv(x, fmt.depthwise, fmt.pointwise, padding="VALID", depthwise_implementation="shift")

  n, h, w, c = X_SHAPE
  depthwise_outputs = n * (h - KH + 1) * (w - KW + 1) * c * 2
  assert _xla_flops(run, x) == 2 * cost.macs(fmt, X_SHAPE, padding="VALID") - depthwise_outputs + depthwise_outputs


def _valid_taps(n_in: int, k: int, stride: int, dilation: int, lo: int, hi: int) -> int:
  """Number of (output position, kernel tap) pairs along one axis that land on real input."""
  n_out = (n_in + lo + hi - ((k - 1) * dilation + 1)) // stride + 1
  return sum(0 <= o * stride + t * dilation - lo < n_in for o in range(n_out) for t in range(k))


@pytest.mark.parametrize(
  ("padding", "stride", "dilation", "pads"),
  [
    ("VALID", 1, 1, ((0, 0), (0, 0))),
    ("SAME", 1, 1, ((1, 1), (2, 2))),
    ("SAME", 2, 1, ((1, 1), (2, 2))),
    (((2, 1), (0, 3)), 1, 2, ((2, 1), (0, 3))),
  ],
)
def test_dense_kernel_macs_and_xla_flops(padding: Any, stride: int, dilation: int, pads: Any) -> None:
  kernel = _normal(0, (KH, KW, C_IN, C_OUT))
  n, h, w, _ = X_SHAPE
  ho = (h + sum(pads[0]) - (KH - 1) * dilation - 1) // stride + 1
  wo = (w + sum(pads[1]) - (KW - 1) * dilation - 1) // stride + 1
  if padding == "SAME":
    assert (ho, wo) == (-(-h // stride), -(-w // stride))
  nominal = n * ho * wo * KH * KW * C_IN * C_OUT
  assert cost.macs(kernel, X_SHAPE, strides=stride, padding=padding, dilation=dilation) == nominal
  assert cost.params(kernel) == KH * KW * C_IN * C_OUT

  def run(x: jax.Array) -> jax.Array:
    return dense_conv(x, kernel, strides=stride, padding=padding, dilation=dilation)

  # XLA's conv cost skips the taps that fall on padding: exactly 2 flops per MAC that reads real input.
  on_input = (
    n * _valid_taps(h, KH, stride, dilation, *pads[0]) * _valid_taps(w, KW, stride, dilation, *pads[1]) * C_IN * C_OUT
  )
  assert _xla_flops(run, jnp.ones(X_SHAPE)) == 2 * on_input
  assert cost.macs_of_fn(run, _x()) == nominal


@pytest.mark.parametrize(
  ("kwargs", "out_hw"),
  [
    ({}, (9, 11)),
    ({"strides": 2, "padding": "VALID"}, (4, 4)),
    ({"feature_group_count": 2, "use_bias": False}, (9, 11)),
    ({"kernel_dilation": 2, "padding": "CIRCULAR"}, (9, 11)),
    ({"strides": (1, 3), "padding": ((1, 0), (2, 2))}, (8, 4)),
  ],
)
def test_nnx_conv_params_and_macs(kwargs: dict[str, Any], out_hw: tuple[int, int]) -> None:
  conv = nnx.Conv(C_IN, C_OUT, (KH, KW), rngs=nnx.Rngs(0), **kwargs)
  groups = kwargs.get("feature_group_count", 1)
  bias = C_OUT if kwargs.get("use_bias", True) else 0
  assert cost.params(conv) == KH * KW * (C_IN // groups) * C_OUT + bias
  # Bias adds are not MACs.
  assert cost.macs(conv, X_SHAPE) == X_SHAPE[0] * out_hw[0] * out_hw[1] * KH * KW * (C_IN // groups) * C_OUT
  assert conv(jnp.ones(X_SHAPE)).shape[1:3] == out_hw


class _Net(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(C_IN, 4, (3, 3), strides=2, rngs=rngs)
    self.norm = nnx.BatchNorm(4, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.cp = enx.CPConv(4, 5, 3, rank=2, implementation="factorized", depthwise_implementation="shift", rngs=rngs)
    self.head = nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.drop(nnx.relu(self.norm(self.conv(x))))
    h = self.cp(h)
    return self.head(jnp.mean(h, axis=(1, 2)))


def test_whole_nnx_model_is_traced_exactly_and_left_untouched() -> None:
  model = _Net(nnx.Rngs(0))
  before = jax.tree.map(lambda a: a, nnx.state(model))
  n = X_SHAPE[0]
  ho, wo = 5, 6  # SAME, stride 2 on 9×11
  conv = n * ho * wo * 3 * 3 * C_IN * 4
  cp = efficonv.CP(*(p[...] for p in (model.cp.first, model.cp.vertical, model.cp.horizontal, model.cp.last)))
  cp_macs = n * ho * wo * 4 * 2 + n * ho * (wo + 2) * 2 * 3 + n * ho * wo * 2 * 3 + n * ho * wo * 2 * 5
  head = n * 5 * 3  # norm, relu, dropout, mean and biases are not MACs
  assert cost.macs(model, X_SHAPE) == conv + cp_macs + head
  assert cost.macs(model.cp, (n, ho, wo, 4)) == cp.macs((n, ho, wo, 4)) == cp_macs
  expected_params = (9 * C_IN * 4 + 4) + (4 + 4) + (cp.params() + 5) + (5 * 3 + 3)
  assert cost.params(model) == expected_params
  # Batch statistics and RNG counters were not updated by the trace.
  for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(nnx.state(model))):
    assert old is new


def _layer(name: str, rngs: nnx.Rngs) -> nnx.Module:
  common: dict[str, Any] = {"strides": 2, "implementation": "factorized", "rngs": rngs}
  if name == "cp":
    return enx.CPConv(C_IN, C_OUT, 3, rank=3, **common)
  if name == "tucker":
    return enx.TuckerConv(C_IN, C_OUT, 3, rank=(3, 2), **common)
  if name == "tt":
    return enx.TTConv(C_IN, C_OUT, 3, rank=(2, 3), in_modes=(2, 3), out_modes=(4, 2), **common)
  if name == "spatial":
    return enx.SpatialConv(C_IN, C_OUT, 3, rank=4, **common)
  if name == "separable":
    return enx.SeparableConv(C_IN, C_OUT, 3, depth_multiplier=2, **common)
  if name == "stacked":
    return enx.StackedConv(C_IN, C_OUT, 5, strides=2, activation=nnx.relu, rngs=rngs)
  if name == "bottleneck":
    return enx.Bottleneck(C_IN, C_OUT, 3, 2, width=3, rngs=rngs)
  raise AssertionError(name)


@pytest.mark.parametrize("name", ["cp", "tucker", "tt", "spatial", "separable", "stacked", "bottleneck"])
def test_layer_cost_protocol_matches_trace(name: str) -> None:
  # cost.macs uses the layer's cost_macs; the trace counts what its __call__ runs. They must agree.
  layer = _layer(name, nnx.Rngs(0))
  assert cost.macs(layer, X_SHAPE) == cost.macs_of_fn(layer, _x()) > 0
  n_params = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(layer, nnx.Param)))
  assert cost.params(layer) == n_params


def test_macs_of_fn_counts_dots_convs_and_control_flow() -> None:
  x = jax.ShapeDtypeStruct((4, 5), jnp.float32)
  w = jax.ShapeDtypeStruct((5, 5), jnp.float32)
  dot = 4 * 5 * 5
  assert cost.macs_of_fn(lambda x, w: jnp.sin(x * 2.0 + 1.0), x, w) == 0  # elementwise only
  assert cost.macs_of_fn(lambda x, w: jax.jit(jax.nn.relu)(x @ w) @ w, x, w) == 2 * dot
  assert cost.macs_of_fn(lambda x, w: lax.fori_loop(0, 3, lambda i, h: h @ w, x), x, w) == 3 * dot
  assert cost.macs_of_fn(lambda x, w: jax.checkpoint(lambda h: h @ w)(x), x, w) == dot
  batched = jax.ShapeDtypeStruct((7, 4, 5), jnp.float32)
  assert cost.macs_of_fn(jax.vmap(lambda x, w: x @ w, in_axes=(0, None)), batched, w) == 7 * dot
  same = lambda p, x, w: lax.cond(p, lambda h: h @ w, lambda h: -(h @ w), x)  # noqa: E731
  assert cost.macs_of_fn(same, True, x, w) == dot


def test_macs_of_fn_grouped_conv_gradient() -> None:
  # The weight gradient of a grouped conv is a conv with batch_group_count; it costs the forward's MACs.
  x = jax.ShapeDtypeStruct((2, 7, 6, 4), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 2, 2, 6), jnp.float32)

  def conv(x: jax.Array, k: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(
      x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2
    )

  forward = 2 * 5 * 5 * 3 * 2 * 2 * 6
  assert cost.macs_of_fn(conv, x, k) == forward
  assert cost.macs_of_fn(jax.grad(lambda x, k: conv(x, k).sum(), argnums=1), x, k) == 2 * forward


def test_macs_of_fn_refuses_what_it_cannot_count() -> None:
  x = jax.ShapeDtypeStruct((4, 5), jnp.float32)
  w = jax.ShapeDtypeStruct((5, 5), jnp.float32)

  def loop(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.while_loop(lambda h: h.sum() < 10.0, lambda h: h @ w, x)

  with pytest.raises(ValueError, match="while loop"):
    cost.macs_of_fn(loop, x, w)

  def branches(p: jax.Array, x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.cond(p, lambda h: h @ w, lambda h: h, x)

  with pytest.raises(ValueError, match="cond"):
    cost.macs_of_fn(branches, True, x, w)
  # A while loop without MACs is fine.
  assert cost.macs_of_fn(lambda x: lax.while_loop(lambda h: h.sum() < 10.0, lambda h: h + 1.0, x), x) == 0


def test_bad_input_raises_value_error_naming_the_argument() -> None:
  fmt = FORMATS["cp"]
  with pytest.raises(ValueError, match="obj must be"):
    cost.params("conv")
  with pytest.raises(ValueError, match="obj must be"):
    cost.macs(object(), X_SHAPE)
  with pytest.raises(ValueError, match="input_shape must be NHWC"):
    cost.macs(fmt, X_SHAPE[1:])
  with pytest.raises(ValueError, match=f"input_shape must have {C_IN} channels"):
    cost.macs(fmt, (*X_SHAPE[:3], C_IN + 1))
  with pytest.raises(ValueError, match="input_shape must be a sequence"):
    cost.macs(fmt, jnp.ones(X_SHAPE))
  with pytest.raises(ValueError, match="obj as a dense kernel must be HWIO"):
    cost.macs(jnp.ones((3, C_IN, C_OUT)), X_SHAPE)
  with pytest.raises(ValueError, match="padding"):
    cost.macs(fmt, X_SHAPE, padding="FULL")
  conv = nnx.Conv(C_IN, C_OUT, (3, 3), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="strides applies to formats"):
    cost.macs(conv, X_SHAPE, strides=2)
  with pytest.raises(ValueError, match=f"input_shape must have {C_IN} channels"):
    cost.macs(conv, (*X_SHAPE[:3], 3))
  with pytest.raises(ValueError, match="input_shape must be"):
    cost.macs(conv, (2, 5, 9, 11, C_IN))
  with pytest.raises(ValueError, match=r"input_shape .* is not an input _Net accepts"):
    cost.macs(_Net(nnx.Rngs(0)), (2, 9, C_IN))
  layer = enx.CPConv(C_IN, C_OUT, 3, rank=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="padding applies to formats"):
    cost.macs(layer, X_SHAPE, padding="VALID")


def test_a_stack_of_convs_counts_every_layer() -> None:
  @nnx.split_rngs(splits=3)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def create(rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(C_IN, C_OUT, (KH, KW), rngs=rngs)

  # Initialized in one compiled program each (eagerly, every initializer op would compile on its own).
  stack = nnx.merge(
    nnx.graphdef(nnx.eval_shape(create, nnx.Rngs(0))), jax.jit(lambda: nnx.state(create(nnx.Rngs(0))))()
  )
  one = nnx.eval_shape(lambda: nnx.Conv(C_IN, C_OUT, (KH, KW), rngs=nnx.Rngs(0)))
  assert cost.params(stack) == 3 * cost.params(one)
  assert cost.macs(stack, X_SHAPE) == 3 * cost.macs(one, X_SHAPE)
