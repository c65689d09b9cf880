"""Levenberg–Marquardt (damped Gauss–Newton) CP fitting, matrix-free (``cp(..., method="lm")``).

It minimizes the same objective as the ALS sweeps, written in the unnormalized factors ``A_n``:

.. math::
  f(A) = \\tfrac12 \\|W - [\\![A_0, A_1, A_2, A_3]\\!]\\|_F^2
       + \\tfrac{\\ell_2}{2} \\sum_r \\prod_n \\|a_{n,r}\\|^2,

the penalty being ``ℓ2/2 Σ_r ||rank-one term r||²``. It is handled as extra residuals
``√ℓ2 · (a_{0,r} ∘ ⋯ ∘ a_{3,r})``, so Gauss–Newton sees it too. Each step solves

.. math:: (J^T J + \\mu I)\\, \\delta = -\\nabla f

by preconditioned conjugate gradients without forming ``J``: ``J^T J v`` only needs the factor Grams
``G_k = A_k^T A_k`` (Tensorlab's structure, ``O(R^2 Σ I_n)`` per product):

.. math::
  (J^T J v)_n = V_n \\Gamma_n + A_n \\sum_{m \\ne n} (V_m^T A_m) \\circledast \\Gamma_{nm},
  \\qquad \\Gamma_n = \\circledast_{k \\ne n} G_k,\\ \\Gamma_{nm} = \\circledast_{k \\notin \\{n,m\\}} G_k

(the penalty adds the same with every ``G_k`` replaced by its diagonal). The preconditioner is the exact
block diagonal ``Γ_n + μ I``. A step is taken only when it lowers ``f`` (evaluated exactly, with the dense
residual); ``μ`` follows Nielsen's rule. Since ``f`` never increases, the degeneracy bound of the ALS
method (``≤ 1/√ℓ2`` after the first ALS sweep that starts it) carries over.

References:
  Tomasi & Bro, `A comparison of algorithms for fitting the PARAFAC model
  <https://doi.org/10.1016/j.csda.2004.11.013>`_, CSDA 2006.
  Sorber, Van Barel & De Lathauwer, `Optimization-based algorithms for tensor decompositions: canonical
  polyadic decomposition, ... <https://doi.org/10.1137/120868323>`_, SIAM J. Optim. 2013 (Tensorlab).
  Nielsen, `Damping parameter in Marquardt's method <https://orbit.dtu.dk/en/publications/damping-parameter-in-marquardts-method>`_,
  IMM DTU 1999.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from efficonv.decompose._cp_als import Factors, factors_of, gram
from efficonv.decompose._info import HIGHEST, safe_ratio
from efficonv.typing import Array

# Conjugate-gradient iterations per Gauss–Newton step (Tensorlab's default is 15).
CG_ITERATIONS = 15
_MU_START = 1e-3  # initial damping, relative to the largest diagonal entry of J^T J
_MU_MAX = 1e20


def _prod(values: list[Array]) -> Array:
  return functools.reduce(lambda a, b: a * b, values)


def _sum(values: list[Array]) -> Array:
  return functools.reduce(lambda a, b: a + b, values)


def _dot(u: Factors, v: Factors) -> Array:
  return _sum([jnp.vdot(a, b, precision=HIGHEST) for a, b in zip(u, v)])


def _axpy(alpha: Array | float, x: Factors, y: Factors) -> Factors:
  return factors_of(b + alpha * a for a, b in zip(x, y))


def _gn_product(factors: Factors, grams: tuple[Array, ...], v: Factors, l2: Array | float) -> Factors:
  """``J^T J v`` for the data residual plus the term-norm penalty residuals."""
  diags = [jnp.diagonal(g) for g in grams]
  cross = [jnp.dot(vm.T, am, precision=HIGHEST) for vm, am in zip(v, factors)]  # V_m^T A_m
  cross_diag = [jnp.sum(vm * am, axis=0) for vm, am in zip(v, factors)]  # v_{m,r} · a_{m,r}
  out = []
  for n in range(4):
    others = [k for k in range(4) if k != n]
    inner = _sum([cross[m] * _prod([grams[k] for k in others if k != m]) for m in others])
    inner_diag = _sum([cross_diag[m] * _prod([diags[k] for k in others if k != m]) for m in others])
    data = jnp.dot(v[n], _prod([grams[k] for k in others]), precision=HIGHEST)
    data = data + jnp.dot(factors[n], inner, precision=HIGHEST)
    penalty = v[n] * _prod([diags[k] for k in others])[None, :] + factors[n] * inner_diag[None, :]
    out.append(data + l2 * penalty)
  return factors_of(out)


def levenberg_marquardt(
  w: Array,
  factors: Factors,
  *,
  n_iter: int | Array,
  tol: float | Array,
  l2: float | Array,
  w_norm: Array,
  check_convergence: bool,
) -> tuple[Factors, Array]:
  """Runs up to ``n_iter`` LM steps from unnormalized ``factors``; returns the factors and the steps done."""
  kh, kw, cin, cout = w.shape
  rank = factors[0].shape[1]
  w_rows = w.reshape(kh * kw * cin, cout)
  eye = jnp.eye(rank, dtype=w.dtype)

  def khatri_rao(f: Factors) -> Array:
    a_h, a_w, a_in, _ = f
    return (a_h[:, None, None, :] * a_w[None, :, None, :] * a_in[None, None, :, :]).reshape(-1, rank)

  def objective(f: Factors, grams: tuple[Array, ...]) -> tuple[Array, Array]:
    """``(f, ||W - X||_F)``, the residual formed explicitly (no cancellation in float32)."""
    residual = w_rows - jnp.dot(khatri_rao(f), f[3].T, precision=HIGHEST)
    data = jnp.sum(residual * residual)
    penalty = jnp.sum(_prod([jnp.diagonal(g) for g in grams]))
    return 0.5 * data + 0.5 * l2 * penalty, jnp.sqrt(data)

  def gradient(f: Factors, grams: tuple[Array, ...]) -> Factors:
    a_h, a_w, a_in, a_out = f
    w_out = jnp.dot(w_rows, a_out, precision=HIGHEST).reshape(kh, kw, cin, rank)
    w_out_in = jnp.einsum("xycr,cr->xyr", w_out, a_in, precision=HIGHEST)
    mttkrp = (
      jnp.einsum("xyr,yr->xr", w_out_in, a_w, precision=HIGHEST),
      jnp.einsum("xyr,xr->yr", w_out_in, a_h, precision=HIGHEST),
      jnp.einsum("xycr,xyr->cr", w_out, a_h[:, None, :] * a_w[None, :, :], precision=HIGHEST),
      jnp.dot(w_rows.T, khatri_rao(f), precision=HIGHEST),
    )
    diags = [jnp.diagonal(g) for g in grams]
    out = []
    for n in range(4):
      others = [k for k in range(4) if k != n]
      data = jnp.dot(f[n], _prod([grams[k] for k in others]), precision=HIGHEST) - mttkrp[n]
      out.append(data + l2 * f[n] * _prod([diags[k] for k in others])[None, :])
    return factors_of(out)

  def solve(f: Factors, grams: tuple[Array, ...], g: Factors, mu: Array) -> Factors:
    """Preconditioned CG for ``(J^T J + μ I) δ = -g``, from ``δ = 0``."""
    diags = [jnp.diagonal(g_) for g_ in grams]
    blocks = []
    for n in range(4):
      others = [k for k in range(4) if k != n]
      block = _prod([grams[k] for k in others]) + jnp.diag(l2 * _prod([diags[k] for k in others])) + mu * eye
      blocks.append(jnp.linalg.inv(block))

    def precondition(r: Factors) -> Factors:
      return factors_of(jnp.dot(rn, bn, precision=HIGHEST) for rn, bn in zip(r, blocks))

    def operator(v: Factors) -> Factors:
      return _axpy(mu, v, _gn_product(f, grams, v, l2))

    def step(_: int, state: tuple) -> tuple:
      x, r, p, rz = state
      q = operator(p)
      pq = _dot(p, q)
      alpha = jnp.where(pq > 0, rz / jnp.where(pq > 0, pq, 1), 0.0)
      x = _axpy(alpha, p, x)
      r = _axpy(-alpha, q, r)
      z = precondition(r)
      rz_new = _dot(r, z)
      beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1), 0.0)
      return x, r, _axpy(beta, p, z), rz_new

    r0 = factors_of(-gn for gn in g)
    z0 = precondition(r0)
    x0 = factors_of(jnp.zeros_like(gn) for gn in g)
    x, _, _, _ = jax.lax.fori_loop(0, CG_ITERATIONS, step, (x0, r0, z0, _dot(r0, z0)))
    return x

  def body(state: tuple) -> tuple:
    i, f, grams, obj, err, mu, nu, _ = state
    g = gradient(f, grams)
    delta = solve(f, grams, g, mu)
    candidate = _axpy(1.0, delta, f)
    candidate_grams = tuple(gram(a) for a in candidate)
    candidate_obj, candidate_residual = objective(candidate, candidate_grams)
    # Decrease predicted by the Gauss–Newton model (without the damping term).
    predicted = -_dot(g, delta) - 0.5 * _dot(delta, _gn_product(f, grams, delta, l2))
    gain = (obj - candidate_obj) / jnp.where(predicted > 0, predicted, jnp.inf)
    accept = (candidate_obj < obj) & jnp.isfinite(candidate_obj)
    keep = functools.partial(jnp.where, accept)
    f = jax.tree.map(keep, candidate, f)
    grams = jax.tree.map(keep, candidate_grams, grams)
    new_err = jnp.where(accept, safe_ratio(candidate_residual, w_norm), err)
    mu = jnp.where(accept, mu * jnp.maximum(1 / 3, 1 - (2 * gain - 1) ** 3), jnp.minimum(mu * nu, _MU_MAX))
    nu = jnp.where(accept, 2.0, jnp.minimum(2 * nu, 2.0**30))
    done = accept & (jnp.abs(err - new_err) < tol) if check_convergence else jnp.zeros((), bool)
    return i + 1, f, grams, keep(candidate_obj, obj), new_err, mu, nu, done

  def keep_going(state: tuple) -> Array:
    i, *_, done = state
    return (i < n_iter) & ~done

  grams = tuple(gram(a) for a in factors)
  obj, residual = objective(factors, grams)
  diags = [jnp.diagonal(g) for g in grams]
  largest_diagonal = jnp.max(jnp.stack([_prod([diags[k] for k in range(4) if k != n]) for n in range(4)]))
  start = (
    jnp.zeros((), jnp.int32),
    factors,
    grams,
    obj,
    safe_ratio(residual, w_norm),
    _MU_START * largest_diagonal * (1 + l2),
    jnp.asarray(2.0, w.dtype),
    jnp.zeros((), bool),
  )
  steps, factors, *_ = jax.lax.while_loop(keep_going, body, start)
  return factors, steps
