"""The Linen wrappers: init/apply under ``jit``, shapes, equality with the NNX layers, initialization."""

from __future__ import annotations

import re
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen
from flax import nnx as flax_nnx

import efficonv
from efficonv import linen as eln
from efficonv import nnx as enn

# Tests compile many tiny programs; XLA's CPU optimizations would triple compile time for nothing here.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
IN_FEATURES, FEATURES = 6, 4  # TT: in_modes (2, 3), out_modes (2, 2)
KERNEL_SIZE = (3, 2)
INPUT_SHAPE = (2, 10, 9, IN_FEATURES)

# name: (Linen class, its rank options, the NNX class, the format)
LAYERS: dict[str, tuple[type[linen.Module], dict[str, Any], type, type[efficonv.Format]]] = {
  "CPConv": (eln.CPConv, {"rank": 3}, enn.CPConv, efficonv.CP),
  "TuckerConv": (eln.TuckerConv, {"rank": (3, 2)}, enn.TuckerConv, efficonv.Tucker2),
  "SpatialConv": (eln.SpatialConv, {"rank": 3}, enn.SpatialConv, efficonv.Spatial),
  "SeparableConv": (eln.SeparableConv, {"depth_multiplier": 2}, enn.SeparableConv, efficonv.Separable),
  "TTConv": (eln.TTConv, {"rank": (2, 3), "in_modes": (2, 3), "out_modes": (2, 2)}, enn.TTConv, efficonv.TT),
}
NAMES = tuple(LAYERS)
OPTIONS: list[dict[str, Any]] = [
  {},
  {"strides": 2, "padding": "CIRCULAR", "kernel_dilation": 2},
  {"strides": (1, 2), "padding": ((1, 2), (0, 1))},
  {"padding": "VALID", "kernel_dilation": (2, 1)},
]
RANDOM_BIAS = linen.initializers.normal(1.0)


def run_compiled(fn: Any, *args: Any) -> Any:
  return jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args)


def linen_layer(name: str, **options: Any) -> linen.Module:
  cls, ranks, _, _ = LAYERS[name]
  return cls(features=FEATURES, kernel_size=KERNEL_SIZE, **{**ranks, **options})


def format_of(name: str, params: dict[str, Any]) -> efficonv.Format:
  """The format built from a Linen layer's params (one param per factor, named like the format's fields)."""
  fmt_type = LAYERS[name][3]
  assert set(params) == {*fmt_type._fields, "bias"}
  return fmt_type(*(params[field] for field in fmt_type._fields))


@pytest.mark.parametrize("name", NAMES)
def test_init_apply_jit_equals_the_nnx_layer_from_format(name: str) -> None:
  """Under ``jit``: init, apply, and the NNX layer built ``from_format`` on the same factors agree."""
  x = jax.random.normal(jax.random.key(1), INPUT_SHAPE)

  def run(key: jax.Array, x: jax.Array) -> list[tuple[jax.Array, jax.Array, Any]]:
    results = []
    for options in OPTIONS:
      module = linen_layer(name, precision="highest", bias_init=RANDOM_BIAS, **options)
      variables = module.init(key, x[:1])  # the batch size need not match
      params = variables["params"]
      layer = LAYERS[name][2].from_format(format_of(name, params), bias=params["bias"], precision="highest", **options)
      results.append((module.apply(variables, x), layer(x), variables))
    return results

  for options, (y, expected, variables) in zip(OPTIONS, run_compiled(run, jax.random.key(0), x)):
    conv = linen.Conv(FEATURES, KERNEL_SIZE, **options)  # the shape of the conv it replaces
    shape = jax.eval_shape(lambda x, conv=conv: conv.init_with_output(jax.random.key(0), x)[0], x).shape
    chex.assert_shape([y, expected], shape)
    assert np.any(np.asarray(variables["params"]["bias"]) != 0)
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-5, err_msg=str(options))


@pytest.mark.parametrize("name", NAMES)
def test_dense_reference_and_unbatched_input(name: str) -> None:
  """``apply`` equals ``lax.conv_general_dilated`` with the reconstructed kernel; HWC input works like ``linen.Conv``."""
  module = linen_layer(name, strides=2, padding="VALID", precision="highest", bias_init=RANDOM_BIAS)
  x = jax.random.normal(jax.random.key(2), INPUT_SHAPE)

  def run(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    variables = module.init(jax.random.key(3), x)
    params = variables["params"]
    reference = jax.lax.conv_general_dilated(
      x,
      format_of(name, params).to_dense(precision="highest"),
      (2, 2),
      "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision="highest",
    ) + params["bias"].reshape(1, 1, 1, -1)
    return module.apply(variables, x), reference, module.apply(variables, x[1])

  y, reference, single = run_compiled(run, x)
  chex.assert_shape(y, (2, 4, 4, FEATURES))
  np.testing.assert_allclose(np.asarray(y), np.asarray(reference), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(single), np.asarray(y[1]), rtol=1e-5, atol=1e-5)


# Variance of the initialization (see tests/nnx/test_init.py for the method and the tolerance).
TOL = 0.10
VARIANCE_LAYERS = {
  "CPConv": (eln.CPConv, {"rank": 4}, 4096),
  "TuckerConv": (eln.TuckerConv, {"rank": (2, 3)}, 2048),
  "SpatialConv": (eln.SpatialConv, {"rank": 2}, 2048),
  "SeparableConv": (eln.SeparableConv, {"depth_multiplier": 2}, 1024),
  "TTConv": (eln.TTConv, {"rank": (2, 3), "in_modes": (2, 4), "out_modes": (4, 2)}, 2048),
}


VARIANCE_INPUT = jnp.zeros((1, 4, 4, 8))
FAN_IN = 3 * 3 * 8


@pytest.fixture(scope="module")
def linen_conv_ratio() -> float:
  """``fan_in · mean(W²)`` of ``linen.Conv``'s own LeCun-normal kernel."""
  conv = linen.Conv(8, (3, 3))
  keys = jax.random.split(jax.random.key(1), 256)
  kernels = run_compiled(jax.vmap(lambda k: conv.init(k, VARIANCE_INPUT)["params"]["kernel"]), keys)
  return FAN_IN * float(np.mean(np.asarray(kernels, np.float64) ** 2))


@pytest.mark.parametrize("name", NAMES)
def test_init_has_lecun_variance(name: str, linen_conv_ratio: float) -> None:
  """Per-layer ``fan_in · mean(W²)`` over ``L`` inits (one ``vmap`` over keys) is 1 within 10% (≥ 4 standard errors)."""
  cls, ranks, n_layers = VARIANCE_LAYERS[name]
  module = cls(features=8, kernel_size=(3, 3), **ranks)

  def dense(key: jax.Array) -> jax.Array:
    return format_of(name, module.init(key, VARIANCE_INPUT)["params"]).to_dense()

  kernels = np.asarray(run_compiled(jax.vmap(dense), jax.random.split(jax.random.key(0), n_layers)), np.float64)
  assert kernels.size >= 100_000
  ratios = FAN_IN * np.mean(kernels.reshape(n_layers, -1) ** 2, axis=1)
  mean, se = ratios.mean(), ratios.std(ddof=1) / np.sqrt(n_layers)
  assert se <= mean * TOL / 4, f"too few samples (SE {se:.3f})"
  assert abs(mean - 1) <= TOL, f"variance is {mean:.3f} / fan_in, expected 1 / fan_in"
  assert abs(linen_conv_ratio - 1) <= TOL / 4  # linen.Conv: LeCun normal, measured the same way
  assert abs(mean / linen_conv_ratio - 1) <= TOL


def test_same_init_as_nnx_layer_distribution() -> None:
  """Linen and NNX draw from the same format ``init``: identical factor shapes and dtypes."""
  variables = jax.eval_shape(lambda: linen_layer("TTConv").init(jax.random.key(0), jnp.zeros(INPUT_SHAPE)))
  layer = flax_nnx.eval_shape(
    lambda: enn.TTConv(IN_FEATURES, FEATURES, KERNEL_SIZE, **LAYERS["TTConv"][1], rngs=flax_nnx.Rngs(0))
  )
  # Both flatten in key order: bias, cores[0], cores[1], spatial.
  ours = [(a.shape, a.dtype) for a in jax.tree.leaves(variables["params"])]
  theirs = [(a.shape, a.dtype) for a in jax.tree.leaves(flax_nnx.state(layer, flax_nnx.Param))]
  assert ours == theirs
  assert len(ours) == 4


def test_dtypes() -> None:
  x = jax.ShapeDtypeStruct(INPUT_SHAPE, jnp.float32)
  low_params = linen_layer("CPConv", param_dtype=jnp.bfloat16)
  variables, y = jax.eval_shape(lambda x: low_params.init_with_output(jax.random.key(0), x)[::-1], x)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.bfloat16)}
  assert y.dtype == jnp.float32  # promoted with the input, like linen.Conv
  low_compute = linen_layer("CPConv", dtype=jnp.bfloat16)
  variables, y = jax.eval_shape(lambda x: low_compute.init_with_output(jax.random.key(0), x)[::-1], x)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert y.dtype == jnp.bfloat16


@pytest.mark.parametrize(
  ("overrides", "shape", "argument"),
  [
    ({}, INPUT_SHAPE[-1:], "inputs"),
    ({}, INPUT_SHAPE[1:3], "inputs"),
    ({"rank": 0}, INPUT_SHAPE, "rank"),
    ({"padding": "FULL"}, INPUT_SHAPE, "padding"),
    ({"strides": 0}, INPUT_SHAPE, "strides"),
    ({"implementation": "fast"}, INPUT_SHAPE, "implementation"),
  ],
)
def test_bad_arguments_raise_value_error(overrides: dict, shape: tuple[int, ...], argument: str) -> None:
  module = linen_layer("CPConv", **overrides)
  with pytest.raises(ValueError, match=re.escape(argument)):
    jax.eval_shape(lambda x: module.init(jax.random.key(0), x), jax.ShapeDtypeStruct(shape, jnp.float32))


def test_apply_with_the_wrong_channel_count_names_inputs() -> None:
  module = linen_layer("CPConv")
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(INPUT_SHAPE)))
  variables = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), variables)
  with pytest.raises(ValueError, match=r"inputs must have 6 channels.*got shape \(2, 10, 9, 5\)"):
    module.apply(variables, jnp.zeros((2, 10, 9, 5)))
  with pytest.raises(ValueError, match=r"inputs must have 6 channels.*got shape \(10, 9, 5\)"):
    module.apply(variables, jnp.zeros((10, 9, 5)))


# ---------------------------------------------------------------------------- the blocks
# name: (Linen class, NNX class, kernel size, options); StackedConv's (5, 3) takes two (3, 2) convs.
BLOCKS: dict[str, tuple[type[linen.Module], type, tuple[int, int], dict[str, Any]]] = {
  "Bottleneck": (eln.Bottleneck, enn.Bottleneck, (3, 2), {"width": (3, 5)}),
  "StackedConv": (eln.StackedConv, enn.StackedConv, (5, 3), {"small_kernel_size": (3, 2), "hidden_features": 5}),
}
ACTIVATIONS = {"relu": jax.nn.relu, "linear": None}
BLOCK_CASES = [(name, act) for name in BLOCKS for act in ACTIVATIONS]


def _nnx_params_in_linen_names(name: str, layer: Any) -> dict[str, jax.Array]:
  """The NNX block's parameters under the Linen layer's names."""
  if name == "Bottleneck":
    names = ("first", "core", "last", "first_bias", "core_bias", "bias")
    return {n: getattr(layer, n)[...] for n in names if getattr(layer, n) is not None}
  out = {f"kernel_{i}": k[...] for i, k in enumerate(layer.kernels)}
  return out | {f"bias_{i}": b[...] for i, b in enumerate(layer.biases) if b is not None}


@pytest.mark.parametrize(("name", "activation"), BLOCK_CASES, ids=[f"{n}-{a}" for n, a in BLOCK_CASES])
def test_block_init_apply_jit_equals_the_nnx_block(name: str, activation: str) -> None:
  """Under ``jit``: the Linen block holds the NNX block's parameters by name and computes the same output."""
  linen_cls, nnx_cls, kernel_size, block_options = BLOCKS[name]
  act = ACTIVATIONS[activation]
  x = jax.random.normal(jax.random.key(1), INPUT_SHAPE)

  def run(key: jax.Array, x: jax.Array) -> list[tuple[Any, Any, jax.Array, jax.Array]]:
    results = []
    for options in OPTIONS:
      common = {**block_options, **options, "activation": act, "precision": "highest", "bias_init": RANDOM_BIAS}
      module = linen_cls(features=FEATURES, kernel_size=kernel_size, **common)
      variables = module.init(key, x[:1])
      layer = nnx_cls(IN_FEATURES, FEATURES, kernel_size, **common, rngs=flax_nnx.Rngs(key))
      params = _nnx_params_in_linen_names(name, layer)
      results.append((variables["params"], params, module.apply({"params": params}, x), layer(x)))
    return results

  for options, (linen_params, nnx_params, y, expected) in zip(OPTIONS, run_compiled(run, jax.random.key(0), x)):
    assert jax.tree.map(jnp.shape, linen_params) == jax.tree.map(jnp.shape, nnx_params), options
    conv = linen.Conv(FEATURES, kernel_size, **options)  # the shape of the conv it replaces
    shape = jax.eval_shape(lambda x, conv=conv: conv.init_with_output(jax.random.key(0), x)[0], x).shape
    chex.assert_shape([y, expected], shape)
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-5, err_msg=str(options))


@pytest.mark.parametrize("name", BLOCKS)
def test_block_unbatched_input_and_param_names(name: str) -> None:
  linen_cls, _, kernel_size, block_options = BLOCKS[name]
  module = linen_cls(features=FEATURES, kernel_size=kernel_size, strides=2, activation=jax.nn.relu, **block_options)
  x = jax.random.normal(jax.random.key(2), INPUT_SHAPE)

  def run(x: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
    variables = module.init(jax.random.key(3), x)
    return variables, module.apply(variables, x), module.apply(variables, x[1])

  variables, y, single = run_compiled(run, x)
  expected = (
    {"first", "core", "last", "first_bias", "core_bias", "bias"}
    if name == "Bottleneck"
    else {"kernel_0", "kernel_1", "bias_0", "bias_1"}
  )
  assert set(variables["params"]) == expected
  chex.assert_shape(y, (2, 5, 5, FEATURES))
  np.testing.assert_allclose(np.asarray(single), np.asarray(y[1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BLOCKS)
def test_block_bad_arguments_and_inputs_raise_value_error(name: str) -> None:
  linen_cls, _, kernel_size, block_options = BLOCKS[name]
  x = jax.ShapeDtypeStruct(INPUT_SHAPE, jnp.float32)
  bad = {"Bottleneck": {"width": 0}, "StackedConv": {"small_kernel_size": 1}}[name]
  for overrides, argument in ((bad, next(iter(bad))), ({"padding": "FULL"}, "padding"), ({"strides": 0}, "strides")):
    module = linen_cls(features=FEATURES, kernel_size=kernel_size, **{**block_options, **overrides})
    with pytest.raises(ValueError, match=re.escape(argument)):
      jax.eval_shape(lambda x, module=module: module.init(jax.random.key(0), x), x)
  module = linen_cls(features=FEATURES, kernel_size=kernel_size, **block_options)
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(INPUT_SHAPE)))
  variables = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), variables)
  with pytest.raises(ValueError, match=r"inputs must have 6 channels.*got shape \(2, 10, 9, 5\)"):
    module.apply(variables, jnp.zeros((2, 10, 9, 5)))


def test_every_nnx_layer_has_a_linen_counterpart() -> None:
  nnx_layers = {
    n for n, v in vars(enn).items() if isinstance(v, type) and issubclass(v, flax_nnx.Module) and n != "FactorizedConv"
  }
  assert len(nnx_layers) == 8
  assert all(issubclass(getattr(eln, n, object), linen.Module) for n in nnx_layers), nnx_layers - set(dir(eln))
  assert issubclass(eln.Conv, linen.Conv)  # as efficonv.nnx.Conv subclasses nnx.Conv


# ---------------------------------------------------------------------------- nnx.Conv's options, the objective
def test_groups_input_dilation_and_batch_axes_as_the_nnx_layer() -> None:
  """linen.Conv's ``feature_group_count`` and ``input_dilation`` and several batch axes, as in the NNX layer."""
  x = jax.random.normal(jax.random.key(1), (2, 3, 5, 4, IN_FEATURES))
  cases = [{"feature_group_count": 2}, {"input_dilation": (2, 1), "padding": ((1, 1), (0, 2))}]

  def run(key: jax.Array, x: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
    out = []
    for options in cases:
      module = linen_layer("CPConv", precision="highest", bias_init=RANDOM_BIAS, **options)
      params = module.init(key, x)["params"]
      layer = enn.CPConv.from_format(format_of("CPConv", params), bias=params["bias"], precision="highest", **options)
      out.append((module.apply({"params": params}, x), layer(x)))
    return out

  for options, (y, expected) in zip(cases, run_compiled(run, jax.random.key(0), x)):
    assert y.shape[:2] == (2, 3), options
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-5, err_msg=str(options))
  with pytest.raises(ValueError, match=r"^feature_group_count must divide"):
    jax.eval_shape(lambda x: linen_layer("CPConv", feature_group_count=4).init(jax.random.key(0), x), x)
  with pytest.raises(ValueError, match=r"^padding must be explicit"):
    jax.eval_shape(lambda x: linen_layer("CPConv", input_dilation=2).init(jax.random.key(0), x), x)


def test_objective_field_and_call_argument(monkeypatch: pytest.MonkeyPatch) -> None:
  """What ``auto`` optimises: the field, overridden by the call's ``objective=`` (a training step passes it)."""
  from efficonv import _factorized

  seen: list[str] = []
  layer_conv = _factorized.layer_conv

  def spy(*args: Any, objective: str, **kwargs: Any) -> jax.Array:
    seen.append(objective)
    return layer_conv(*args, objective=objective, **kwargs)

  monkeypatch.setattr(_factorized, "layer_conv", spy)
  x = jax.ShapeDtypeStruct(INPUT_SHAPE, jnp.float32)
  module = linen_layer("SeparableConv")
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
  jax.eval_shape(lambda v, x: module.apply(v, x), variables, x)
  jax.eval_shape(lambda v, x: module.apply(v, x, objective="training"), variables, x)
  jax.eval_shape(lambda v, x: linen_layer("SeparableConv", objective="training").apply(v, x), variables, x)
  assert seen == ["inference", "inference", "training", "training"]
  with pytest.raises(ValueError, match=r"^objective must be one of"):
    jax.eval_shape(lambda v, x: module.apply(v, x, objective="train"), variables, x)


@pytest.mark.parametrize(
  "options",
  [
    {"kernel_size": (3, 3)},
    {"kernel_size": (3, 2), "strides": 2, "padding": "CIRCULAR", "feature_group_count": 2},
    {"kernel_size": (2, 3), "padding": ((1, 0), (2, 1)), "kernel_dilation": (1, 2), "use_bias": False},
  ],
  ids=["same", "circular-groups", "explicit-dilated"],
)
def test_conv_has_linen_convs_params_and_outputs(options: dict) -> None:
  x = jax.random.normal(jax.random.key(1), (2, 3, 6, 5, IN_FEATURES))  # two batch axes

  def run(x: jax.Array) -> list[jax.Array]:
    variables = linen.Conv(FEATURES, precision="highest", **options).init(jax.random.key(0), x)
    ours = [eln.Conv(FEATURES, precision="highest", implementation=i, **options) for i in ("auto", "xla", "shift")]
    return [linen.Conv(FEATURES, precision="highest", **options).apply(variables, x)] + [
      m.apply(variables, x) for m in ours
    ]

  want, *outs = run_compiled(run, x)
  for y in outs:
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-5)
  grouped = options.get("feature_group_count", 1) > 1
  layer = eln.Conv(FEATURES, implementation="shift", **options)
  assert layer.implementation_for(x.shape)[0] == ("xla" if grouped else "shift")


def test_conv_falls_back_to_linen_conv() -> None:
  x = jax.ShapeDtypeStruct((2, 6, 6, IN_FEATURES), jnp.float32)
  mask = jnp.ones((3, 3, IN_FEATURES, FEATURES))
  for options, why in [
    ({"kernel_size": (3,)}, "1-D kernel"),
    ({"kernel_size": (3, 3), "input_dilation": 2, "padding": 1}, "input_dilation=2"),
    ({"kernel_size": (3, 3), "mask": mask}, "mask"),
  ]:
    name, reason = eln.Conv(FEATURES, implementation="im2col", **options).implementation_for(x.shape)
    assert name == "xla" and why in reason and "linen.Conv" in reason, options
  with pytest.raises(ValueError, match=r"^implementation must be 'auto', 'autotune' or one of"):
    eln.Conv(FEATURES, (3, 3), implementation="fft")
