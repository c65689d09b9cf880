"""Every NNX layer equals the dense conv with its own ``to_dense()`` kernel, for every conv option.

One test per (layer, implementation) runs the 16 combinations of strides
{1, 2} × padding {SAME, VALID, explicit, CIRCULAR} × kernel_dilation {1, 2}
in one ``jit`` (one compile per test instead of sixteen), on a non-square
kernel and a non-square input.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ._layers import (
  CONV_OPTIONS,
  FORMAT_LAYER_NAMES,
  IMPLEMENTATIONS,
  IN_FEATURES,
  INPUT_SHAPE,
  LAYER_NAMES,
  LAYER_OPTIONS,
  OUT_FEATURES,
  bias_of,
  construct,
  effective_size,
  expected_hw,
  layer_variants,
  make_layer,
  random_input,
  reference_conv,
  run_compiled,
)

ZEROS = nnx.initializers.zeros_init()


def _cases() -> list[tuple[str, str | None]]:
  cases: list[tuple[str, str | None]] = [(n, i) for n in FORMAT_LAYER_NAMES for i in IMPLEMENTATIONS]
  return [*cases, ("StackedConv", None), ("Bottleneck", None)]  # the blocks have a single implementation


CASES = _cases()


def _assert_close(actual: jax.Array, expected: jax.Array, what: str) -> None:
  scale = float(np.max(np.abs(np.asarray(expected))))
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=2e-5 * scale, err_msg=what)


@pytest.mark.parametrize(("name", "implementation"), CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_layer_equals_dense_reference(name: str, implementation: str | None) -> None:
  impl = {} if implementation is None else {"implementation": implementation}
  # Every option combination holds the same parameters, so one reference kernel serves all.
  layers = layer_variants(name, CONV_OPTIONS, precision="highest", **impl)
  bias = bias_of(layers[0])
  assert bias is not None and np.any(np.asarray(bias) != 0)

  def run(x: jax.Array) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    kernel = layers[0].to_dense()
    actual = [layer(x) for layer in layers]
    expected = [reference_conv(x, kernel, bias, **options) for options in CONV_OPTIONS]
    return kernel, actual, expected

  kernel, actual, expected = run_compiled(run, random_input())
  chex.assert_shape(kernel, (*LAYER_OPTIONS[name]["kernel_size"], IN_FEATURES, OUT_FEATURES))
  for options, y, ref in zip(CONV_OPTIONS, actual, expected):
    hw = expected_hw(INPUT_SHAPE[1:3], LAYER_OPTIONS[name]["kernel_size"], **_shape_options(options))
    chex.assert_shape(y, (INPUT_SHAPE[0], *hw, OUT_FEATURES))
    assert y.dtype == jnp.float32
    _assert_close(y, ref, f"{name} {implementation} {options}")


def _shape_options(options: dict) -> dict:
  return {"strides": options["strides"], "padding": options["padding"], "dilation": options["kernel_dilation"]}


def test_nonlinear_bottleneck_equals_its_three_convs() -> None:
  """With ReLU the block is 1×1 → ReLU → k×k (strides, padding, dilation) → ReLU → 1×1, each with a bias."""
  layers = layer_variants("Bottleneck", CONV_OPTIONS, activation=nnx.relu, precision="highest")
  ref = layers[0]
  first, core, last = ref.first[...], ref.core[...], ref.last[...]
  biases = [ref.first_bias[...], ref.core_bias[...], ref.bias[...]]
  x = random_input()

  def reference(x: jax.Array, options: dict) -> jax.Array:
    h = nnx.relu(reference_conv(x, first[None, None], biases[0], strides=1, padding="VALID", kernel_dilation=1))
    h = nnx.relu(reference_conv(h, core, biases[1], **options))
    return reference_conv(h, last[None, None], biases[2], strides=1, padding="VALID", kernel_dilation=1)

  def run(x: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
    return [layer(x) for layer in layers], [reference(x, options) for options in CONV_OPTIONS]

  for options, y, expected in zip(CONV_OPTIONS, *run_compiled(run, x)):
    hw = expected_hw(INPUT_SHAPE[1:3], LAYER_OPTIONS["Bottleneck"]["kernel_size"], **_shape_options(options))
    chex.assert_shape(y, (INPUT_SHAPE[0], *hw, OUT_FEATURES))
    _assert_close(y, expected, f"Bottleneck(relu) {options}")


def test_nonlinear_stacked_conv_equals_its_small_convs() -> None:
  """With an activation: pad once for the full kernel, then VALID small convs, the stride on the last."""
  options = {"strides": 2, "padding": "CIRCULAR", "kernel_dilation": 2}
  layer = make_layer("StackedConv", activation=jnp.tanh, precision="highest", **options)
  assert layer.num_layers == 2
  (k1, k2), (b1, b2) = [k[...] for k in layer.kernels], [b[...] for b in layer.biases]

  def reference(x: jax.Array) -> jax.Array:
    # CIRCULAR pads by the *full* (5, 3) kernel's dilated extent, then everything is VALID.
    eh, ew = effective_size(5, 2), effective_size(3, 2)
    padded = jnp.pad(x, ((0, 0), ((eh - 1) // 2, eh // 2), ((ew - 1) // 2, ew // 2), (0, 0)), mode="wrap")
    h = jnp.tanh(reference_conv(padded, k1, b1, strides=1, padding="VALID", kernel_dilation=2))
    return reference_conv(h, k2, b2, strides=2, padding="VALID", kernel_dilation=2)

  actual, expected = run_compiled(lambda x: (layer(x), reference(x)), random_input())
  _assert_close(actual, expected, "StackedConv(tanh)")
  with pytest.raises(ValueError, match="activation"):
    layer.to_dense()


@pytest.mark.parametrize("name", ["SeparableConv", "CPConv"])
def test_equals_nnx_conv_with_the_reconstructed_kernel(name: str) -> None:
  """A drop-in replacement: ``nnx.Conv`` holding ``layer.to_dense()`` gives the same output for every option."""
  pairs = []
  for layer, options in zip(layer_variants(name, CONV_OPTIONS, precision="highest"), CONV_OPTIONS):
    conv = nnx.Conv(
      IN_FEATURES,
      OUT_FEATURES,
      LAYER_OPTIONS[name]["kernel_size"],
      precision="highest",
      kernel_init=ZEROS,  # overwritten below; skips a random draw
      rngs=nnx.Rngs(0),
      **options,
    )
    conv.kernel[...] = layer.to_dense()
    conv.bias[...] = bias_of(layer)
    pairs.append((layer, conv))
  x = random_input()
  outputs = run_compiled(lambda x: [(layer(x), conv(x)) for layer, conv in pairs], x)
  for options, (y, expected) in zip(CONV_OPTIONS, outputs):
    chex.assert_equal_shape((y, expected))
    _assert_close(y, expected, f"{name} vs nnx.Conv {options}")


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_output_shape_matches_nnx_conv(name: str) -> None:
  """Same options, same input → same output shape as ``nnx.Conv`` (shapes only: ``eval_shape``)."""
  x = jax.ShapeDtypeStruct(INPUT_SHAPE, jnp.float32)
  kernel_size = LAYER_OPTIONS[name]["kernel_size"]
  for options in CONV_OPTIONS:
    # Built and applied inside eval_shape: nothing is computed or compiled.
    ours = jax.eval_shape(lambda x, options=options: construct(name, **options)(x), x)
    theirs = jax.eval_shape(
      lambda x, options=options: nnx.Conv(IN_FEATURES, OUT_FEATURES, kernel_size, rngs=nnx.Rngs(0), **options)(x), x
    )
    assert ours.shape == theirs.shape, (name, options)
    assert ours.dtype == theirs.dtype


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_unbatched_input(name: str) -> None:
  """Like ``nnx.Conv``, an ``(H, W, C)`` input gives an ``(H', W', C_out)`` output equal to the batched one."""
  layer = make_layer(name, strides=2)
  x = random_input()
  batched, single = run_compiled(lambda x: (layer(x), layer(x[0])), x)
  chex.assert_shape(single, batched.shape[1:])
  np.testing.assert_allclose(np.asarray(single), np.asarray(batched[0]), rtol=1e-5, atol=1e-5)


def test_nonlinear_bottleneck_unbatched_input() -> None:
  layer = make_layer("Bottleneck", activation=nnx.relu, strides=2)
  x = random_input()
  batched, single = run_compiled(lambda x: (layer(x), layer(x[1])), x)
  np.testing.assert_allclose(np.asarray(single), np.asarray(batched[1]), rtol=1e-5, atol=1e-5)
