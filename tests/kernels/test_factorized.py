"""Tests of the factorized kernel functions called directly (the formats test them through ``Format.conv``).

Covers what the formats do not reach: the ``conv_implementation="shift"`` path
of the spatial and Tucker-2 convs, TT with one and three cores, and the
factor-shape checks of the functions themselves.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficonv.kernels import (
  cp_conv,
  separable_conv,
  spatial_conv,
  spatial_to_dense,
  tt_conv,
  tt_to_dense,
  tucker2_conv,
  tucker2_to_dense,
)

_DN = ("NHWC", "HWIO", "NHWC")


def _normal(seed: int, *shape: int) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def _reference(x: jax.Array, kernel: jax.Array, strides: tuple, padding: object, dilation: tuple) -> jax.Array:
  if padding == "CIRCULAR":
    eh, ew = (kernel.shape[0] - 1) * dilation[0] + 1, (kernel.shape[1] - 1) * dilation[1] + 1
    x = jnp.pad(x, ((0, 0), ((eh - 1) // 2, eh // 2), ((ew - 1) // 2, ew // 2), (0, 0)), mode="wrap")
    padding = "VALID"
  return jax.lax.conv_general_dilated(
    x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=_DN, precision="highest"
  )


def _assert_close(actual: jax.Array, expected: jax.Array, rel: float = 1e-5) -> None:
  scale = max(float(jnp.max(jnp.abs(expected))), 1e-30)
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=0, atol=rel * scale)


_OPTIONS = [((1, 1), "SAME", (1, 1)), ((2, 1), "CIRCULAR", (1, 2)), ((2, 2), ((1, 2), (0, 1)), (2, 2))]


@pytest.mark.parametrize(("strides", "padding", "dilation"), _OPTIONS, ids=["SAME", "CIRCULAR", "explicit"])
@pytest.mark.parametrize("impl", ["shift", "xla"])
def test_spatial_conv_implementations(impl: str, strides: tuple, padding: object, dilation: tuple) -> None:
  x, v, h = _normal(0, 2, 9, 8, 3), _normal(1, 3, 3, 2), _normal(2, 2, 2, 4)
  out = jax.jit(
    lambda x, v, h: spatial_conv(
      x, v, h, strides=strides, padding=padding, dilation=dilation, conv_implementation=impl, precision="highest"
    )
  )(x, v, h)
  expected = _reference(x, spatial_to_dense(v, h, precision="highest"), strides, padding, dilation)
  chex.assert_shape(out, expected.shape)
  _assert_close(out, expected)


@pytest.mark.parametrize(("strides", "padding", "dilation"), _OPTIONS, ids=["SAME", "CIRCULAR", "explicit"])
@pytest.mark.parametrize("impl", ["shift", "xla"])
def test_tucker2_conv_implementations(impl: str, strides: tuple, padding: object, dilation: tuple) -> None:
  x, first, core, last = _normal(3, 2, 9, 8, 3), _normal(4, 3, 2), _normal(5, 3, 2, 2, 3), _normal(6, 3, 4)
  out = jax.jit(
    lambda *a: tucker2_conv(
      *a, strides=strides, padding=padding, dilation=dilation, conv_implementation=impl, precision="highest"
    )
  )(x, first, core, last)
  expected = _reference(x, tucker2_to_dense(first, core, last, precision="highest"), strides, padding, dilation)
  chex.assert_shape(out, expected.shape)
  _assert_close(out, expected)


@pytest.mark.parametrize(
  ("in_modes", "out_modes", "ranks"), [((3,), (4,), (2,)), ((2, 1, 2), (1, 3, 2), (2, 3, 2))], ids=["d1", "d3"]
)
def test_tt_conv_any_number_of_cores(in_modes: tuple, out_modes: tuple, ranks: tuple) -> None:
  full = (*ranks, 1)
  spatial = _normal(7, 3, 2, ranks[0])
  cores = [_normal(8 + k, full[k], in_modes[k], out_modes[k], full[k + 1]) for k in range(len(in_modes))]
  x = _normal(20, 2, 7, 6, int(np.prod(in_modes)))
  out = jax.jit(lambda x, s, c: tt_conv(x, s, c, strides=2, padding="CIRCULAR", precision="highest"))(x, spatial, cores)
  expected = _reference(x, tt_to_dense(spatial, cores, precision="highest"), (2, 2), "CIRCULAR", (1, 1))
  chex.assert_shape(out, expected.shape)
  _assert_close(out, expected)


_X = jnp.zeros((1, 6, 6, 4))


@pytest.mark.parametrize(
  ("fn", "args", "match"),
  [
    (cp_conv, (jnp.zeros((4, 3)), jnp.zeros((3, 2)), jnp.zeros((3, 3)), jnp.zeros((3, 5))), r"^vertical must have shape \(\*, 3\)"),
    (cp_conv, (jnp.zeros((4, 3)), jnp.zeros((3, 3)), jnp.zeros((3, 2)), jnp.zeros((3, 5))), r"^horizontal must have shape \(\*, 3\)"),
    (cp_conv, (jnp.zeros((4, 3)), jnp.zeros((3, 3)), jnp.zeros((3, 3)), jnp.zeros((2, 5))), r"^last must have shape \(3, \*\)"),
    (cp_conv, (jnp.zeros((4,)), jnp.zeros((3, 3)), jnp.zeros((3, 3)), jnp.zeros((3, 5))), r"^first must have shape \(\*, \*\)"),
    (cp_conv, (jnp.zeros((5, 3)), jnp.zeros((3, 3)), jnp.zeros((3, 3)), jnp.zeros((3, 5))), r"^x must have 5 channels"),
    (tucker2_conv, (jnp.zeros((4, 3)), jnp.zeros((3, 3, 2, 2)), jnp.zeros((2, 5))), r"^core must have shape \(\*, \*, 3, \*\)"),
    (tucker2_conv, (jnp.zeros((4, 3)), jnp.zeros((3, 3, 3, 2)), jnp.zeros((3, 5))), r"^last must have shape \(2, \*\)"),
    (spatial_conv, (jnp.zeros((3, 4, 2)), jnp.zeros((3, 3, 5))), r"^horizontal must have shape \(\*, 2, \*\)"),
    (spatial_conv, (jnp.zeros((3, 4)), jnp.zeros((3, 3, 5))), r"^vertical must have shape \(\*, \*, \*\)"),
    (separable_conv, (jnp.zeros((3, 3, 4, 2)), jnp.zeros((7, 5))), r"^pointwise_weight must have shape \(8, \*\)"),
    (tt_conv, (jnp.zeros((3, 3, 2)), [jnp.zeros((3, 2, 1, 2)), jnp.zeros((2, 2, 5, 1))]), r"^cores\[0\] must have shape \(2, \*, \*, \*\)"),
    (tt_conv, (jnp.zeros((3, 3, 2)), [jnp.zeros((2, 2, 1, 2)), jnp.zeros((2, 2, 5, 2))]), r"^cores\[1\] must have shape \(2, \*, \*, 1\)"),
    (tt_conv, (jnp.zeros((3, 3, 2)), []), r"^cores must hold at least one channel core"),
    (tt_conv, (jnp.zeros((3, 3)), [jnp.zeros((2, 4, 1, 1))]), r"^spatial must have shape"),
  ],
)  # fmt: skip
def test_factor_shapes_must_chain(fn: object, args: tuple, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    fn(_X, *args)  # type: ignore[operator]


def test_unknown_implementations() -> None:
  with pytest.raises(ValueError, match=r"^implementation must be 'xla' or 'shift', got 'fft'"):
    spatial_conv(_X, jnp.zeros((3, 4, 2)), jnp.zeros((3, 2, 5)), conv_implementation="fft")
  with pytest.raises(ValueError, match=r"^implementation must be 'xla' or 'shift', got 'fft'"):
    tucker2_conv(_X, jnp.zeros((4, 2)), jnp.zeros((3, 3, 2, 2)), jnp.zeros((2, 5)), conv_implementation="fft")
  cp_factors = (jnp.zeros((4, 3)), jnp.zeros((3, 3)), jnp.zeros((3, 3)), jnp.zeros((3, 5)))
  with pytest.raises(ValueError, match=r"^depthwise implementation must be one of"):
    cp_conv(_X, *cp_factors, depthwise_implementation="fft")
