"""``efficonv.nnx.Conv``: an ``nnx.Conv``'s state loads into it and the outputs agree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from efficonv import nnx as enn
from efficonv.kernels import DENSE_IMPLEMENTATIONS


def _normal(seed: int, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32), dtype)


def _init(seed: int):
  return lambda key, shape, dtype: _normal(seed, shape, dtype)  # no jax.random compilation per shape


def _pair(kwargs: dict[str, Any], implementation: str = "auto", in_features: int = 4, out_features: int = 6):
  """An ``nnx.Conv`` and an ``efficonv.nnx.Conv`` built differently, then given the same state."""
  ref = nnx.Conv(in_features, out_features, kernel_init=_init(1), bias_init=_init(2), rngs=nnx.Rngs(0), **kwargs)
  fast = enn.Conv(
    in_features,
    out_features,
    implementation=implementation,
    kernel_init=_init(3),
    bias_init=_init(4),
    rngs=nnx.Rngs(5),
    **kwargs,
  )
  assert not np.array_equal(np.asarray(fast.kernel[...]), np.asarray(ref.kernel[...]))
  nnx.update(fast, nnx.state(ref))
  return ref, fast


def _assert_close(actual: jax.Array, expected: jax.Array, rel: float = 1e-5) -> None:
  assert actual.shape == expected.shape and actual.dtype == expected.dtype
  scale = max(float(jnp.max(jnp.abs(expected.astype(jnp.float32)))), 1e-30)
  np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32), atol=rel * scale, rtol=0)


_CASES = [
  {"kernel_size": (3, 3)},
  {"kernel_size": (3, 2), "strides": 2, "padding": "VALID", "kernel_dilation": (1, 2)},
  {"kernel_size": 3, "padding": "CIRCULAR", "use_bias": False},
  {"kernel_size": (2, 3), "strides": (2, 1), "padding": "REFLECT"},
  {"kernel_size": (3, 3), "padding": ((1, 0), (2, 1)), "precision": "highest"},
  {"kernel_size": (1, 1), "strides": 2},
]


@pytest.mark.parametrize("implementation", ["auto", *DENSE_IMPLEMENTATIONS])
@pytest.mark.parametrize("kwargs", _CASES, ids=["same", "valid-dil", "circ-nobias", "reflect", "explicit", "1x1"])
def test_state_loads_and_outputs_match(kwargs: dict, implementation: str) -> None:
  ref, fast = _pair({"precision": "highest", **kwargs}, implementation)
  assert jax.tree.structure(nnx.state(fast)) == jax.tree.structure(nnx.state(ref))
  x = _normal(3, (2, 5, 6, 4))
  _assert_close(jax.jit(lambda x: fast(x))(x), ref(x))


def test_groups_and_batch_axes() -> None:
  ref, fast = _pair({"kernel_size": (3, 3), "feature_group_count": 2, "precision": "highest"}, "im2col")
  x = _normal(4, (2, 3, 5, 6, 4))  # two batch axes
  _assert_close(fast(x), ref(x))
  _assert_close(fast(x[0, 0]), ref(x[0, 0]))  # no batch axis
  assert fast.implementation_for(x.shape)[0] == "xla"


def test_bfloat16_compute_dtype() -> None:
  ref, fast = _pair({"kernel_size": (3, 3), "dtype": jnp.bfloat16}, "im2col")
  x = _normal(6, (2, 4, 4, 4))
  _assert_close(fast(x), ref(x), rel=2e-2)


@pytest.mark.parametrize(
  ("kwargs", "x_shape", "why"),
  [
    ({"kernel_size": (3,)}, (2, 9, 4), "1-D kernel"),
    ({"kernel_size": (3, 3), "input_dilation": 2, "padding": 1}, (2, 4, 4, 4), "input_dilation=2"),
    ({"kernel_size": (3, 3), "mask": np.tril(np.ones((3, 3, 4, 6), np.float32))}, (2, 4, 4, 4), "mask"),
    ({"kernel_size": (3, 3), "padding": "SAME_LOWER"}, (2, 4, 4, 4), "padding 'SAME_LOWER'"),
  ],
)
def test_unsupported_options_fall_back_to_nnx(kwargs: dict, x_shape: tuple, why: str) -> None:
  ref, fast = _pair({"precision": "highest", **kwargs}, "im2col")
  x = _normal(7, x_shape)
  np.testing.assert_array_equal(np.asarray(fast(x)), np.asarray(ref(x)))  # the same code ran
  name, reason = fast.implementation_for(x_shape)
  assert name == "xla"
  assert why in reason and "nnx.Conv" in reason


def test_implementation_for_follows_the_rule() -> None:
  layer = enn.Conv(512, 512, (3, 3), rngs=nnx.Rngs(0), kernel_init=_init(0))
  assert layer.implementation_for((32, 2, 2, 512), backend="cpu")[0] == "im2col"
  assert layer.implementation_for((32, 32, 32, 512), backend="cpu")[0] == "xla"
  assert layer.implementation_for((32, 2, 2, 512), backend="gpu")[0] == "xla"
  forced = enn.Conv(8, 8, (3, 3), implementation="shift", kernel_init=_init(0), rngs=nnx.Rngs(0))
  assert forced.implementation_for((1, 32, 32, 8)) == ("shift", "forced by the caller")


def test_runs_the_chosen_formulation_under_jit() -> None:
  layer = enn.Conv(8, 8, (3, 3), rngs=nnx.Rngs(0), kernel_init=_init(0))
  x = _normal(8, (2, 2, 2, 8))
  name, _ = layer.implementation_for(x.shape)
  jaxpr = jax.make_jaxpr(lambda x: layer(x))(x)
  has_conv = any(e.primitive.name == "conv_general_dilated" for e in jaxpr.jaxpr.eqns)
  assert has_conv == (name in ("xla", "xla_valid"))
  grads = nnx.grad(lambda m, x: jnp.sum(m(x) ** 2))(layer, x)
  assert grads.kernel[...].shape == (3, 3, 8, 8)


def test_bad_implementation() -> None:
  with pytest.raises(ValueError, match=r"^implementation must be 'auto', 'autotune' or one of \('xla'"):
    enn.Conv(4, 4, (3, 3), implementation="fft", kernel_init=_init(0), rngs=nnx.Rngs(0))


def test_autotune_measures_once_per_shape_and_matches_nnx_conv(monkeypatch: pytest.MonkeyPatch) -> None:
  from efficonv.planning import clear_cache, tuning

  monkeypatch.delenv(tuning.CACHE_ENV, raising=False)
  clear_cache()
  ref = nnx.Conv(8, 4, (3, 3), rngs=nnx.Rngs(0))
  fast = enn.Conv(8, 4, (3, 3), implementation="autotune", rngs=nnx.Rngs(1))
  nnx.update(fast, nnx.state(ref))
  x = jnp.ones((2, 4, 4, 8))
  name, reason = fast.implementation_for(x.shape)
  assert name in DENSE_IMPLEMENTATIONS and "autotuned on" in reason and "default XLA options" in reason
  measured = len(tuning.cache())
  np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(fast, x), ref(x), rtol=1e-5, atol=1e-5)
  assert len(tuning.cache()) == measured == 1  # the jitted call reused the measurement
  clear_cache()
