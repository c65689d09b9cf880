"""Depthwise-separable fit: exact recovery, per-channel optimality, jit/vmap, validation."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from efficonv.decompose import separable
from efficonv.formats import Separable

from . import _builders as build

SHAPE = (3, 3, 4, 6)


def test_recovers_exact_depth_multiplier() -> None:
  w = build.separable_kernel(np.random.default_rng(0), SHAPE, 2)
  fmt, info = separable(w, 2)
  assert isinstance(fmt, Separable)
  assert fmt.depthwise.shape == (3, 3, 4, 2) and fmt.pointwise.shape == (8, 6)
  assert float(info.relative_error) < 1e-4 and int(info.n_iter) == 1
  assert build.relative_error(w, fmt.to_dense()) < 1e-4


def test_is_the_best_separable_fit() -> None:
  w = build.gaussian(np.random.default_rng(1), SHAPE)
  slices = w.transpose(2, 0, 1, 3).reshape(4, 9, 6)
  fmt, info = separable(w, 2)
  np.testing.assert_allclose(float(info.relative_error), build.optimal_truncation_error(slices, 2), rtol=1e-4)
  sigma = np.linalg.svd(slices.astype(np.float64), compute_uv=False)
  np.testing.assert_allclose(float(info.degeneracy), sigma[:, 0].max() / np.linalg.norm(w), rtol=1e-4)
  # Pointwise rows c*m .. c*m+m-1 belong to input channel c: zeroing channel 1's depthwise filters
  # and those rows removes exactly channel 1 from the reconstruction.
  depthwise = np.asarray(fmt.depthwise).copy()
  depthwise[:, :, 1, :] = 0
  dense = Separable(depthwise, fmt.pointwise).to_dense()
  assert not np.any(dense[:, :, 1, :])
  np.testing.assert_allclose(dense[:, :, 0, :], fmt.to_dense()[:, :, 0, :])


def test_jit_and_vmap() -> None:
  rng = np.random.default_rng(2)
  stack = np.stack([build.separable_kernel(rng, SHAPE, 1) for _ in range(2)])
  fmts, infos = jax.jit(jax.vmap(functools.partial(separable, depth_multiplier=1)))(stack)
  assert fmts.depthwise.shape == (2, 3, 3, 4, 1) and infos.n_iter.shape == (2,)
  _, jitted = jax.jit(separable, static_argnames="depth_multiplier")(stack[1], depth_multiplier=1)
  for i in range(2):
    assert float(infos.relative_error[i]) < 1e-4
    assert build.relative_error(stack[i], Separable(fmts.depthwise[i], fmts.pointwise[i]).to_dense()) < 1e-4
  assert float(jitted.relative_error) < 1e-4


@pytest.mark.parametrize(
  ("kernel", "m", "name"),
  [
    (np.ones((3, 3, 4, 6, 1)), 1, "kernel"),
    (np.full(SHAPE, np.inf), 1, "kernel"),
    (np.ones(SHAPE), 0, "depth_multiplier"),
    (np.ones(SHAPE), 7, "depth_multiplier"),  # min(kh·kw, C_out) = 6
    (np.ones((3, 3, 4, 20)), 10, "depth_multiplier"),  # min(kh·kw, C_out) = 9
  ],
)
def test_rejects_bad_input(kernel: np.ndarray, m: int, name: str) -> None:
  with pytest.raises(ValueError, match=name):
    separable(kernel, m)
