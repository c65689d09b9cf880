"""Drop-in parity with ``nnx.Conv``: its extra options, batch axes, integer-like ranks, and train()/eval().

Every comparison is against :func:`jax.lax.conv_general_dilated` on the layer's own ``to_dense()`` kernel,
which is what ``nnx.Conv`` computes with that kernel.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from efficonv import nnx as enn

from ._layers import (
  FORMAT_LAYER_NAMES,
  IN_FEATURES,
  LAYER_NAMES,
  OUT_FEATURES,
  bias_of,
  build_compiled,
  construct,
  make_layer,
  random_input,
  run_compiled,
)

SMALL_INPUT = (2, 5, 4, IN_FEATURES)
PADS = ((1, 0), (2, 1))


def _lax(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, **options: Any) -> jax.Array:
  y = jax.lax.conv_general_dilated(
    x,
    kernel,
    (1, 1),
    options.pop("padding", "SAME"),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=jax.lax.Precision.HIGHEST,
    **options,
  )
  return y if bias is None else y + bias.reshape(1, 1, 1, -1)


def _close(actual: jax.Array, expected: jax.Array) -> None:
  assert actual.shape == expected.shape
  scale = float(np.max(np.abs(np.asarray(expected))))
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=2e-5 * scale)


# ------------------------------------------------------------------------------------------ input_dilation
@pytest.mark.parametrize("name", LAYER_NAMES)
def test_input_dilation_equals_lax_lhs_dilation(name: str) -> None:
  """Both paths (and the blocks) run ``input_dilation`` as ``lhs_dilation`` with explicit padding."""
  impls = ["factorized", "reconstructed"] if name in FORMAT_LAYER_NAMES else [None]
  layers = [
    make_layer(name, input_dilation=(2, 3), padding=PADS, precision="highest", **({"implementation": i} if i else {}))
    for i in impls
  ]
  x = random_input(shape=SMALL_INPUT)
  want, *outs = run_compiled(
    lambda x: [
      _lax(x, layers[0].to_dense(), bias_of(layers[0]), padding=PADS, lhs_dilation=(2, 3)),
      *(layer(x) for layer in layers),
    ],
    x,
  )
  for out in outs:
    _close(out, want)


def test_input_dilation_needs_explicit_padding_as_lax() -> None:
  for name in LAYER_NAMES:
    with pytest.raises(ValueError, match=r"^padding must be explicit .* input_dilation=2"):
      nnx.eval_shape(lambda name=name: construct(name, input_dilation=2))
  with pytest.raises(ValueError, match=r"^input_dilation must"):
    nnx.eval_shape(lambda: construct("CPConv", input_dilation=(2,), padding=1))


# ------------------------------------------------------------------- groups, mask, preferred_element_type
@pytest.mark.parametrize("name", FORMAT_LAYER_NAMES)
def test_feature_group_count_runs_the_grouped_dense_conv(name: str) -> None:
  options = {"in_modes": (3,), "out_modes": (4,), "rank": (2,)} if name == "TTConv" else {}
  layer = make_layer(name, feature_group_count=2, precision="highest", **options)
  kernel = layer.to_dense()
  assert kernel.shape[2:] == (IN_FEATURES // 2, OUT_FEATURES)
  assert layer.plan(SMALL_INPUT).implementation == "reconstructed"
  assert "feature_group_count=2" in layer.plan(SMALL_INPUT).reason
  x = random_input(shape=SMALL_INPUT)
  _close(run_compiled(layer, x), _lax(x, kernel, bias_of(layer), feature_group_count=2))
  # The MACs of what runs: the grouped dense conv, (C_in / 2)·C_out per tap and output pixel.
  kh, kw = kernel.shape[:2]
  assert layer.cost_macs(SMALL_INPUT) == 2 * 5 * 4 * kh * kw * (IN_FEATURES // 2) * OUT_FEATURES


def test_mask_multiplies_the_reconstructed_kernel() -> None:
  mask = np.tril(np.ones((3, 2, IN_FEATURES, OUT_FEATURES), np.float32))
  # The mask is state, as in nnx.Conv (an array attribute).
  layer = build_compiled(lambda: construct("CPConv", mask=mask, precision="highest"))
  assert layer.plan(SMALL_INPUT).reason.startswith("reconstructed: mask")
  x = random_input(shape=SMALL_INPUT)
  _close(*run_compiled(lambda x: (layer(x), _lax(x, layer.to_dense() * mask, bias_of(layer))), x))
  with pytest.raises(ValueError, match=r"^mask must have the kernel's shape \(3, 2, 6, 4\)"):
    nnx.eval_shape(lambda: construct("CPConv", mask=np.ones((3, 3, IN_FEATURES, OUT_FEATURES))))


def test_preferred_element_type_is_passed_to_the_conv() -> None:
  layer = make_layer("SeparableConv", dtype=jnp.bfloat16, preferred_element_type=jnp.float32)
  x = random_input(shape=SMALL_INPUT)
  jaxpr = jax.make_jaxpr(layer)(x)
  convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert [e.params["preferred_element_type"] for e in convs] == [jnp.float32]
  assert layer(x).dtype == jnp.float32


@pytest.mark.parametrize(
  ("option", "value"),
  [("feature_group_count", 2), ("mask", np.ones((3, 2, IN_FEATURES, OUT_FEATURES))), ("preferred_element_type", "f")],
)
def test_reconstructed_only_options_refuse_the_factorized_path(option: str, value: Any) -> None:
  with pytest.raises(ValueError, match=rf"^{option} .*needs implementation 'reconstructed' or 'auto'"):
    nnx.eval_shape(lambda: construct("CPConv", implementation="factorized", **{option: value}))


def test_bad_feature_group_count() -> None:
  with pytest.raises(ValueError, match=r"^feature_group_count must divide in_features=6 and out_features=4, got 3"):
    nnx.eval_shape(lambda: construct("TuckerConv", feature_group_count=3))
  with pytest.raises(ValueError, match=r"^feature_group_count must be a positive int"):
    nnx.eval_shape(lambda: construct("TuckerConv", feature_group_count=0))


@pytest.mark.parametrize("name", ["Bottleneck", "StackedConv"])
@pytest.mark.parametrize(
  ("option", "value"),
  [("feature_group_count", 2), ("mask", np.ones((3, 2, IN_FEATURES, OUT_FEATURES))), ("preferred_element_type", "f")],
)
def test_blocks_refuse_what_needs_one_kernel(name: str, option: str, value: Any) -> None:
  with pytest.raises(ValueError, match=rf"^{option} must be .* for {name}"):
    nnx.eval_shape(lambda: construct(name, **{option: value}))


# -------------------------------------------------------------------------------------------- promote_dtype
def test_promote_dtype_is_called_as_nnx_conv_calls_it() -> None:
  """``(inputs, kernel, bias)`` on the reconstructed path, ``(inputs, *factors, bias)`` on the factorized one."""
  calls: list[tuple[tuple[int, ...], ...]] = []

  def promote(arrays: tuple, *, dtype: Any = None) -> tuple:
    calls.append(tuple(a.shape for a in arrays))
    return tuple(None if a is None else a.astype(jnp.bfloat16) for a in arrays)

  x = jnp.ones(SMALL_INPUT)
  for implementation in ("reconstructed", "factorized"):
    layer = make_layer("CPConv", implementation=implementation, promote_dtype=promote)
    assert layer(x).dtype == jnp.bfloat16
  rank = 3
  assert calls == [
    (SMALL_INPUT, (3, 2, IN_FEATURES, OUT_FEATURES), (OUT_FEATURES,)),
    (SMALL_INPUT, (IN_FEATURES, rank), (3, rank), (2, rank), (rank, OUT_FEATURES), (OUT_FEATURES,)),
  ]
  with pytest.raises(ValueError, match=r"^promote_dtype must be a function"):
    nnx.eval_shape(lambda: construct("CPConv", promote_dtype="bf16"))


# --------------------------------------------------------------------------------------------- batch axes
@pytest.mark.parametrize("name", LAYER_NAMES)
def test_leading_batch_axes_are_flattened_and_restored(name: str) -> None:
  layer = make_layer(name, strides=2)
  x = random_input(shape=(2, 3, 5, 4, IN_FEATURES))
  many, flat = run_compiled(lambda x: (layer(x), layer(x.reshape(6, 5, 4, IN_FEATURES))), x)
  assert many.shape == (2, 3, *flat.shape[1:])
  np.testing.assert_allclose(np.asarray(many).reshape(flat.shape), np.asarray(flat), rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------------------------------------- strides
@pytest.mark.parametrize("option", ["strides", "kernel_dilation"])
def test_one_entry_per_spatial_axis_as_nnx_conv(option: str) -> None:
  """``strides=(2,)`` on a 2-D kernel is an error in ``nnx.Conv``, so here too (not silently ``(2, 2)``)."""
  x = jax.ShapeDtypeStruct(SMALL_INPUT, jnp.float32)
  if option == "strides":  # (nnx.Conv's kernel_dilation=(2,) fails later, when XLA lowers the conv)
    with pytest.raises(ValueError, match="window_strides must have the same number of dimensions"):
      jax.eval_shape(lambda x: nnx.Conv(IN_FEATURES, OUT_FEATURES, (3, 3), strides=(2,), rngs=nnx.Rngs(0))(x), x)
    with pytest.raises(ValueError, match="window_strides must have the same number of dimensions"):
      # efficonv.nnx.Conv leaves it to nnx.Conv's own call, which raises its own error.
      jax.eval_shape(lambda x: enn.Conv(IN_FEATURES, OUT_FEATURES, (3, 3), strides=(2,), rngs=nnx.Rngs(0))(x), x)
  for name in LAYER_NAMES:
    with pytest.raises(ValueError, match=rf"^{option} must be a positive int or a pair \(h, w\), one per spatial"):
      nnx.eval_shape(lambda name=name: construct(name, **{option: (2,)}))


# ------------------------------------------------------------------------------------------ integer-like
@pytest.mark.parametrize("value", [np.int64(2), np.int32(2), jnp.int32(2), jnp.asarray(2)], ids=str)
def test_numpy_and_jax_integer_ranks(value: Any) -> None:
  for name, keyword in [
    ("CPConv", "rank"),
    ("SpatialConv", "rank"),
    ("TuckerConv", "rank"),
    ("TTConv", "rank"),
    ("SeparableConv", "depth_multiplier"),
    ("Bottleneck", "width"),
  ]:
    if name == "Bottleneck":
      got = nnx.eval_shape(lambda: construct("Bottleneck", width=value)).width
    else:
      got = nnx.eval_shape(lambda name=name, keyword=keyword: construct(name, **{keyword: value}).format).rank
    entries = got if isinstance(got, tuple) else (got,)
    assert got in (2, (2, 2)) and all(type(r) is int for r in entries), (name, got)  # plain ints, not arrays
  mixed = (np.int64(2), jnp.int32(3))  # made outside eval_shape: concrete, as a caller's rank is
  fmt = nnx.eval_shape(lambda: construct("TuckerConv", rank=mixed).format)
  assert fmt.rank == (2, 3)


@pytest.mark.parametrize("value", [2.0, np.float32(2), True, np.bool_(True)], ids=repr)
def test_float_and_bool_ranks_are_refused(value: Any) -> None:
  for name, keyword in [("CPConv", "rank"), ("TuckerConv", "rank"), ("SeparableConv", "depth_multiplier")]:
    with pytest.raises(ValueError, match=r"rank|depth_multiplier"):
      nnx.eval_shape(lambda name=name, keyword=keyword: construct(name, **{keyword: value}))
  with pytest.raises(ValueError, match=r"^width must"):
    nnx.eval_shape(lambda: construct("Bottleneck", width=value))


# ----------------------------------------------------------------------------------------- train()/eval()
class _Model(nnx.Module):
  def __init__(self) -> None:
    self.conv = enn.SeparableConv(4, 4, 3, depth_multiplier=2, rngs=nnx.Rngs(0))
    self.dropout = nnx.Dropout(0.5, deterministic=True)
    self.dense = nnx.Conv(4, 4, 1, rngs=nnx.Rngs(0))


def test_train_and_eval_set_the_objective() -> None:
  model = build_compiled(_Model)
  assert model.conv.objective == "inference" and model.conv.deterministic
  model.train()
  assert (model.conv.objective, model.dropout.deterministic) == ("training", False)
  assert "(training)" in model.conv.plan((1, 8, 8, 4)).reason
  model.eval()
  assert (model.conv.objective, model.dropout.deterministic) == ("inference", True)
  assert "(inference)" in model.conv.plan((1, 8, 8, 4)).reason
  view = nnx.view(model, deterministic=False)
  assert (view.conv.objective, model.conv.objective) == ("training", "inference")
  assert enn.set_objective(model, "training") == 1 and not model.conv.deterministic


def test_the_objective_is_static_so_a_switch_retraces() -> None:
  model = build_compiled(_Model)
  traces: list[str] = []

  @nnx.jit
  def forward(m: _Model, x: jax.Array) -> jax.Array:
    traces.append(m.conv.objective)
    return m.conv(x)

  x = jnp.ones((1, 4, 4, 4))
  forward(model, x)
  model.train()
  forward(model, x)
  forward(model, x)
  assert traces == ["inference", "training"]
