"""CP-ALS: exact recovery, float32 safety, the degeneracy guard, jit/vmap, validation, TensorLy parity."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficonv.decompose import FitInfo, cp
from efficonv.formats import CP

from . import _builders as build

SHAPE = (3, 3, 8, 10)


@pytest.mark.parametrize(("init", "tol"), [("svd", 1e-6), ("random", 0.0)])
def test_recovers_exact_cp_rank(init: str, tol: float) -> None:
  w = build.cp_kernel(np.random.default_rng(0), SHAPE, 4)
  fmt, info = cp(w, 4, n_iter=300, tol=tol, init=init, key=jax.random.key(1))
  assert isinstance(fmt, CP) and isinstance(info, FitInfo)
  assert (fmt.first.shape, fmt.vertical.shape, fmt.horizontal.shape, fmt.last.shape) == (
    (8, 4),
    (3, 4),
    (3, 4),
    (4, 10),
  )
  assert fmt.first.dtype == jnp.float32
  assert float(info.relative_error) < 1e-4
  assert build.relative_error(w, fmt.to_dense()) < 1e-4
  # With a tolerance it stops before the cap; the report counts the sweeps done.
  assert 1 <= int(info.n_iter) < 300 if tol > 0 else int(info.n_iter) == 300


def test_levenberg_marquardt_crosses_an_als_swamp_under_jit_and_vmap() -> None:
  # Highly collinear factors (congruence ~0.8): ALS crawls, damped Gauss-Newton converges.
  rng = np.random.default_rng(1)
  factors = [0.9 * rng.standard_normal((s, 1)) + np.sqrt(0.19) * rng.standard_normal((s, 4)) for s in SHAPE]
  w = np.einsum("xr,yr,cr,sr->xycs", *factors).astype(np.float32)
  _, als = cp(w, 4, n_iter=60, tol=0.0, init="random", key=jax.random.key(1))
  lm_fit = functools.partial(cp, rank=4, n_iter=60, tol=0.0, init="random", key=jax.random.key(1), method="lm")
  stack = np.stack([w, -3 * w])
  fmts, lm = jax.jit(jax.vmap(lm_fit))(stack)
  assert fmts.first.shape == (2, 8, 4) and lm.n_iter.shape == (2,)
  for i in range(2):
    assert int(lm.n_iter[i]) == 60
    assert float(lm.relative_error[i]) < 1e-4
    dense = CP(fmts.first[i], fmts.vertical[i], fmts.horizontal[i], fmts.last[i]).to_dense()
    assert build.relative_error(stack[i], dense) < 1e-4
  assert float(als.relative_error) > 10 * float(lm.relative_error[0])


def test_overfactored_float32_fit_from_random_init_stays_finite() -> None:
  # The case where an unregularized float32 ALS breaks down: rank 4 fitted at rank 64.
  w = build.cp_kernel(np.random.default_rng(1), (3, 3, 16, 16), 4)
  fmt, info = cp(w, 64, n_iter=100, init="random", key=jax.random.key(2))
  assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(fmt))
  assert float(info.relative_error) < 1e-3
  assert 0 < float(info.degeneracy) <= 1e3  # the l2 bound 1/sqrt(1e-6)


def _border_rank_two_kernel() -> np.ndarray:
  """Σ_n (a ∘ … ∘ b_n ∘ … ∘ a): rank 4, but a limit of rank-2 tensors — a rank-2 fit degenerates."""
  rng = np.random.default_rng(3)
  a = [v / np.linalg.norm(v) for v in (rng.standard_normal(s) for s in (3, 3, 6, 6))]
  b = [v - (v @ u) * u for v, u in zip((rng.standard_normal(s) for s in (3, 3, 6, 6)), a)]
  b = [v / np.linalg.norm(v) for v in b]
  terms = [np.einsum("x,y,c,s->xycs", *[b[m] if m == n else a[m] for m in range(4)]) for n in range(4)]
  return np.sum(terms, axis=0).astype(np.float32)


@pytest.mark.parametrize(("method", "n_iter"), [("als", 2000), ("lm", 300)])
def test_l2_bounds_degeneracy(method: str, n_iter: int) -> None:
  w = _border_rank_two_kernel()
  _, free = cp(w, 2, n_iter=n_iter, tol=0.0, init="random", l2=0.0, method=method)
  _, guarded = cp(w, 2, n_iter=n_iter, tol=0.0, init="random", l2=1e-2, method=method)
  # Unregularized fits drift into cancelling terms larger than W; the ridge keeps them at most 1/sqrt(l2).
  assert float(free.degeneracy) > 2.0
  assert float(guarded.degeneracy) <= 1 / np.sqrt(1e-2)
  assert float(guarded.degeneracy) < float(free.degeneracy) / 2


def test_tol_zero_runs_every_sweep() -> None:
  w = build.cp_kernel(np.random.default_rng(0), SHAPE, 3)
  _, info = cp(w, 3, n_iter=7, tol=0.0)
  assert int(info.n_iter) == 7


def test_warm_start_from_the_solution() -> None:
  rng = np.random.default_rng(4)
  factors = [rng.standard_normal((s, 4)).astype(np.float32) for s in SHAPE]
  exact = CP(factors[2], factors[0], factors[1], factors[3].T)
  w = np.asarray(exact.to_dense())
  _, info = cp(w, 4, n_iter=1, tol=0.0, init=exact)
  assert float(info.relative_error) < 1e-4


_cp4 = jax.jit(functools.partial(cp, rank=4, n_iter=300))


def test_jit_and_vmap() -> None:
  w = build.cp_kernel(np.random.default_rng(5), SHAPE, 4)
  _, jitted = _cp4(w)
  assert float(jitted.relative_error) < 1e-4
  stack = np.stack([w, np.zeros_like(w), -2 * w])
  fmts, infos = jax.jit(jax.vmap(functools.partial(cp, rank=4, n_iter=300)))(stack)
  assert fmts.first.shape == (3, 8, 4) and fmts.last.shape == (3, 4, 10)
  assert infos.relative_error.shape == infos.n_iter.shape == infos.degeneracy.shape == (3,)
  for i in range(3):
    dense = CP(fmts.first[i], fmts.vertical[i], fmts.horizontal[i], fmts.last[i]).to_dense()
    assert float(infos.relative_error[i]) < 1e-4
    np.testing.assert_allclose(dense, stack[i], atol=1e-3 * float(np.abs(w).max()))
  # Each kernel stops at its own sweep: the zero kernel's error is 0 from the first sweep on.
  assert int(infos.n_iter[1]) == 2 < int(infos.n_iter[0])


def test_nan_kernel_under_jit_reports_nan_error() -> None:
  w = np.full(SHAPE, np.nan, np.float32)
  _, info = _cp4(w)
  assert np.isnan(float(info.relative_error))


def test_zero_kernel_gives_zero_factors_without_nan() -> None:
  fmt, info = cp(np.zeros(SHAPE, np.float32), 4, n_iter=5)
  assert not np.any(fmt.to_dense())
  assert float(info.relative_error) == 0.0 and float(info.degeneracy) == 0.0


def test_int_and_float16_kernels_are_fitted_in_float32() -> None:
  for kernel in (np.ones(SHAPE, np.int32), np.ones(SHAPE, np.float16)):
    fmt, info = cp(kernel, 4, n_iter=3)
    assert fmt.first.dtype == jnp.float32
    assert float(info.relative_error) < 1e-5


def test_max_rank() -> None:
  assert CP.max_rank((3, 3, 64, 64)) == 576
  assert CP.max_rank(SHAPE) == 72


@pytest.mark.parametrize(
  ("kernel", "kwargs", "names"),
  [
    (np.zeros((3, 8, 10)), {"rank": 2}, "kernel"),
    (np.zeros((3, 3, 0, 10)), {"rank": 2}, "kernel"),
    (np.full(SHAPE, np.nan), {"rank": 2}, "kernel"),
    (np.full(SHAPE, np.inf), {"rank": 2}, "kernel"),
    (np.zeros(SHAPE, np.complex64), {"rank": 2}, "kernel"),
    (np.ones(SHAPE), {"rank": 0}, "rank"),
    (np.ones(SHAPE), {"rank": 73}, "rank"),
    (np.ones(SHAPE), {"rank": 2.0}, "rank"),
    (np.ones(SHAPE), {"rank": 2, "n_iter": 0}, "n_iter"),
    (np.ones(SHAPE), {"rank": 2, "tol": -1.0}, "tol"),
    (np.ones(SHAPE), {"rank": 2, "l2": -1e-6}, "l2"),
    (np.ones(SHAPE), {"rank": 2, "init": "hosvd"}, "init"),
    (np.ones(SHAPE), {"rank": 2, "method": "gn"}, "method"),
    (np.ones(SHAPE), {"rank": 2, "n_restarts": 0}, "n_restarts"),
    (np.ones(SHAPE), {"rank": 11, "init": "svd_terms"}, "init='svd_terms' needs rank <= min"),
    (
      np.ones(SHAPE),
      {"rank": 2, "init": CP(np.ones((8, 3)), np.ones((3, 3)), np.ones((3, 3)), np.ones((3, 10)))},
      "init",
    ),
  ],
)
def test_rejects_bad_input(kernel: np.ndarray, kwargs: dict, names: str) -> None:
  with pytest.raises(ValueError, match=names):
    cp(kernel, **kwargs)


def test_no_worse_than_tensorly_parafac() -> None:
  tl = pytest.importorskip("tensorly", reason="TensorLy is an optional peer (test extra), used only to cross-check")
  from tensorly.decomposition import parafac

  rng = np.random.default_rng(6)
  w = build.cp_kernel(rng, SHAPE, 6) + 0.3 * build.gaussian(rng, SHAPE)
  start = [build.gaussian(rng, (s, 4)) for s in SHAPE]
  # Same kernel, rank, starting factors and number of sweeps (tol=0: no early stop on either side).
  _, ours = cp(w, 4, n_iter=30, tol=0.0, init=CP(start[2], start[0], start[1], start[3].T))
  theirs = parafac(tl.tensor(w), 4, n_iter_max=30, tol=0, init=tl.cp_tensor.CPTensor((np.ones(4, np.float32), start)))
  assert float(ours.relative_error) <= build.relative_error(w, tl.cp_to_tensor(theirs)) * (1 + 1e-3) + 1e-6
  # Same init *type*: at rank <= every mode size, both SVD inits are the leading singular vectors.
  _, ours = cp(w, 3, n_iter=30, tol=0.0, init="svd")
  theirs = parafac(tl.tensor(w), 3, n_iter_max=30, tol=0, init="svd")
  assert float(ours.relative_error) <= build.relative_error(w, tl.cp_to_tensor(theirs)) * (1 + 1e-3) + 1e-6


def test_restarts_keep_the_best_of_the_individual_fits() -> None:
  rng = np.random.default_rng(9)
  w = build.cp_kernel(rng, SHAPE, 6) + 0.3 * build.gaussian(rng, SHAPE)
  key = jax.random.key(3)
  fmt, info = cp(w, 5, n_iter=40, tol=0.0, key=key, n_restarts=4)
  # Restart 0 is the single fit, restart 1 the "svd_terms" start, restart i >= 2 the SVD init with the
  # padding columns of fold_in(key, i) (the 3-long modes are shorter than the rank).
  singles = [float(cp(w, 5, n_iter=40, tol=0.0, key=key, n_restarts=1)[1].relative_error)]
  singles += [float(cp(w, 5, n_iter=40, tol=0.0, init="svd_terms", n_restarts=1)[1].relative_error)]
  singles += [
    float(cp(w, 5, n_iter=40, tol=0.0, key=jax.random.fold_in(key, i), n_restarts=1)[1].relative_error) for i in (2, 3)
  ]
  assert float(info.relative_error) == pytest.approx(min(singles), rel=1e-4)
  assert build.relative_error(w, fmt.to_dense()) == pytest.approx(float(info.relative_error), rel=1e-4)
  fits = jax.jit(jax.vmap(lambda k: cp(k, 5, n_iter=10, n_restarts=3)))(jnp.stack([w, -w]))
  assert fits[1].relative_error.shape == (2,) and fits[0].first.shape == (2, SHAPE[2], 5)


def test_svd_terms_start_is_exact_when_every_svd_term_is_a_cp_term() -> None:
  # Orthonormal input and output factors with distinct weights: the terms a_h ⊗ a_w ⊗ a_in are orthogonal,
  # so the SVD of W_(3)^T is the CP itself (σ_r u_r = λ_r a_h ⊗ a_w ⊗ a_in, rank one) and the start is
  # the exact decomposition (one sweep from a random start is far from it).
  rng = np.random.default_rng(11)
  cin, out = (np.linalg.qr(rng.standard_normal((size, 5)))[0] for size in SHAPE[2:])
  spatial = [rng.standard_normal((size, 5)) for size in SHAPE[:2]]
  w = np.einsum("r,xr,yr,cr,sr->xycs", 2.0 ** -np.arange(5), *spatial, cin, out).astype(np.float32)
  _, terms = cp(w, 5, n_iter=1, tol=0.0, init="svd_terms", n_restarts=1)
  _, random = cp(w, 5, n_iter=1, tol=0.0, init="random", n_restarts=1)
  assert float(terms.relative_error) < 1e-4 < 1e-2 < float(random.relative_error)


def test_svd_terms_start_is_deterministic_and_jits() -> None:
  w = build.cp_kernel(np.random.default_rng(12), SHAPE, 6)
  fit = jax.jit(lambda k, key: cp(k, 5, n_iter=5, init="svd_terms", key=key, n_restarts=1))
  a, b = fit(w, jax.random.key(0)), fit(w, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a[0].first), np.asarray(b[0].first))


@pytest.mark.parametrize(("rank", "init"), [(3, "svd"), (5, "random")])
def test_restarts_are_never_worse_than_restart_zero(rank: int, init: str) -> None:
  # Rank 3 fits every mode: the SVD init has no random part, so the restarts start from Gaussian columns
  # (test_restarts_keep_the_best_of_the_individual_fits covers SVD restarts).
  rng = np.random.default_rng(10)
  w = build.cp_kernel(rng, SHAPE, 6) + 0.3 * build.gaussian(rng, SHAPE)
  errors = [float(cp(w, rank, n_iter=30, tol=0.0, init=init, n_restarts=n)[1].relative_error) for n in (1, 2)]
  assert errors[1] <= errors[0] * (1 + 1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_default_is_no_worse_than_tensorly_svd_init(seed: int) -> None:
  # A small analogue of the trained-like 3×3×64×64 kernel (rank-48 structure plus noise, rank 32): the
  # rank exceeds the 3-long modes, so most of their starting columns are random, and which minimum a fit
  # reaches depends on them.
  tl = pytest.importorskip("tensorly", reason="TensorLy is an optional peer (test extra), used only to cross-check")
  from tensorly.decomposition import parafac

  shape = (3, 3, 16, 16)
  rng = np.random.default_rng(seed)
  factors = [rng.standard_normal((size, 12)) for size in shape]
  w = np.einsum("r,xr,yr,cr,sr->xycs", 0.9 ** np.arange(12), *factors)
  w = (w / w.std() + 0.2 * rng.standard_normal(shape)).astype(np.float32)
  _, ours = cp(w, 8, n_iter=100, tol=0.0)
  with warnings.catch_warnings():  # TensorLy warns that the 3-long modes have fewer than 8 singular vectors
    warnings.simplefilter("ignore", UserWarning)
    theirs = parafac(tl.tensor(w), 8, n_iter_max=100, tol=0, init="svd", random_state=0)
  assert float(ours.relative_error) <= build.relative_error(w, tl.cp_to_tensor(theirs)) * (1 + 1e-4)


def test_convergence_test_by_the_norm_identity_stops_where_the_formed_residual_does(
  monkeypatch: pytest.MonkeyPatch,
) -> None:
  # A noisy kernel (error ~0.3): the sweep tracks its error by ||W||² - 2<W, fit> + ||fit||²; forming the
  # residual instead (the path of nearly exact fits) must stop at the same sweep with the same error.
  from efficonv.decompose import _cp_als

  rng = np.random.default_rng(11)
  w = build.cp_kernel(rng, (3, 3, 16, 16), 6) + 0.3 * build.gaussian(rng, (3, 3, 16, 16))
  _, by_identity = cp(w, 5, n_iter=500, tol=1e-5, n_restarts=1)
  jax.clear_caches()
  monkeypatch.setattr(_cp_als, "FORMED_ERROR_BELOW", np.inf)
  _, formed = cp(w, 5, n_iter=500, tol=1e-5, n_restarts=1)
  jax.clear_caches()
  assert 2 < int(by_identity.n_iter) < 500
  assert abs(int(by_identity.n_iter) - int(formed.n_iter)) <= 1
  assert float(by_identity.relative_error) == pytest.approx(float(formed.relative_error), rel=1e-4)


def test_identity_relative_error_equals_the_formed_residual() -> None:
  from efficonv.decompose._cp_als import gram, identity_relative_error, unit_columns

  rng = np.random.default_rng(12)
  w = jnp.asarray(build.cp_kernel(rng, (3, 3, 8, 10), 4) + 0.5 * build.gaussian(rng, (3, 3, 8, 10)))
  a_h, a_w, a_in, a_out = (unit_columns(jnp.asarray(build.gaussian(rng, (s, 5))))[0] for s in (3, 3, 8, 10))
  weights = jnp.asarray(np.abs(build.gaussian(rng, (5,))) + 0.5)
  mttkrp_out = jnp.einsum("xycs,xr,yr,cr->sr", w, a_h, a_w, a_in, precision="highest")
  grams = gram(a_h) * gram(a_w) * gram(a_in) * gram(a_out)
  fit = jnp.einsum("r,xr,yr,cr,sr->xycs", weights, a_h, a_w, a_in, a_out, precision="highest")
  formed = float(jnp.linalg.norm(w - fit) / jnp.linalg.norm(w))
  got = float(identity_relative_error(jnp.linalg.norm(w), mttkrp_out, a_out, weights, grams))
  assert got == pytest.approx(formed, rel=1e-4)


def test_a_fit_whose_cholesky_solves_fail_is_rerun_with_lu_solves(monkeypatch: pytest.MonkeyPatch) -> None:
  # Cholesky and LU solve the same positive definite systems, so with working Cholesky solves the LU rerun
  # is the same fit. Make every Cholesky fit end non-finite (as a numerically indefinite Gram does): the
  # eager call (which compiles the LU fallback only when needed) and the traced call (which has it in the
  # program) must both return the LU fit.
  from efficonv.decompose import _cp_als

  rng = np.random.default_rng(13)
  w = build.cp_kernel(rng, SHAPE, 6) + 0.3 * build.gaussian(rng, SHAPE)
  _, reference = cp(w, 4, n_iter=20, tol=0.0, n_restarts=2)
  real_als = _cp_als.als

  def cholesky_fails(w: jax.Array, factors: tuple, *, solver: str = "cholesky", **options: object) -> tuple:
    fitted, weights, sweeps = real_als(w, factors, solver=solver, **options)
    return fitted, (weights * jnp.nan if solver == "cholesky" else weights), sweeps

  jax.clear_caches()
  monkeypatch.setattr(_cp_als, "als", cholesky_fails)
  _, eager = cp(w, 4, n_iter=20, tol=0.0, n_restarts=2)
  _, traced = jax.jit(lambda k: cp(k, 4, n_iter=20, tol=0.0, n_restarts=2))(jnp.asarray(w))
  jax.clear_caches()
  for fit in (eager, traced):
    assert float(fit.relative_error) == pytest.approx(float(reference.relative_error), rel=1e-3)
