"""Tests of the dense baselines and the timed passes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficonv import kernels
from experiments.bench.dense_baselines import dense_methods, pass_args, with_pass


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_every_dense_method_computes_the_same_conv(kernel_size: int) -> None:
  x, w = _normal(0, (2, 7, 6, 4)), _normal(1, (kernel_size, kernel_size, 4, 5))
  expected = np.asarray(kernels.conv(x, w, precision="highest"))
  for method in dense_methods():
    got = jax.jit(method.fn).lower(x, w).compile(compiler_options=dict(method.compiler_options))(x, w)
    np.testing.assert_allclose(
      np.asarray(got), expected, rtol=0, atol=1e-4 * np.abs(expected).max(), err_msg=method.name
    )


def test_forward_backward_pass_is_output_and_vjp() -> None:
  x, w = _normal(2, (1, 5, 5, 3)), _normal(3, (3, 3, 3, 2))
  cotangent = _normal(4, (1, 5, 5, 2))
  y, (dx, dw) = with_pass(kernels.conv, "forward_backward")(*pass_args(x, w, "forward_backward", cotangent))
  want_y, pullback = jax.vjp(kernels.conv, x, w)
  want_dx, want_dw = pullback(cotangent)
  for got, want in ((y, want_y), (dx, want_dx), (dw, want_dw)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
  assert with_pass(kernels.conv, "forward") is kernels.conv
  with pytest.raises(ValueError, match="pass_name"):
    with_pass(kernels.conv, "backward")
