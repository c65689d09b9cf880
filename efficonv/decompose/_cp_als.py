"""CP-ALS sweeps with a ridge on the rank-one term norms (the default method of :func:`~efficonv.decompose.cp`)."""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp

from efficonv.decompose._info import HIGHEST, safe_ratio
from efficonv.typing import Array

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


def _ridge_update(mttkrp: Array, hadamard_gram: Array, l2: float | Array) -> tuple[Array, Array]:
  """Solves ``B (hadamard_gram + l2 I) = mttkrp`` and splits ``B`` into unit columns and weights.

  The shifted Gram is symmetric positive definite in exact arithmetic, so Cholesky is tried first (the
  cheapest solve). In float32, rounding can make a nearly singular Gram numerically indefinite (over-
  factored fits); Cholesky then yields NaN, and the solve falls back to LU with partial pivoting, which is
  backward stable for any nonsingular matrix.
  """
  shifted = hadamard_gram + l2 * jnp.eye(hadamard_gram.shape[0], dtype=hadamard_gram.dtype)
  chol = jax.lax.linalg.cholesky(shifted, symmetrize_input=False)
  # B L L^T = M: two triangular solves from the right.
  b = jax.lax.linalg.triangular_solve(chol, mttkrp, left_side=False, lower=True, transpose_a=True)
  b = jax.lax.linalg.triangular_solve(chol, b, left_side=False, lower=True, transpose_a=False)
  b = jax.lax.cond(jnp.isfinite(b).all(), lambda: b, lambda: jnp.linalg.solve(shifted, mttkrp.T).T)
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
) -> tuple[Factors, Array, Array]:
  """Runs up to ``n_iter`` ALS sweeps; returns unit-column factors, weights ``λ`` and the sweep count."""
  kh, kw, cin, cout = w.shape
  w_rows = w.reshape(kh * kw * cin, cout)  # W with the output mode last, as a GEMM operand

  def sweep(state: tuple) -> tuple:
    i, (a_h, a_w, a_in, a_out), (_, g_w, g_in, g_out), _, err, _ = state
    # The Grams travel with the factors: each is recomputed once, right after its factor changes.
    # Modes 0-2 all contract W with the (still fixed) output factor first: do it once per sweep.
    w_out = jnp.dot(w_rows, a_out, precision=HIGHEST).reshape(kh, kw, cin, -1)
    # a_in stays fixed through the first two updates as well.
    w_out_in = jnp.einsum("xycr,cr->xyr", w_out, a_in, precision=HIGHEST)
    m_h = jnp.einsum("xyr,yr->xr", w_out_in, a_w, precision=HIGHEST)
    a_h, _ = _ridge_update(m_h, g_w * g_in * g_out, l2)
    g_h = gram(a_h)
    m_w = jnp.einsum("xyr,xr->yr", w_out_in, a_h, precision=HIGHEST)
    a_w, _ = _ridge_update(m_w, g_h * g_in * g_out, l2)
    g_w = gram(a_w)
    spatial = a_h[:, None, :] * a_w[None, :, :]  # (kh, kw, R)
    m_in = jnp.einsum("xycr,xyr->cr", w_out, spatial, precision=HIGHEST)
    a_in, _ = _ridge_update(m_in, g_h * g_w * g_out, l2)
    g_in = gram(a_in)
    khatri_rao = (spatial[:, :, None, :] * a_in[None, None, :, :]).reshape(kh * kw * cin, -1)
    m_out = jnp.dot(w_rows.T, khatri_rao, precision=HIGHEST)
    a_out, weights = _ridge_update(m_out, g_h * g_w * g_in, l2)
    g_out = gram(a_out)
    if check_convergence:
      fit = jnp.dot(khatri_rao, (a_out * weights[None, :]).T, precision=HIGHEST)
      new_err = safe_ratio(jnp.linalg.norm((w_rows - fit).ravel()), w_norm)
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
