"""Tucker-2 HOSVD + HOOI: exact recovery, HOOI improvement, jit/vmap, validation, TensorLy parity."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from efficonv.decompose import tucker2
from efficonv.formats import Tucker2

from . import _builders as build

SHAPE = (3, 3, 8, 10)


def test_recovers_exact_tucker_ranks() -> None:
  w = build.tucker2_kernel(np.random.default_rng(0), SHAPE, (3, 5))
  fmt, info = tucker2(w, (3, 5))
  assert isinstance(fmt, Tucker2)
  assert fmt.first.shape == (8, 3) and fmt.core.shape == (3, 3, 3, 5) and fmt.last.shape == (5, 10)
  assert float(info.relative_error) < 1e-4
  assert build.relative_error(w, fmt.to_dense()) < 1e-4
  # Orthonormal factors, so the terms are orthogonal and none is larger than W.
  np.testing.assert_allclose(fmt.first.T @ fmt.first, np.eye(3), atol=1e-5)
  np.testing.assert_allclose(fmt.last @ fmt.last.T, np.eye(5), atol=1e-5)
  assert 0 < float(info.degeneracy) <= 1 + 1e-6


def test_hooi_refines_the_hosvd() -> None:
  w = build.tucker2_kernel(np.random.default_rng(1), SHAPE, (4, 4)) + build.gaussian(np.random.default_rng(2), SHAPE)
  _, hosvd = tucker2(w, (3, 3), n_iter=0)
  _, hooi = tucker2(w, (3, 3), n_iter=20, tol=0.0)
  assert int(hosvd.n_iter) == 0 and int(hooi.n_iter) == 20
  assert float(hooi.relative_error) < float(hosvd.relative_error) - 1e-4


def test_jit_and_vmap() -> None:
  rng = np.random.default_rng(3)
  stack = np.stack([build.tucker2_kernel(rng, SHAPE, (2, 3)) for _ in range(2)])
  fmts, infos = jax.jit(jax.vmap(functools.partial(tucker2, rank=(2, 3))))(stack)
  assert fmts.core.shape == (2, 3, 3, 2, 3) and infos.relative_error.shape == (2,)
  _, jitted = jax.jit(tucker2, static_argnames="rank")(stack[0], rank=(2, 3))
  for i in range(2):
    assert float(infos.relative_error[i]) < 1e-4
    dense = Tucker2(fmts.first[i], fmts.core[i], fmts.last[i]).to_dense()
    assert build.relative_error(stack[i], dense) < 1e-4
  assert float(jitted.relative_error) < 1e-4


@pytest.mark.parametrize(
  ("kernel", "kwargs", "name"),
  [
    (np.ones((8, 10)), {"rank": 2}, "kernel"),
    (np.full(SHAPE, np.nan), {"rank": 2}, "kernel"),
    (np.ones(SHAPE), {"rank": (9, 2)}, "rank"),
    (np.ones(SHAPE), {"rank": (2, 11)}, "rank"),
    (np.ones(SHAPE), {"rank": 0}, "rank"),
    (np.ones(SHAPE), {"rank": (1, 2, 3)}, "rank"),
    (np.ones(SHAPE), {"rank": "2"}, "rank"),
    (np.ones(SHAPE), {"rank": 2, "n_iter": -1}, "n_iter"),
    (np.ones(SHAPE), {"rank": 2, "tol": -1.0}, "tol"),
  ],
)
def test_rejects_bad_input(kernel: np.ndarray, kwargs: dict, name: str) -> None:
  with pytest.raises(ValueError, match=name):
    tucker2(kernel, **kwargs)


def test_no_worse_than_tensorly_partial_tucker() -> None:
  tl = pytest.importorskip("tensorly", reason="TensorLy is an optional peer (test extra), used only to cross-check")
  from tensorly.decomposition import partial_tucker

  rng = np.random.default_rng(4)
  w = build.tucker2_kernel(rng, SHAPE, (5, 6)) + 0.3 * build.gaussian(rng, SHAPE)
  _, ours = tucker2(w, (3, 3), n_iter=20, tol=0.0)
  (core, factors), _ = partial_tucker(tl.tensor(w), rank=[3, 3], modes=[2, 3], n_iter_max=20, tol=0)
  theirs = tl.tenalg.multi_mode_dot(core, factors, modes=[2, 3])
  assert float(ours.relative_error) <= build.relative_error(w, theirs) * (1 + 1e-3) + 1e-6
