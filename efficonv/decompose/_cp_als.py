"""CP-ALS sweeps with a ridge on the rank-one term norms (the default method of :func:`~efficonv.decompose.cp`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from efficonv.decompose._info import HIGHEST, safe_ratio
from efficonv.typing import Array

# Below this relative error the convergence test forms the residual (see als).
FORMED_ERROR_BELOW = 0.1
# Factors in tensor-mode order (kh, kw, C_in, C_out), each (I_n, R).
Factors = tuple[Array, Array, Array, Array]


def factors_of(values: Iterable[Array]) -> Factors:
  """The four factors of ``values`` as a :data:`Factors` tuple (what ``tuple(...)`` of a generator builds)."""
  a_h, a_w, a_in, a_out = values
  return a_h, a_w, a_in, a_out


def gram(a: Array) -> Array:
  """``a^T a``."""
  return jnp.dot(a.T, a, precision=HIGHEST)


def unit_columns(a: Array) -> tuple[Array, Array]:
  """Returns ``(a / ||columns||, ||columns||)``; all-zero columns stay zero instead of becoming NaN."""
  norms = jnp.linalg.norm(a, axis=0)
  return a / jnp.where(norms > 0, norms, 1)[None, :], norms


Solver = Literal["cholesky", "lu"]


def identity_relative_error(
  w_norm: Array, mttkrp_out: Array, a_out: Array, weights: Array, hadamard_grams: Array
) -> Array:
  """``||W - fit|| / ||W||`` of a CP fit without forming it (as TensorLy does).

  .. math:: \\|W - \\hat W\\|^2 = \\|W\\|^2 - 2 \\sum_r \\lambda_r \\langle m_r, a_r \\rangle + \\lambda^T (\\circledast_n A^{(n)T} A^{(n)}) \\lambda

  with ``m = mttkrp_out`` the output-mode MTTKRP of the other (unit-column) factors, ``a = a_out`` and
  ``hadamard_grams`` the Hadamard product of all four Grams. It cancels: in float32 it resolves relative
  errors only down to about ``sqrt(eps)``.
  """
  inner = jnp.sum(weights * jnp.sum(mttkrp_out * a_out, axis=0))
  fit_sq = jnp.dot(weights, jnp.dot(hadamard_grams, weights, precision=HIGHEST), precision=HIGHEST)
  return safe_ratio(jnp.sqrt(jnp.maximum(w_norm**2 - 2 * inner + fit_sq, 0.0)), w_norm)


def _ridge_update(mttkrp: Array, hadamard_gram: Array, l2: float | Array, solver: Solver) -> tuple[Array, Array]:
  """Solves ``B (hadamard_gram + l2 I) = mttkrp`` and splits ``B`` into unit columns and weights.

  The shifted Gram is symmetric positive definite in exact arithmetic, so ``"cholesky"`` (the cheapest
  solve: one factorization, two triangular solves) is the solver of every sweep. In float32, rounding can
  make a nearly singular Gram numerically indefinite (over-factored fits); Cholesky then yields NaN, which
  propagates to the end of the fit, and :func:`als_with_fallback` reruns that fit with ``"lu"`` (partial
  pivoting, backward stable for any nonsingular matrix). Checking once per fit instead of once per update
  keeps a data-dependent branch out of the sweep (under ``vmap`` a branch runs both sides, so the LU
  solve ran on every update).
  """
  shifted = hadamard_gram + l2 * jnp.eye(hadamard_gram.shape[0], dtype=hadamard_gram.dtype)
  if solver == "lu":
    return unit_columns(jnp.linalg.solve(shifted, mttkrp.T).T)
  chol = jax.lax.linalg.cholesky(shifted, symmetrize_input=False)
  # B L L^T = M: two triangular solves from the right.
  b = jax.lax.linalg.triangular_solve(chol, mttkrp, left_side=False, lower=True, transpose_a=True)
  b = jax.lax.linalg.triangular_solve(chol, b, left_side=False, lower=True, transpose_a=False)
  return unit_columns(b)


def als(
  w: Array,
  factors: Factors,
  *,
  n_iter: int | Array,
  tol: float | Array,
  l2: float | Array,
  w_norm: Array,
  check_convergence: bool,
  solver: Solver = "cholesky",
) -> tuple[Factors, Array, Array]:
  """Runs up to ``n_iter`` ALS sweeps; returns unit-column factors, weights ``λ`` and the sweep count.

  ``solver`` solves the normal equations of every update (see ``_ridge_update``); ``check_convergence``
  stops once the relative error, tracked by the norm identity below at no pass over ``W``, changes by
  less than ``tol``.
  """
  kh, kw, cin, cout = w.shape
  w_rows = w.reshape(kh * kw * cin, cout)  # W with the output mode last, as a GEMM operand
  # The output-mode MTTKRP contracts W's rows: a row-major copy of W^T makes it a plain GEMM (XLA:CPU
  # runs a GEMM with a transposed operand through a slower, non-fused path).
  w_cols = jnp.transpose(w_rows).copy()

  def sweep(state: tuple) -> tuple:
    i, (a_h, a_w, a_in, a_out), (_, g_w, g_in, g_out), _, err, _ = state
    # The Grams travel with the factors: each is recomputed once, right after its factor changes.
    # Modes 0-2 all contract W with the (still fixed) output factor first: do it once per sweep.
    w_out = jnp.dot(w_rows, a_out, precision=HIGHEST).reshape(kh, kw, cin, -1)
    # a_in stays fixed through the first two updates as well.
    w_out_in = jnp.einsum("xycr,cr->xyr", w_out, a_in, precision=HIGHEST)
    m_h = jnp.einsum("xyr,yr->xr", w_out_in, a_w, precision=HIGHEST)
    a_h, _ = _ridge_update(m_h, g_w * g_in * g_out, l2, solver)
    g_h = gram(a_h)
    m_w = jnp.einsum("xyr,xr->yr", w_out_in, a_h, precision=HIGHEST)
    a_w, _ = _ridge_update(m_w, g_h * g_in * g_out, l2, solver)
    g_w = gram(a_w)
    spatial = a_h[:, None, :] * a_w[None, :, :]  # (kh, kw, R)
    m_in = jnp.einsum("xycr,xyr->cr", w_out, spatial, precision=HIGHEST)
    a_in, _ = _ridge_update(m_in, g_h * g_w * g_out, l2, solver)
    g_in = gram(a_in)
    khatri_rao = (spatial[:, :, None, :] * a_in[None, None, :, :]).reshape(kh * kw * cin, -1)
    m_out = jnp.dot(w_cols, khatri_rao, precision=HIGHEST)
    grams_but_out = g_h * g_w * g_in
    a_out, weights = _ridge_update(m_out, grams_but_out, l2, solver)
    g_out = gram(a_out)
    if check_convergence:
      identity_err = identity_relative_error(w_norm, m_out, a_out, weights, grams_but_out * g_out)

      def formed_err() -> Array:
        fit = jnp.dot(khatri_rao, (a_out * weights[None, :]).T, precision=HIGHEST)
        return safe_ratio(jnp.linalg.norm((w_rows - fit).ravel()), w_norm)

      # The identity cancels: in float32 it resolves a relative error only down to ~sqrt(eps) ≈ 3e-4, so
      # a nearly exact fit forms its residual instead (one GEMM) to keep converging to the true minimum.
      new_err = jax.lax.cond(identity_err < FORMED_ERROR_BELOW, formed_err, lambda: identity_err)
      done = jnp.abs(err - new_err) < tol
    else:
      new_err, done = err, jnp.zeros((), bool)
    return i + 1, (a_h, a_w, a_in, a_out), (g_h, g_w, g_in, g_out), weights, new_err, done

  def keep_going(state: tuple) -> Array:
    i, _, _, _, _, done = state
    return (i < n_iter) & ~done

  rank = factors[0].shape[1]
  start = (
    jnp.zeros((), jnp.int32),
    factors,
    tuple(gram(f) for f in factors),
    jnp.ones((rank,), w.dtype),
    jnp.asarray(jnp.inf, w.dtype),  # previous relative error: no sweep converges on its first
    jnp.zeros((), bool),
  )
  sweeps, factors, _, weights, _, _ = jax.lax.while_loop(keep_going, sweep, start)
  return factors, weights, sweeps


def finite_fit(result: tuple[Factors, Array, Array]) -> Array:
  """Whether an :func:`als` result's factors and weights are all finite."""
  fitted, weights, _ = result
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in (weights, *fitted)]))


def als_with_cholesky(w: Array, factors: Factors, **options: Any) -> tuple[tuple[Factors, Array, Array], Array]:
  """:func:`als` with Cholesky solves, and whether it ended finite (:func:`als_with_fallback` without the rerun)."""
  result = als(w, factors, solver="cholesky", **options)
  return result, finite_fit(result)


def als_with_fallback(w: Array, factors: Factors, **options: Any) -> tuple[tuple[Factors, Array, Array], Array]:
  """:func:`als` with Cholesky solves, rerun with LU solves when that fit ends non-finite (see ``_ridge_update``).

  Returns the result and whether the Cholesky fit ended finite (``False``: the result is the LU rerun's).
  """
  result, finite = als_with_cholesky(w, factors, **options)
  return jax.lax.cond(finite, lambda: result, lambda: als(w, factors, solver="lu", **options)), finite
