"""The NNX layers as modules: ``from_format``/``.format``, split/merge under ``jit``, gradients, training, dtypes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import efficonv
from efficonv import nnx as enn

from ._layers import (
  FAST_COMPILE,
  FORMAT_LAYER_NAMES,
  INPUT_SHAPE,
  LAYER_NAMES,
  OUT_FEATURES,
  bias_of,
  build_compiled,
  construct,
  make_layer,
  random_input,
  run_compiled,
)

FORMAT_TYPES = {
  "SpatialConv": efficonv.Spatial,
  "SeparableConv": efficonv.Separable,
  "CPConv": efficonv.CP,
  "TuckerConv": efficonv.Tucker2,
  "TTConv": efficonv.TT,
}


def _leaves(fmt: efficonv.Format) -> list[np.ndarray]:
  return [np.asarray(a) for a in jax.tree.leaves(fmt)]


@pytest.mark.parametrize("name", FORMAT_LAYER_NAMES)
def test_format_and_from_format_round_trip(name: str) -> None:
  source = make_layer(name)
  fmt = source.format
  assert type(fmt) is FORMAT_TYPES[name] is type(source).format_type
  bias = jnp.arange(OUT_FEATURES, dtype=jnp.float32) - 1.5
  options = {"strides": (2, 1), "padding": "CIRCULAR", "kernel_dilation": (1, 2), "precision": "highest"}
  layer = build_compiled(lambda fmt, bias: type(source).from_format(fmt, bias=bias, **options), fmt, bias)
  assert type(layer) is type(source)
  # The parameters are the format's arrays, the bias is set, the options are stored.
  assert type(layer.format) is type(fmt)
  for got, want in zip(_leaves(layer.format), _leaves(fmt), strict=True):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(np.asarray(layer.bias[...]), np.asarray(bias))
  assert (layer.strides, layer.kernel_dilation, layer.padding) == ((2, 1), (1, 2), "CIRCULAR")
  assert (layer.in_features, layer.out_features, layer.kernel_size) == (
    fmt.in_features,
    fmt.out_features,
    fmt.kernel_size,
  )
  # And it computes the format's conv plus the bias.
  x = random_input()

  def outputs(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    conv = fmt.conv(x, strides=(2, 1), padding="CIRCULAR", dilation=(1, 2), precision="highest")
    return layer(x), conv + bias.reshape(1, 1, 1, -1)

  y, expected = run_compiled(outputs, x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", [nnx.relu, None], ids=["relu", "linear"])
def test_bottleneck_is_a_standalone_block_of_three_convs(activation: Any) -> None:
  """Not a Tucker-2 layer: no format, plan or implementation to choose; its own three kernels and biases."""
  layer = make_layer("Bottleneck", activation=activation)
  assert not isinstance(layer, enn.FactorizedConv)
  assert not hasattr(layer, "from_format") and not hasattr(layer, "plan") and not hasattr(layer, "implementation")
  assert (layer.first.shape, layer.core.shape, layer.last.shape) == ((6, 3), (3, 2, 3, 2), (2, OUT_FEATURES))
  params = set(nnx.state(layer, nnx.Param).keys())
  inner = {"first_bias", "core_bias"}
  assert params == {"first", "core", "last", "bias"} | (inner if activation else set())
  # Linear, it is the Tucker-2 conv of its kernels (and so has a dense kernel).
  if activation is None:
    x = random_input()
    factors = layer.factors
    assert isinstance(factors, efficonv.Tucker2)
    y, expected = run_compiled(
      lambda x: (layer(x), factors.conv(x, precision="highest") + layer.bias[...].reshape(1, 1, 1, -1)), x
    )
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(layer.to_dense()), np.asarray(factors.to_dense()), rtol=1e-6)


def test_bottleneck_width_defaults_to_a_quarter_and_may_exceed_the_channels() -> None:
  layer = nnx.eval_shape(lambda: enn.Bottleneck(16, 32, 3, rngs=nnx.Rngs(0)))
  assert layer.width == (8, 8) and layer.core.shape == (3, 3, 8, 8)
  wide = nnx.eval_shape(lambda: enn.Bottleneck(4, 4, 3, width=(16, 8), rngs=nnx.Rngs(0)))  # an inverted bottleneck
  assert (wide.first.shape, wide.core.shape, wide.last.shape) == ((4, 16), (3, 3, 16, 8), (8, 4))


@pytest.mark.parametrize("activation", [nnx.relu, None], ids=["relu", "linear"])
def test_bottleneck_cost(activation: Any) -> None:
  """Parameters: three kernels and their biases; MACs: 1×1 at the input size, k×k and 1×1 at the output size."""
  layer = nnx.eval_shape(
    lambda: enn.Bottleneck(6, 4, (3, 2), (2, 1), width=(3, 5), activation=activation, padding="VALID", rngs=nnx.Rngs(0))
  )
  biases = (3 + 5 + 4) if activation else 4
  assert layer.cost_params() == 6 * 3 + 3 * 2 * 3 * 5 + 5 * 4 + biases
  assert efficonv.cost.params(layer) == layer.cost_params()
  n, h, w = 2, 10, 9
  ho, wo = (h - 3) // 2 + 1, (w - 2) // 1 + 1
  expected = n * h * w * 6 * 3 + n * ho * wo * (3 * 2 * 3 * 5 + 5 * 4)
  assert layer.cost_macs((n, h, w, 6)) == expected
  assert efficonv.cost.macs(layer, (n, h, w, 6)) == expected


def test_from_format_param_dtype_and_no_bias() -> None:
  fmt = make_layer("CPConv").format
  layer = nnx.eval_shape(lambda: enn.CPConv.from_format(fmt, use_bias=False, param_dtype=jnp.bfloat16))
  assert layer.bias is None
  assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(layer, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_split_merge_jit_forward(name: str) -> None:
  """The pure functional form: ``nnx.split`` → ``jax.jit`` of ``merge(graphdef, state)(x)``, state as an argument."""
  layer = make_layer(name, strides=2)
  graphdef, state = nnx.split(layer)
  x = random_input()
  forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)).lower(state, x).compile(FAST_COMPILE)
  # A new state through the same compiled program: shift the output bias by one.
  shifted = nnx.merge(graphdef, jax.tree.map(lambda a: a, state))
  bias = shifted.biases[-1] if name == "StackedConv" else shifted.bias
  bias[...] = bias[...] + 1
  y, y_shifted = forward(state, x), forward(nnx.state(shifted), x)
  assert y.shape == (INPUT_SHAPE[0], 5, 5, OUT_FEATURES)
  np.testing.assert_allclose(np.asarray(y_shifted), np.asarray(y) + 1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(y), np.asarray(run_compiled(layer, x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["CPConv", "TTConv"])
def test_eager_call_equals_jit(name: str) -> None:
  """Without any transform (the factorized depthwise steps run op by op)."""
  layer = make_layer(name, implementation="factorized", padding="CIRCULAR")
  x = random_input()
  np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(run_compiled(layer, x)), rtol=1e-5, atol=1e-5)


def _loss_fn(graphdef: nnx.GraphDef, rest: nnx.State) -> Any:
  def loss(params: nnx.State, x: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.mean((nnx.merge(graphdef, params, rest)(x) - target) ** 2)

  return loss


GRAD_CASES = [(name, {}) for name in LAYER_NAMES] + [
  ("Bottleneck", {"activation": nnx.relu}),
  ("StackedConv", {"activation": nnx.relu}),
]


@pytest.mark.parametrize(("name", "extra"), GRAD_CASES, ids=[n + ("-relu" if e else "") for n, e in GRAD_CASES])
def test_grad_wrt_params_is_finite_and_reaches_every_param(name: str, extra: dict) -> None:
  layer = make_layer(name, padding="CIRCULAR", strides=2, **extra)
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
  x = random_input()
  grads = run_compiled(jax.grad(_loss_fn(graphdef, rest)), params, x, jnp.zeros((2, 5, 5, OUT_FEATURES)))
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  for path, g in jax.tree.leaves_with_path(grads):
    assert np.all(np.isfinite(np.asarray(g))), path
    assert np.any(np.asarray(g) != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("name", ["CPConv", "TTConv"])
def test_sgd_through_nnx_optimizer_reduces_the_loss(name: str) -> None:
  """A few SGD steps on a tiny regression (a teacher of the same kind) lower the loss; every factor moves."""
  student = make_layer(name)
  teacher = make_layer(name, seed=1)
  x = random_input()
  target = run_compiled(teacher, x)
  before = jax.tree.map(np.asarray, nnx.state(student, nnx.Param))
  optimizer = nnx.Optimizer(student, optax.sgd(0.1), wrt=nnx.Param)

  @nnx.jit
  def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, target: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  initial = float(train_step(student, optimizer, x, target))
  for _ in range(24):
    train_step(student, optimizer, x, target)
  final = float(run_compiled(lambda x: jnp.mean((student(x) - target) ** 2), x))
  assert final < 0.5 * initial, (initial, final)
  after = nnx.state(student, nnx.Param)
  for (path, old), new in zip(jax.tree.leaves_with_path(before), jax.tree.leaves(after), strict=True):
    assert not np.allclose(old, np.asarray(new)), f"{jax.tree_util.keystr(path)} was not trained"
  if name == "TTConv":
    assert isinstance(student.cores, nnx.List) and len(student.cores) == 2


def test_sgd_pure_split_merge_step_reduces_the_loss() -> None:
  """The same with plain ``optax`` on the ``nnx.split`` state (the functional training loop)."""
  student, teacher = make_layer("TTConv"), make_layer("TTConv", seed=1)
  graphdef, params, rest = nnx.split(student, nnx.Param, ...)
  x = random_input()
  target = run_compiled(teacher, x)
  loss = _loss_fn(graphdef, rest)
  tx = optax.sgd(0.1)

  def train(params: nnx.State) -> tuple[jax.Array, jax.Array, nnx.State]:
    def step(_: int, carry: tuple[nnx.State, optax.OptState]) -> tuple[nnx.State, optax.OptState]:
      params, opt_state = carry
      updates, opt_state = tx.update(jax.grad(loss)(params, x, target), opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    trained, _ = jax.lax.fori_loop(0, 25, step, (params, tx.init(params)))
    return loss(params, x, target), loss(trained, x, target), trained

  initial, final, trained = run_compiled(train, params)
  assert float(final) < 0.5 * float(initial)
  nnx.update(student, trained)
  np.testing.assert_allclose(np.asarray(student.cores[1][...]), np.asarray(trained["cores"][1][...]))


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_bfloat16_computation_is_close_to_float32(name: str) -> None:
  layer = make_layer(name)
  low = make_layer(name, dtype=jnp.bfloat16)  # same params
  x = random_input()
  y32, y16 = run_compiled(lambda x: (layer(x), low(x)), x)
  assert y32.dtype == jnp.float32 and y16.dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(low, nnx.Param))} == {jnp.dtype(jnp.float32)}
  error = np.linalg.norm(np.asarray(y16, np.float32) - np.asarray(y32)) / np.linalg.norm(np.asarray(y32))
  assert error < 2e-2, error


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_param_dtype_bfloat16_stores_bfloat16_params(name: str) -> None:
  """Shapes and dtypes only, so everything runs abstractly (``eval_shape``)."""
  layer = nnx.eval_shape(lambda: construct(name, param_dtype=jnp.bfloat16))
  dtypes = {leaf.dtype for leaf in jax.tree.leaves(nnx.state(layer, nnx.Param))}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}
  # Like nnx.Conv: with dtype=None the computation promotes params and inputs.
  for input_dtype in (jnp.bfloat16, jnp.float32):
    x = jax.ShapeDtypeStruct(INPUT_SHAPE, input_dtype)
    out = jax.eval_shape(lambda x: construct(name, param_dtype=jnp.bfloat16)(x), x)
    assert out.dtype == input_dtype


def test_cost_and_plan_are_consistent_with_the_format() -> None:
  layer = make_layer("CPConv", strides=2)
  fmt = layer.format
  assert layer.cost_params() == fmt.params() + OUT_FEATURES
  assert layer.cost_macs(INPUT_SHAPE) == fmt.macs(INPUT_SHAPE, strides=2)
  plan = layer.plan(INPUT_SHAPE)
  assert plan.implementation in ("factorized", "reconstructed")
  forced = make_layer("CPConv", implementation="factorized").plan(INPUT_SHAPE)
  assert (forced.implementation, forced.reason) == ("factorized", "forced by implementation=")
  assert bias_of(layer) is not None
