"""Spatial (Jaderberg scheme 2) SVD: exact recovery, Eckart–Young optimality, jit/vmap, validation."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from efficonv.decompose import spatial
from efficonv.formats import Spatial

from . import _builders as build

SHAPE = (3, 2, 5, 7)


def test_recovers_exact_spatial_rank() -> None:
  w = build.spatial_kernel(np.random.default_rng(0), SHAPE, 3)
  fmt, info = spatial(w, 3)
  assert isinstance(fmt, Spatial)
  assert fmt.vertical.shape == (3, 5, 3) and fmt.horizontal.shape == (2, 3, 7)
  assert float(info.relative_error) < 1e-4 and int(info.n_iter) == 1
  assert build.relative_error(w, fmt.to_dense()) < 1e-4


def test_is_the_best_rank_k_fit() -> None:
  w = build.gaussian(np.random.default_rng(1), SHAPE)
  matrix = w.transpose(0, 2, 1, 3).reshape(3 * 5, 2 * 7)
  fmt, info = spatial(w, 4)
  np.testing.assert_allclose(float(info.relative_error), build.optimal_truncation_error(matrix, 4), rtol=1e-4)
  sigma = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
  np.testing.assert_allclose(float(info.degeneracy), sigma[0] / np.linalg.norm(sigma), rtol=1e-4)
  # The singular values are split evenly: both factors carry sqrt(σ_k).
  np.testing.assert_allclose(
    np.linalg.norm(fmt.vertical, axis=(0, 1)), np.linalg.norm(fmt.horizontal, axis=(0, 2)), rtol=1e-4
  )


def test_jit_and_vmap() -> None:
  rng = np.random.default_rng(2)
  stack = np.stack([build.spatial_kernel(rng, SHAPE, 2) for _ in range(3)])
  fmts, infos = jax.jit(jax.vmap(functools.partial(spatial, rank=2)))(stack)
  assert fmts.vertical.shape == (3, 3, 5, 2) and infos.relative_error.shape == (3,)
  _, jitted = jax.jit(spatial, static_argnames="rank")(stack[0], rank=2)
  for i in range(3):
    assert float(infos.relative_error[i]) < 1e-4
    assert build.relative_error(stack[i], Spatial(fmts.vertical[i], fmts.horizontal[i]).to_dense()) < 1e-4
  assert float(jitted.relative_error) < 1e-4


@pytest.mark.parametrize(
  ("kernel", "rank", "name"),
  [
    (np.ones((3, 5, 7)), 1, "kernel"),
    (np.full(SHAPE, np.nan), 1, "kernel"),
    (np.ones(SHAPE), 0, "rank"),
    (np.ones(SHAPE), 15, "rank"),  # min(kh·C_in, kw·C_out) = min(15, 14) = 14
  ],
)
def test_rejects_bad_input(kernel: np.ndarray, rank: int, name: str) -> None:
  with pytest.raises(ValueError, match=name):
    spatial(kernel, rank)
