"""TT-SVD into the TT-conv format: exact recovery, rank handling, jit/vmap, validation, TensorLy parity."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from efficonv.decompose import tt
from efficonv.formats import TT

from . import _builders as build

IN_MODES, OUT_MODES = (2, 3), (2, 4)
SHAPE = (3, 3, 6, 8)


def test_recovers_exact_tt_ranks() -> None:
  w = build.tt_kernel(np.random.default_rng(0), (3, 3), (4, 3), IN_MODES, OUT_MODES)
  fmt, info = tt(w, (4, 3), in_modes=IN_MODES, out_modes=OUT_MODES)
  assert isinstance(fmt, TT)
  assert fmt.spatial.shape == (3, 3, 4)
  assert [c.shape for c in fmt.cores] == [(4, 2, 2, 3), (3, 3, 4, 1)]
  assert fmt.rank == (4, 3) and fmt.in_modes == IN_MODES and fmt.out_modes == OUT_MODES
  assert float(info.relative_error) < 1e-4 and int(info.n_iter) == 1
  assert build.relative_error(w, fmt.to_dense()) < 1e-4
  assert 0 < float(info.degeneracy) <= 1 + 1e-6


def test_three_channel_cores() -> None:
  in_modes, out_modes = (2, 2, 2), (2, 1, 3)
  w = build.tt_kernel(np.random.default_rng(1), (1, 3), (2, 3, 2), in_modes, out_modes)
  fmt, info = tt(w, (2, 3, 2), in_modes=in_modes, out_modes=out_modes)
  assert [c.shape for c in fmt.cores] == [(2, 2, 2, 3), (3, 2, 1, 2), (2, 2, 3, 1)]
  assert float(info.relative_error) < 1e-4


def test_one_channel_core_is_the_best_spatial_channel_split() -> None:
  # d = 1: a single SVD of the (kh·kw) × (C_in·C_out) matrix, optimal by Eckart–Young.
  w = build.gaussian(np.random.default_rng(5), SHAPE)
  fmt, info = tt(w, 4, in_modes=(6,), out_modes=(8,))
  assert fmt.rank == (4,) and [c.shape for c in fmt.cores] == [(4, 6, 8, 1)]
  expected = build.optimal_truncation_error(w.reshape(9, 48), 4)
  np.testing.assert_allclose(float(info.relative_error), expected, rtol=1e-4)


def test_int_rank_is_clipped_to_the_maximal_ranks() -> None:
  w = build.gaussian(np.random.default_rng(2), SHAPE)
  assert TT.max_rank(SHAPE, in_modes=IN_MODES, out_modes=OUT_MODES) == (9, 12)
  fmt, info = tt(w, 100, in_modes=IN_MODES, out_modes=OUT_MODES)
  assert fmt.rank == (9, 12)
  assert float(info.relative_error) < 1e-5  # the maximal ranks are exact
  low, low_info = tt(w, 2, in_modes=IN_MODES, out_modes=OUT_MODES)
  assert low.rank == (2, 2) and float(low_info.relative_error) > 0.1


def test_jit_and_vmap() -> None:
  rng = np.random.default_rng(3)
  stack = np.stack([build.tt_kernel(rng, (3, 3), (2, 2), IN_MODES, OUT_MODES) for _ in range(2)])
  fit = functools.partial(tt, rank=(2, 2), in_modes=IN_MODES, out_modes=OUT_MODES)
  fmts, infos = jax.jit(jax.vmap(fit))(stack)
  assert fmts.spatial.shape == (2, 3, 3, 2) and infos.relative_error.shape == (2,)
  _, jitted = jax.jit(fit)(stack[0])
  for i in range(2):
    assert float(infos.relative_error[i]) < 1e-4
    dense = TT(fmts.spatial[i], tuple(c[i] for c in fmts.cores)).to_dense()
    assert build.relative_error(stack[i], dense) < 1e-4
  assert float(jitted.relative_error) < 1e-4


@pytest.mark.parametrize(
  ("kernel", "ranks", "in_modes", "out_modes", "name"),
  [
    (np.ones((3, 6, 8)), 2, IN_MODES, OUT_MODES, "kernel"),
    (np.full(SHAPE, np.nan), 2, IN_MODES, OUT_MODES, "kernel"),
    (np.ones(SHAPE), 2, (2, 2), OUT_MODES, "in_modes"),
    (np.ones(SHAPE), 2, (2, 3, 0), OUT_MODES, "in_modes"),
    (np.ones(SHAPE), 2, IN_MODES, (8,), "out_modes"),
    (np.ones(SHAPE), 2, IN_MODES, (2, 2), "out_modes"),
    (np.ones(SHAPE), 0, IN_MODES, OUT_MODES, "rank"),
    (np.ones(SHAPE), (2,), IN_MODES, OUT_MODES, "rank"),
    (np.ones(SHAPE), (10, 2), IN_MODES, OUT_MODES, "rank"),  # r_0 <= kh·kw = 9
    (np.ones(SHAPE), (9, 13), IN_MODES, OUT_MODES, "rank"),  # r_1 <= c_2·s_2 = 12
    (np.ones(SHAPE), (1, 5), IN_MODES, OUT_MODES, "rank"),  # r_1 <= r_0·c_1·s_1 = 4
  ],
)
def test_rejects_bad_input(kernel: np.ndarray, ranks: object, in_modes: tuple, out_modes: tuple, name: str) -> None:
  with pytest.raises(ValueError, match=name):
    tt(kernel, ranks, in_modes=in_modes, out_modes=out_modes)  # type: ignore[arg-type]


def test_matches_tensorly_tensor_train() -> None:
  tl = pytest.importorskip("tensorly", reason="TensorLy is an optional peer (test extra), used only to cross-check")
  from tensorly.decomposition import tensor_train

  w = build.gaussian(np.random.default_rng(4), SHAPE)
  _, ours = tt(w, (3, 4), in_modes=IN_MODES, out_modes=OUT_MODES)
  # The same TT-SVD on the reordered tensor (kh·kw, c1·s1, c2·s2).
  reordered = w.reshape(9, 2, 3, 2, 4).transpose(0, 1, 3, 2, 4).reshape(9, 4, 12)
  theirs = tl.tt_to_tensor(tensor_train(tl.tensor(reordered), rank=[1, 3, 4, 1]))
  assert float(ours.relative_error) <= build.relative_error(reordered, theirs) * (1 + 1e-3) + 1e-6
