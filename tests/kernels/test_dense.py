"""Tests of the dense-conv formulations (``efficonv.kernels.dense``) and the ``auto`` rule."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from efficonv.kernels import DENSE_IMPLEMENTATIONS, conv, dense_implementation
from efficonv.kernels import dense as dense_mod

_DN = ("NHWC", "HWIO", "NHWC")


def _normal(seed: int, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32), dtype)


def _assert_close(actual: jax.Array, expected: jax.Array, rel: float = 1e-5) -> None:
  scale = max(float(jnp.max(jnp.abs(expected))), 1e-30)
  np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32), rtol=0, atol=rel * scale)


def _primitives(fn, *args) -> set[str]:
  return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


# (padding, the same padding spelled out for lax on the unpadded input, or the numpy pad mode)
_PADDINGS = [
  ("SAME", "SAME"),
  ("VALID", "VALID"),
  (((1, 2), (0, 1)), ((1, 2), (0, 1))),
  (2, ((2, 2), (2, 2))),
  ("CIRCULAR", "wrap"),
  ("REFLECT", "reflect"),
]


def _reference(x: jax.Array, kernel: jax.Array, padding: object, lax_padding: object, s: tuple, d: tuple) -> jax.Array:
  if lax_padding in ("wrap", "reflect"):
    e = [(k - 1) * di + 1 for k, di in zip(kernel.shape[:2], d)]
    x = jnp.pad(x, ((0, 0), ((e[0] - 1) // 2, e[0] // 2), ((e[1] - 1) // 2, e[1] // 2), (0, 0)), mode=lax_padding)
    lax_padding = "VALID"
  return jax.lax.conv_general_dilated(
    x, kernel, s, lax_padding, rhs_dilation=d, dimension_numbers=_DN, precision="highest"
  )


@pytest.mark.parametrize("implementation", DENSE_IMPLEMENTATIONS)
@pytest.mark.parametrize(("strides", "dilation"), [((2, 1), (1, 2))])
@pytest.mark.parametrize(
  ("padding", "lax_padding"), _PADDINGS, ids=["SAME", "VALID", "explicit", "int", "CIRC", "REFL"]
)
def test_every_formulation_matches_lax(
  implementation: str, padding: object, lax_padding: object, strides: tuple, dilation: tuple
) -> None:
  x, kernel = _normal(0, (2, 7, 8, 3)), _normal(1, (3, 2, 3, 4))
  out = jax.jit(
    lambda x, k: conv(
      x, k, strides=strides, padding=padding, dilation=dilation, precision="highest", implementation=implementation
    )
  )(x, kernel)
  expected = _reference(x, kernel, padding, lax_padding, strides, dilation)
  chex.assert_shape(out, expected.shape)
  _assert_close(out, expected)


@pytest.mark.parametrize("implementation", DENSE_IMPLEMENTATIONS)
def test_pointwise_kernel_matches_lax(implementation: str) -> None:
  x, kernel = _normal(2, (2, 6, 5, 4)), _normal(3, (1, 1, 4, 6))
  out = conv(x, kernel, strides=2, precision="highest", implementation=implementation)
  _assert_close(out, _reference(x, kernel, "SAME", "SAME", (2, 2), (1, 1)))


@pytest.mark.parametrize("implementation", ["im2col", "shift"])
def test_matmul_formulations_use_no_conv(implementation: str) -> None:
  x, kernel = _normal(4, (1, 4, 4, 2)), _normal(5, (3, 3, 2, 3))
  prims = _primitives(lambda x, k: conv(x, k, implementation=implementation), x, kernel)
  assert "conv_general_dilated" not in prims
  assert "dot_general" in prims


@pytest.mark.parametrize("implementation", ["im2col", "shift", "xla_valid"])
def test_groups_fall_back_to_xla(implementation: str) -> None:
  x, kernel = _normal(6, (2, 5, 5, 6)), _normal(7, (3, 3, 2, 9))
  out = conv(x, kernel, feature_group_count=3, precision="highest", implementation=implementation)
  expected = jax.lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=_DN, feature_group_count=3, precision="highest"
  )
  _assert_close(out, expected)
  name, reason = dense_implementation(x.shape, kernel.shape, feature_group_count=3, implementation=implementation)
  assert name == "xla"
  assert "feature_group_count=3" in reason


@pytest.mark.parametrize("implementation", DENSE_IMPLEMENTATIONS)
def test_bfloat16_stays_bfloat16(implementation: str) -> None:
  x, kernel = _normal(8, (2, 4, 4, 16), jnp.bfloat16), _normal(9, (3, 3, 16, 8), jnp.bfloat16)
  out = conv(x, kernel, implementation=implementation)
  chex.assert_type(out, jnp.bfloat16)
  expected = _reference(x.astype(jnp.float32), kernel.astype(jnp.float32), "SAME", "SAME", (1, 1), (1, 1))
  _assert_close(out, expected, rel=2e-2)


@pytest.mark.parametrize("implementation", DENSE_IMPLEMENTATIONS)
def test_gradients_match_xla(implementation: str) -> None:
  x, kernel = _normal(10, (2, 5, 6, 3)), _normal(11, (3, 3, 3, 4))
  cot = _normal(12, (2, 3, 6, 4))

  def loss(impl: str):
    return lambda x, k: jnp.vdot(
      conv(x, k, strides=(2, 1), padding="SAME", dilation=(1, 2), precision="highest", implementation=impl), cot
    )

  got = jax.jit(jax.grad(loss(implementation), argnums=(0, 1)))(x, kernel)
  # The reference differentiates lax's conv directly, not this library's "xla" path.
  want = jax.grad(
    lambda x, k: jnp.vdot(_reference(x, k, "SAME", "SAME", (2, 1), (1, 2)), cot),
    argnums=(0, 1),
  )(x, kernel)
  for g, w in zip(got, want):
    _assert_close(g, w)


@pytest.mark.parametrize("implementation", DENSE_IMPLEMENTATIONS)
def test_check_grads_float64(implementation: str) -> None:
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(13).standard_normal((1, 4, 4, 2)))
    kernel = jnp.asarray(np.random.default_rng(14).standard_normal((2, 3, 2, 3)))
    fn = lambda x, k: conv(x, k, strides=(1, 2), padding="REFLECT", implementation=implementation)  # noqa: E731
    check_grads(fn, (x, kernel), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize(
  ("input_shape", "kernel_shape", "kwargs", "backend", "expected"),
  [
    ((32, 2, 2, 512), (3, 3, 512, 512), {}, "cpu", "im2col"),
    ((1, 4, 4, 512), (3, 3, 512, 512), {}, "cpu", "im2col"),
    ((32, 8, 8, 256), (3, 3, 256, 512), {"strides": 2}, "cpu", "im2col"),
    ((32, 8, 8, 256), (3, 3, 256, 256), {}, "cpu", "xla"),
    ((8, 14, 14, 512), (3, 3, 512, 512), {"strides": 2}, "cpu", "im2col"),
    ((32, 7, 7, 512), (3, 3, 512, 512), {}, "cpu", "shift"),
    ((32, 7, 7, 64), (3, 3, 64, 64), {}, "cpu", "xla"),
    ((8, 28, 28, 512), (3, 3, 512, 512), {}, "cpu", "xla"),
    ((8, 56, 56, 64), (1, 1, 64, 256), {}, "cpu", "im2col"),
    ((4096, 4, 4, 512), (3, 3, 512, 512), {}, "cpu", "shift"),
    ((32, 2, 2, 512), (3, 3, 512, 512), {}, "gpu", "xla"),
    ((8, 56, 56, 64), (1, 1, 64, 256), {}, "tpu", "xla"),
    ((32, 2, 2, 512), (3, 3, 512, 512), {"implementation": "shift"}, "cpu", "shift"),
    ((32, 32, 32, 64), (3, 3, 64, 64), {"implementation": "im2col"}, "gpu", "im2col"),
  ],
)
def test_dense_implementation_rule(
  input_shape: tuple, kernel_shape: tuple, kwargs: dict, backend: str, expected: str
) -> None:
  name, reason = dense_implementation(input_shape, kernel_shape, backend=backend, **kwargs)
  assert name == expected
  assert reason


def test_rule_reads_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
  shape, kshape = (32, 8, 8, 256), (3, 3, 256, 256)
  assert dense_implementation(shape, kshape, backend="cpu")[0] == "xla"
  rules = {**dense_mod.DENSE_AUTO_RULES, "cpu": {**dense_mod.DENSE_AUTO_RULES["cpu"], "matmul_regions": ((64, 256),)}}
  monkeypatch.setattr(dense_mod, "DENSE_AUTO_RULES", rules)
  name, reason = dense_implementation(shape, kshape, backend="cpu")
  assert name == "shift"  # 18.9 MB of patches, above the 16 MiB im2col limit
  assert "8×8" in reason
  assert dense_implementation((4, *shape[1:]), kshape, backend="cpu")[0] == "im2col"


def test_circular_padding_counts_the_padded_input() -> None:
  # CIRCULAR pads the input to 4×4 itself; a VALID 3×3 of that has a 2×2 output.
  name, reason = dense_implementation((1, 2, 2, 8), (3, 3, 8, 8), padding="CIRCULAR", backend="cpu")
  assert (name, "2×2" in reason) == ("im2col", True)


def test_auto_runs_the_chosen_formulation() -> None:
  x, kernel = _normal(15, (2, 2, 2, 8)), _normal(16, (3, 3, 8, 8))
  name, _ = dense_implementation(x.shape, kernel.shape)
  prims = _primitives(lambda x, k: conv(x, k), x, kernel)
  assert ("conv_general_dilated" in prims) == (name in ("xla", "xla_valid"))
  big = _normal(17, (1, 32, 32, 8))
  assert dense_implementation(big.shape, kernel.shape)[0] == "xla"
  assert "conv_general_dilated" in _primitives(lambda x, k: conv(x, k), big, kernel)


def test_dense_implementation_is_traceable() -> None:
  # Pure shape arithmetic: usable while tracing, where only shapes are known.
  @jax.jit
  def f(x: jax.Array, k: jax.Array) -> jax.Array:
    name, _ = dense_implementation(x.shape, k.shape, backend="cpu")
    return conv(x, k, implementation=name)

  x, kernel = _normal(18, (1, 3, 3, 4)), _normal(19, (3, 3, 4, 2))
  _assert_close(f(x, kernel), _reference(x, kernel, "SAME", "SAME", (1, 1), (1, 1)), rel=1e-2)


def test_unknown_implementation() -> None:
  with pytest.raises(ValueError, match=r"^implementation must be 'auto' or one of \('xla', 'xla_valid'"):
    conv(jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 3, 2, 2)), implementation="cudnn")
  with pytest.raises(ValueError, match=r"^implementation must be 'auto' or one of"):
    dense_implementation((1, 5, 5, 2), (3, 3, 2, 2), implementation="fft")
