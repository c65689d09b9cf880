"""Tucker-2 decomposition on the channel modes: HOSVD, then HOOI refinement."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from efficonv.decompose._compile import fit_jit
from efficonv.decompose._info import HIGHEST, FitInfo, dense_relative_error, safe_ratio
from efficonv.decompose._svd import leading_left_singular_vectors
from efficonv.decompose._validate import check_float, check_int, check_kernel
from efficonv.formats import Tucker2
from efficonv.formats.ranks import rank_tuple
from efficonv.kernels.reconstruct import tucker2_to_dense
from efficonv.typing import Array, ArrayLike


def tucker2(
  kernel: ArrayLike, rank: int | Sequence[int], *, n_iter: int = 10, tol: float = 1e-6
) -> tuple[Tucker2, FitInfo]:
  """Rank-``(R1, R2)`` Tucker-2 decomposition of an HWIO kernel on its channel modes (Kim et al. 2016).

  .. math:: W_{x,y,c,s} \\approx \\sum_{a,b} U_{c,a}\\, G_{x,y,a,b}\\, L_{b,s}, \\qquad
    G = W \\times_{c} U^T \\times_{s} L

  ``U`` and ``L^T`` have orthonormal columns, so for fixed factors the core is the orthogonal projection
  and ``||W - \\hat W||^2 = ||W||^2 - ||G||^2``. The factors start from the truncated HOSVD (leading left
  singular vectors of the ``C_in`` and ``C_out`` unfoldings) and are refined by HOOI: each sweep
  recomputes ``U`` from ``W ×_s L`` and then ``L`` from ``W ×_c U^T``, which never decreases ``||G||``.
  The sweeps run in a ``lax.while_loop`` (at most ``n_iter``, stopping once the relative error changes by
  less than ``tol``), so the fit runs under ``jit`` (``rank``, ``n_iter``, ``tol`` static) and ``vmap``.

  Args:
    kernel: ``(kh, kw, C_in, C_out)``.
    rank: ``(R1, R2)`` with ``1 <= R1 <= C_in`` and ``1 <= R2 <= C_out``, or one int for both
      (:meth:`efficonv.Tucker2.check_rank`).
    n_iter: maximum number of HOOI sweeps after the HOSVD, ``>= 0`` (``0``: plain truncated HOSVD).
    tol: stop when the relative error changes by less than ``tol`` between sweeps, ``>= 0``.

  Returns:
    ``(Tucker2(first (C_in, R1), core (kh, kw, R1, R2), last (R2, C_out)), FitInfo)``; ``n_iter`` counts
    HOOI sweeps and ``degeneracy = max_{a,b} ||G_{:,:,a,b}||_F / ||W||_F`` (``≤ 1``: the terms are
    orthogonal).

  Raises:
    ValueError: naming ``kernel`` (not 4-D/real/finite), ``rank``, ``n_iter`` or ``tol``.

  References:
    Kim et al., `Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile
    Applications <https://arxiv.org/abs/1511.06530>`_, ICLR 2016.
    De Lathauwer, De Moor & Vandewalle, `On the Best Rank-1 and Rank-(R1,R2,...,RN) Approximation of
    Higher-Order Tensors <https://doi.org/10.1137/S0895479898346995>`_, SIAM J. Matrix Anal. Appl. 2000.
  """
  w = check_kernel(kernel)
  r_in, r_out = rank_tuple(Tucker2.check_rank(rank, w.shape))
  n_iter = check_int(n_iter, "n_iter", minimum=0)
  tol = check_float(tol, "tol")
  return _fit(w, n_iter, tol, ranks=(r_in, r_out))


# n_iter and tol are traced, so new values reuse the compiled fit.
@fit_jit("ranks")
def _fit(w: Array, n_iter: int | Array, tol: float | Array, *, ranks: tuple[int, int]) -> tuple[Tucker2, FitInfo]:
  cin, cout = w.shape[2:]
  r_in, r_out = ranks
  w_norm = jnp.linalg.norm(w.ravel())

  def in_factor(last: Array) -> Array:
    projected = jnp.einsum("xycs,bs->cxyb", w, last, precision=HIGHEST)
    return leading_left_singular_vectors(projected.reshape(cin, -1), r_in)

  def out_factor(first: Array) -> Array:
    projected = jnp.einsum("xycs,ca->sxya", w, first, precision=HIGHEST)
    return leading_left_singular_vectors(projected.reshape(cout, -1), r_out).T

  def fit(first: Array, last: Array) -> tuple[Array, Array]:
    core = jnp.einsum("xycs,ca,bs->xyab", w, first, last, precision=HIGHEST)
    return core, dense_relative_error(w, tucker2_to_dense(first, core, last, precision=HIGHEST))

  first = leading_left_singular_vectors(jnp.moveaxis(w, 2, 0).reshape(cin, -1), r_in)
  last = leading_left_singular_vectors(jnp.moveaxis(w, 3, 0).reshape(cout, -1), r_out).T
  _, err = fit(first, last)

  def sweep(state: tuple) -> tuple:
    i, first, last, err, _ = state
    first = in_factor(last)
    last = out_factor(first)
    _, new_err = fit(first, last)
    return i + 1, first, last, new_err, jnp.abs(err - new_err) < tol

  def keep_going(state: tuple) -> Array:
    i, _, _, _, done = state
    return (i < n_iter) & ~done

  start = (jnp.zeros((), jnp.int32), first, last, err, jnp.zeros((), bool))
  sweeps, first, last, _, _ = jax.lax.while_loop(keep_going, sweep, start)
  core, err = fit(first, last)
  slice_norms = jnp.sqrt(jnp.sum(core * core, axis=(0, 1)))
  return Tucker2(first, core, last), FitInfo(err, sweeps, safe_ratio(jnp.max(slice_norms), w_norm))
