"""Tests of the dense reference ``conv``, ``pointwise`` and ``conv_valid``."""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from efficonv.kernels import conv, conv_valid, pointwise

_DN = ("NHWC", "HWIO", "NHWC")


def _normal(seed: int, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32), dtype)


def _assert_close(actual: jax.Array, expected: jax.Array, rel: float = 1e-5) -> None:
  scale = max(float(jnp.max(jnp.abs(expected))), 1e-30)
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=0, atol=rel * scale)


@pytest.fixture(params=["jit", "eager"])
def variant(request: pytest.FixtureRequest) -> Callable[[Callable], Callable]:
  """Runs the function under test compiled as a whole, or op by op."""
  return jax.jit if request.param == "jit" else (lambda f: f)


# lax accepts SAME/VALID and explicit pairs itself; the others are spelled out for it.
_LAX_PADDINGS = [
  ("SAME", "SAME"),
  ("VALID", "VALID"),
  (((1, 2), (0, 1)), ((1, 2), (0, 1))),
  (2, ((2, 2), (2, 2))),
  ((1, 3), ((1, 1), (3, 3))),
]


@pytest.mark.parametrize(("strides", "dilation"), [(1, 1), (2, 2), ((2, 1), (1, 3))])
@pytest.mark.parametrize(("padding", "lax_padding"), _LAX_PADDINGS, ids=["SAME", "VALID", "explicit", "int", "pair"])
def test_conv_matches_lax(
  variant: Callable, padding: object, lax_padding: object, strides: object, dilation: object
) -> None:
  x, kernel = _normal(0, (2, 9, 11, 4)), _normal(1, (3, 2, 4, 5))
  out = variant(lambda x, k: conv(x, k, strides=strides, padding=padding, dilation=dilation, precision="highest"))(
    x, kernel
  )
  s = strides if isinstance(strides, tuple) else (strides, strides)
  d = dilation if isinstance(dilation, tuple) else (dilation, dilation)
  expected = jax.lax.conv_general_dilated(
    x, kernel, s, lax_padding, rhs_dilation=d, dimension_numbers=_DN, precision="highest"
  )
  chex.assert_shape(out, expected.shape)
  _assert_close(out, expected)


@pytest.mark.parametrize(
  ("padding", "kernel_size", "strides", "dilation"),
  [
    ("CIRCULAR", (3, 2), 1, 1),
    ("CIRCULAR", (5, 3), 2, (2, 1)),
    ("CIRCULAR", (2, 3), (1, 2), 2),
    ("REFLECT", (3, 2), 2, 2),
    ("REFLECT", (5, 3), 1, (1, 2)),
    ("REFLECT", (4, 1), (2, 1), 1),
  ],
)
def test_conv_matches_nnx_conv(padding: str, kernel_size: tuple[int, int], strides: object, dilation: object) -> None:
  layer = nnx.Conv(
    4,
    5,
    kernel_size,
    strides=strides,
    padding=padding,
    kernel_dilation=dilation,
    use_bias=False,
    precision="highest",
    kernel_init=lambda key, shape, dtype: _normal(11, shape, dtype),  # no jax.random compilation per shape
    rngs=nnx.Rngs(0),
  )
  x = _normal(2, (2, 11, 9, 4))
  out = conv(x, layer.kernel[...], strides=strides, padding=padding, dilation=dilation, precision="highest")
  expected = layer(x)
  chex.assert_shape(out, expected.shape)
  _assert_close(out, expected)


def test_conv_feature_groups_match_lax(variant: Callable) -> None:
  x, kernel = _normal(3, (2, 7, 8, 6)), _normal(4, (3, 3, 2, 9))
  out = variant(lambda x, k: conv(x, k, padding="CIRCULAR", feature_group_count=3, precision="highest"))(x, kernel)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
  expected = jax.lax.conv_general_dilated(
    xp, kernel, (1, 1), "VALID", dimension_numbers=_DN, feature_group_count=3, precision="highest"
  )
  _assert_close(out, expected)


def test_conv_promotes_mixed_dtypes() -> None:
  x, kernel = _normal(5, (1, 6, 6, 3), jnp.bfloat16), _normal(6, (3, 3, 3, 2))
  out = conv(x, kernel, precision="highest")
  chex.assert_type(out, jnp.float32)
  expected = jax.lax.conv_general_dilated(
    x.astype(jnp.float32), kernel, (1, 1), "SAME", dimension_numbers=_DN, precision="highest"
  )
  _assert_close(out, expected)


@pytest.mark.parametrize(
  ("x_shape", "kernel_shape", "kwargs", "match"),
  [
    ((9, 9, 4), (3, 3, 4, 5), {}, r"^x must be an NHWC array of rank 4"),
    ((2, 9, 9, 4), (3, 4, 5), {}, r"^kernel must be HWIO of rank 4"),
    ((2, 9, 9, 4), (3, 3, 3, 5), {}, r"^kernel must have 4 input channels \(axis 2\)"),
    ((2, 9, 9, 4), (3, 3, 2, 5), {"feature_group_count": 3}, r"^feature_group_count must divide the 4 input"),
    ((2, 9, 9, 4), (3, 3, 2, 5), {"feature_group_count": 2}, r"^kernel output channels 5 must be divisible"),
    ((2, 9, 9, 4), (3, 3, 4, 5), {"padding": "FULL"}, r"^padding must be"),
    ((2, 9, 9, 4), (3, 3, 4, 5), {"padding": -1}, r"^padding must be"),
    ((2, 9, 9, 4), (3, 3, 4, 5), {"padding": ((1,), (2, 3))}, r"^padding must be"),
    ((2, 2, 9, 4), (3, 3, 4, 5), {"padding": "VALID"}, r"^padding 'VALID' leaves input axis 1 with 2 pixels"),
    ((2, 9, 9, 4), (3, 3, 4, 5), {"strides": 0}, r"^strides must be >= 1"),
    ((2, 9, 9, 4), (3, 3, 4, 5), {"dilation": 0}, r"^dilation must be >= 1"),
  ],
)
def test_conv_bad_input(x_shape: tuple, kernel_shape: tuple, kwargs: dict, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    conv(jnp.zeros(x_shape), jnp.zeros(kernel_shape), **kwargs)


@pytest.mark.parametrize("as_hwio", [False, True])
def test_pointwise_matches_1x1_conv(variant: Callable, as_hwio: bool) -> None:
  x, weight = _normal(7, (2, 5, 7, 4)), _normal(8, (4, 6))
  out = variant(lambda x, w: pointwise(x, w[None, None] if as_hwio else w, precision="highest"))(x, weight)
  expected = jax.lax.conv_general_dilated(
    x, weight[None, None], (1, 1), "VALID", dimension_numbers=_DN, precision="highest"
  )
  chex.assert_shape(out, (2, 5, 7, 6))
  _assert_close(out, expected)


@pytest.mark.parametrize(
  ("x_shape", "weight_shape", "match"),
  [
    ((5, 7, 4), (4, 6), r"^x must be an NHWC array of rank 4"),
    ((2, 5, 7, 4), (3, 6), r"^weight must have shape \(4, C_out\)"),
    ((2, 5, 7, 4), (3, 3, 4, 6), r"^weight must be \(C_in, C_out\) or \(1, 1, C_in, C_out\)"),
    ((2, 5, 7, 4), (4,), r"^weight must have shape \(4, C_out\)"),
  ],
)
def test_pointwise_bad_input(x_shape: tuple, weight_shape: tuple, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    pointwise(jnp.zeros(x_shape), jnp.zeros(weight_shape))


@pytest.mark.parametrize(("strides", "dilation"), [((1, 1), (1, 1)), ((2, 1), (1, 2)), ((3, 2), (2, 3))])
def test_conv_valid_shift_matches_xla(variant: Callable, strides: tuple, dilation: tuple) -> None:
  xp, kernel = _normal(9, (2, 12, 11, 3)), _normal(10, (3, 2, 3, 4))
  shift = variant(lambda x, k: conv_valid(x, k, strides, dilation, "shift", "highest"))(xp, kernel)
  xla = variant(lambda x, k: conv_valid(x, k, strides, dilation, "xla", "highest"))(xp, kernel)
  expected = jax.lax.conv_general_dilated(
    xp, kernel, strides, "VALID", rhs_dilation=dilation, dimension_numbers=_DN, precision="highest"
  )
  chex.assert_shape(shift, expected.shape)
  _assert_close(shift, expected)
  _assert_close(xla, expected)


def test_conv_valid_unknown_implementation() -> None:
  with pytest.raises(ValueError, match=r"^implementation must be 'xla' or 'shift', got 'cudnn'"):
    conv_valid(jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 3, 2, 2)), (1, 1), (1, 1), "cudnn")
