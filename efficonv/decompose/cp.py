"""CP decomposition of a dense kernel: regularized CP-ALS (default) or Levenberg–Marquardt.

The kernel ``W`` (``kh × kw × C_in × C_out``) is fitted by

.. math::
  \\min_{\\lambda, A^{(n)}} \\Big\\| W - \\sum_{r=1}^R \\lambda_r\\, a^{(0)}_r \\circ a^{(1)}_r \\circ a^{(2)}_r
    \\circ a^{(3)}_r \\Big\\|_F^2 + \\ell_2 \\|\\lambda\\|_2^2, \\qquad \\|a^{(n)}_r\\| = 1,

with modes ``(kh, kw, C_in, C_out)``. One sweep updates the modes in that order; each update is the
exact minimizer over ``B = A^{(n)} diag(λ)`` with the other (unit-column) factors fixed:

.. math::
  B = M^{(n)} \\big(\\circledast_{m \\ne n} A^{(m)T} A^{(m)} + \\ell_2 I\\big)^{-1},
  \\qquad M^{(n)} = W_{(n)} \\big(\\odot_{m \\ne n} A^{(m)}\\big)

(the MTTKRP, computed by einsum), followed by column normalization ``λ_r = ||b_r||``.

Degeneracy guard (Phan et al. 2020): with unit columns in the other factors, ``||B||_F^2 = Σ_r λ_r^2``
is the summed squared norm of the rank-one terms, so the ridge ``ℓ2`` penalizes exactly the large
cancelling terms of a degenerate fit. Every update minimizes the same objective, so it never increases;
after the first update it is ``≤ ||W||²`` (``B = 0`` is feasible), hence in exact arithmetic every rank-one
term obeys ``||λ_r a_r^{(0)} ∘ ⋯ ∘ a_r^{(3)}|| ≤ ||W|| / √ℓ2`` — ``FitInfo.degeneracy ≤ 1/√ℓ2``
(``1000`` for the default ``1e-6``). The same ridge keeps the normal equations positive definite in
float32 (the Gram Hadamard product has a unit diagonal, so ``ℓ2`` is a relative shift). A larger ``ℓ2``
tightens the bound at the price of a bias of order ``ℓ2`` in the fit; the default leaves exact low-rank
kernels recoverable to ``~1e-6`` relative error.

``method="lm"`` minimizes the same objective by damped Gauss–Newton steps (matrix-free, see
:mod:`efficonv.decompose._cp_lm`) after one ALS sweep; it is slower per iteration but crosses the
"swamps" where ALS crawls (nearly collinear factors), the method Lebedev et al. used.

References:
  Kolda & Bader, `Tensor Decompositions and Applications <https://doi.org/10.1137/07070111X>`_,
  SIAM Review 2009 (CP-ALS).
  Lebedev et al., `Speeding-up Convolutional Neural Networks Using Fine-tuned CP-Decomposition
  <https://arxiv.org/abs/1412.6553>`_, 2014 (ICLR 2015).
  Phan et al., `Stable Low-rank Tensor Decomposition for Compression of Convolutional Neural Network
  <https://arxiv.org/abs/2008.05441>`_, ECCV 2020.
"""

from __future__ import annotations

import functools
from typing import Literal, Union

import jax
import jax.numpy as jnp

from efficonv.decompose._compile import fit_jit
from efficonv.decompose._cp_als import Factors, als_with_cholesky, als_with_fallback, factors_of, unit_columns
from efficonv.decompose._cp_lm import levenberg_marquardt
from efficonv.decompose._info import HIGHEST, FitInfo, dense_relative_error, safe_ratio
from efficonv.decompose._svd import leading_eigenvectors
from efficonv.decompose._validate import check_float, check_int, check_kernel
from efficonv.formats import CP
from efficonv.formats.ranks import single_rank
from efficonv.kernels.reconstruct import cp_to_dense
from efficonv.typing import Array, ArrayLike

Init = Union[Literal["svd", "svd_terms", "random"], CP]
INITS = ("svd", "svd_terms", "random")
Method = Literal["als", "lm"]
METHODS = ("als", "lm")
# Fits from which the best is kept (see cp's n_restarts).
DEFAULT_RESTARTS = 4
# Alternating rank-one updates that fit each term of the "svd_terms" start (see _svd_terms_factors).
RANK_ONE_SWEEPS = 10


def cp(
  kernel: ArrayLike,
  rank: int,
  *,
  n_iter: int = 100,
  tol: float = 1e-6,
  init: Init = "svd",
  key: Array | None = None,
  l2: float = 1e-6,
  method: Method = "als",
  n_restarts: int = DEFAULT_RESTARTS,
) -> tuple[CP, FitInfo]:
  """Rank-``rank`` CP decomposition of an HWIO kernel by regularized CP-ALS or LM (see the module docstring).

  The whole fit is one ``lax.while_loop`` (at most ``n_iter`` sweeps, stopping once the relative error
  changes by less than ``tol``), so it runs under ``jax.jit`` (close over or mark static every argument
  but ``kernel`` and ``key``) and ``jax.vmap`` over a stack of same-shape kernels (each kernel keeps its
  own stopping sweep). Called eagerly, the fit is compiled once per kernel shape, ``rank``, ``init`` kind
  and ``method``; other values of ``n_iter``, ``tol`` and ``l2`` reuse it. An eager call waits for its
  result: a fit whose float32 Cholesky solves broke down (see ``_cp_als._ridge_update``) is rerun with
  LU solves, a second program compiled only then.

  Example:
    >>> import jax
    >>> from efficonv.decompose import cp
    >>> w = jax.random.normal(jax.random.key(0), (3, 3, 16, 32))
    >>> fmt, info = cp(w, 8, n_iter=20)
    >>> fmt.rank, fmt.to_dense().shape
    (8, (3, 3, 16, 32))

  Args:
    kernel: ``(kh, kw, C_in, C_out)`` dense kernel; ints are cast to float32, lower floats promoted.
    rank: ``R``, ``1 <= R <=`` :meth:`efficonv.CP.max_rank` (``∏ shape / max(shape)``).
    n_iter: maximum number of iterations, ``>= 1``: ALS sweeps (each updates all four factors), or for
      ``"lm"`` one ALS sweep plus ``n_iter - 1`` LM steps (rejected steps count).
    tol: stop when the relative error changes by less than ``tol`` between iterations; ``0`` runs all
      ``n_iter`` and skips the per-sweep error of ALS.
    init: ``"svd"`` — leading left singular vectors of each unfolding, the modes shorter than ``R``
      padded with uniform ``[0, 1)`` columns (normalized), as TensorLy's ``parafac(init="svd")`` pads
      them, so that a single fit draws from the same minima; ``"svd_terms"`` — the ``R`` leading terms
      of the SVD of the output unfolding ``W_(3)^T = U Σ V^T``, each left term ``σ_r u_r`` (a
      ``kh × kw × C_in`` tensor) replaced by its best rank-one approximation and ``v_r`` kept as the
      output column (deterministic; needs ``R <= min(kh·kw·C_in, C_out)``); ``"random"`` — Gaussian
      unit columns; or a :class:`CP` of the same shape and rank to warm-start from.
    key: PRNG key for random columns; ``jax.random.key(0)`` when ``None``.
    l2: ridge on the rank-one term norms (relative to the unit Gram diagonal); guarantees
      ``FitInfo.degeneracy <= 1/sqrt(l2)``. ``0`` disables the guard and the float32 safety margin.
    method: ``"als"`` (alternating least squares) or ``"lm"`` (Levenberg–Marquardt).
    n_restarts: fits run (one after another, in one compiled ``lax.map``) from different starts, of
      which the one with the least relative error is returned. The first starts from ``init`` (it is the
      fit ``n_restarts=1`` returns, so more restarts are never worse). Unless ``init`` is ``"random"`` or
      ``"svd_terms"``, the second starts from ``"svd_terms"`` where that start exists: its minimum is
      not a random draw, and it reached a better one than the median TensorLy seed on kernels where the
      random-padded starts mostly did not. The others start from the SVD init with fresh random padding
      columns (keys ``fold_in(key, i)`` for restart ``i``) when some mode is shorter than ``rank`` —
      those columns decide which local minimum ALS reaches, and fully random starts reached worse
      minima than SVD starts — and from Gaussian unit columns when the SVD init has no random part or
      ``init="random"``. A single ``"svd"`` fit's error is a draw from the same distribution as
      TensorLy's ``parafac(init="svd")`` at the same rank and sweeps (the experiments'
      ``bench.cp_quality`` compares the default with the median of TensorLy's seeds). Costs
      ``n_restarts`` times one fit.

  Returns:
    ``(CP, FitInfo)``. The term weights ``λ_r`` are absorbed evenly (``λ_r^{1/4}`` into each factor
    column), which balances the factor scales for fine-tuning. ``CP.first`` is ``(C_in, R)``,
    ``vertical`` ``(kh, R)``, ``horizontal`` ``(kw, R)``, ``last`` ``(R, C_out)``. Under ``jit`` a
    non-finite kernel cannot be rejected and yields a NaN ``relative_error`` instead.

  Raises:
    ValueError: naming the argument: ``kernel`` not 4-D/real/finite, ``rank`` out of range, ``n_iter``
      or ``n_restarts`` ``< 1``, ``tol``/``l2`` negative, ``init`` unknown or of the wrong shape,
      ``method`` unknown.
  """
  w = check_kernel(kernel)
  shape = tuple(int(d) for d in w.shape)
  rank = single_rank(CP.check_rank(rank, shape))
  n_iter = check_int(n_iter, "n_iter", minimum=1)
  n_restarts = check_int(n_restarts, "n_restarts", minimum=1)
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  tol = check_float(tol, "tol")
  l2 = check_float(l2, "l2")
  key = jax.random.key(0) if key is None else key
  if isinstance(init, CP):
    given = (init.kernel_size, init.in_features, init.out_features, init.rank)
    if given != ((shape[0], shape[1]), shape[2], shape[3], rank):
      raise ValueError(
        f"init must be a CP of kernel shape {shape} and rank {rank}, got kernel_size, in/out features and rank {given}"
      )
    start: Factors | None = factors_of(
      jnp.asarray(f, w.dtype) for f in (init.vertical, init.horizontal, init.first, init.last.T)
    )
    init_kind = "given"
  elif isinstance(init, str) and init in INITS:
    if init == "svd_terms" and not _has_svd_terms(shape, rank):
      raise ValueError(
        f"init='svd_terms' needs rank <= min(kh*kw*C_in, C_out) = {_svd_terms_max_rank(shape)} "
        f"for kernel shape {shape}, got rank {rank}"
      )
    start, init_kind = None, init
  else:
    raise ValueError(f"init must be one of {INITS} or a CP format, got {init!r}")
  fit = functools.partial(
    _fit,
    w,
    key,
    start,
    n_iter,
    tol,
    l2,
    rank=rank,
    init=init_kind,
    method=method,
    check_convergence=tol > 0,
    n_restarts=n_restarts,
  )
  if isinstance(w, jax.core.Tracer):
    fmt, info, _ = fit(fallback=True)
    return fmt, info
  # Called eagerly, the LU fallback (see _cp_als.als_with_fallback) is compiled only for a fit that needs
  # it: most never do, and it is a second copy of the ALS loop in the program.
  fmt, info, finite = fit(fallback=False)
  if not bool(finite):
    fmt, info, _ = fit(fallback=True)
  return fmt, info


# Only what changes the program is static, so new values of n_iter, tol or l2 reuse the compiled fit.
@fit_jit("rank", "init", "method", "check_convergence", "n_restarts", "fallback")
def _fit(
  w: Array,
  key: Array,
  start: Factors | None,
  n_iter: int | Array,
  tol: float | Array,
  l2: float | Array,
  *,
  rank: int,
  init: str,
  method: str,
  check_convergence: bool,
  n_restarts: int,
  fallback: bool,
) -> tuple[CP, FitInfo, Array]:
  """The best of ``n_restarts`` fits, and whether every fit's ALS ended finite with Cholesky solves.

  With ``fallback`` a fit that did not is rerun with LU solves in the same program (under a caller's
  trace nothing else can); without it, the caller reruns the whole call with ``fallback`` when the flag
  is ``False``.
  """
  fit = functools.partial(
    _fit_from,
    w,
    n_iter=n_iter,
    tol=tol,
    l2=l2,
    method=method,
    check_convergence=check_convergence,
    fallback=fallback,
  )
  # The first fit starts where a single fit would (so the best is never worse than it); the others from
  # fresh starts (see _restart_starts): ALS converges to different local minima from different starts.
  starts = _restart_starts(w, rank, init, key, start, n_restarts)
  if n_restarts == 1:
    return fit(factors_of(f[0] for f in starts))
  # lax.map, not vmap: XLA:CPU runs a batch of these small fits slower than one after another.
  fmts, infos, finite = jax.lax.map(fit, starts)
  errors = jnp.where(jnp.isnan(infos.relative_error), jnp.inf, infos.relative_error)
  best = jnp.argmin(errors)
  fmt, info = jax.tree_util.tree_map(lambda x: x[best], (fmts, infos))
  return fmt, info, jnp.all(finite)


def _restart_starts(w: Array, rank: int, init: str, key: Array, start: Factors | None, n_restarts: int) -> Factors:
  """The ``n_restarts`` starting points, stacked: ``init`` (or ``start``), then ``"svd_terms"``, then draws.

  Restart ``i`` of the draws (kind :func:`_restart_init`) uses key ``fold_in(key, i)``, and restart 0 key
  ``key`` when it is a draw of the same kind. The draws are one ``vmap`` over their keys, so the
  unfoldings' eigenvectors, which do not depend on the key, are computed (and compiled) once.
  """
  shape = tuple(int(d) for d in w.shape)
  kind = _restart_init(shape, rank, init)
  slots: list[Factors | int] = []  # per restart: a start that is not a draw, or the index of its draw
  draw_keys: list[Array] = []
  for i in range(n_restarts):
    if i == 0 and start is not None:
      slots.append(factors_of(unit_columns(f)[0] for f in start))
    elif i == 0 and init != kind:
      slots.append(_initial_factors(w, rank, init, key))
    elif i == 1 and init not in ("random", "svd_terms") and _has_svd_terms(shape, rank):
      slots.append(_svd_terms_factors(w, rank))
    else:
      slots.append(len(draw_keys))
      draw_keys.append(key if i == 0 else jax.random.fold_in(key, i))
  if draw_keys:
    draws = jax.vmap(lambda k: _initial_factors(w, rank, kind, k))(jnp.stack(draw_keys))
  chosen = [factors_of(d[slot] for d in draws) if isinstance(slot, int) else slot for slot in slots]
  return factors_of(jnp.stack([c[mode] for c in chosen]) for mode in range(4))


def _fit_from(
  w: Array,
  factors: Factors,
  *,
  n_iter: int | Array,
  tol: float | Array,
  l2: float | Array,
  method: str,
  check_convergence: bool,
  fallback: bool,
) -> tuple[CP, FitInfo, Array]:
  """One fit from unit-column starting factors, and whether its ALS ended finite with Cholesky solves."""
  w_norm = jnp.linalg.norm(w.ravel())
  run_als = als_with_fallback if fallback else als_with_cholesky
  if method == "als":
    (factors, weights, sweeps), finite = run_als(
      w, factors, n_iter=n_iter, tol=tol, l2=l2, w_norm=w_norm, check_convergence=check_convergence
    )
  else:
    # One ALS sweep sets the scale (and puts the objective below ||W||², which the bound needs).
    (factors, weights, _), finite = run_als(
      w, factors, n_iter=1, tol=tol, l2=l2, w_norm=w_norm, check_convergence=False
    )
    share = jnp.sqrt(jnp.sqrt(weights))
    balanced = factors_of(f * share[None, :] for f in factors)
    balanced, steps = levenberg_marquardt(
      w, balanced, n_iter=n_iter - 1, tol=tol, l2=l2, w_norm=w_norm, check_convergence=check_convergence
    )
    split = [unit_columns(f) for f in balanced]
    factors = factors_of(unit for unit, _ in split)
    weights = functools.reduce(lambda a, b: a * b, [norms for _, norms in split])
    sweeps = steps + 1
  share = jnp.sqrt(jnp.sqrt(weights))  # λ^{1/4} per factor
  a_h, a_w, a_in, a_out = (f * share[None, :] for f in factors)
  fmt = CP(a_in, a_h, a_w, a_out.T)
  dense = cp_to_dense(fmt.first, fmt.vertical, fmt.horizontal, fmt.last, precision=HIGHEST)
  info = FitInfo(dense_relative_error(w, dense), sweeps, safe_ratio(jnp.max(weights), w_norm))
  return fmt, info, finite


def _restart_init(shape: tuple[int, ...], rank: int, init: str) -> str:
  """The start of the random restarts (after the first, and after the ``"svd_terms"`` one where it runs).

  The SVD init again, with fresh random columns, when some mode is shorter than the rank (its random
  columns are what decide the minimum ALS reaches, and fully random starts reached worse minima);
  Gaussian unit columns when the SVD init has no random part (every SVD restart would repeat the first)
  or the caller asked for random starts.
  """
  if init == "random" or min(shape) >= rank:
    return "random"
  return "svd"


def _svd_terms_max_rank(shape: tuple[int, ...]) -> int:
  """The number of singular triplets of the output unfolding: the largest rank of the ``"svd_terms"`` start."""
  kh, kw, cin, cout = shape
  return min(kh * kw * cin, cout)


def _has_svd_terms(shape: tuple[int, ...], rank: int) -> bool:
  """Whether the output unfolding has ``rank`` singular triplets (the ``"svd_terms"`` start exists)."""
  return rank <= _svd_terms_max_rank(shape)


def _svd_terms_factors(w: Array, rank: int) -> Factors:
  """The ``"svd_terms"`` start: the rank-one approximations of the leading SVD terms of ``W_(3)^T``.

  ``W_(3)^T = U Σ V^T`` (rows ``kh·kw·C_in``, columns ``C_out``) is a sum of terms ``(σ_r u_r) v_r^T``; a
  CP term is such a product whose left factor is rank one over ``(kh, kw, C_in)``. Each ``σ_r u_r`` gets
  its best rank-one approximation by alternating updates from its HOSVD vectors (the leading left
  singular vectors of its two spatial unfoldings), and ``v_r`` is the output column. Deterministic:
  no random columns, unlike ``"svd"`` whose 3-long modes are mostly random at ``R > 3``.
  """
  kh, kw, cin, cout = w.shape
  w_rows = w.reshape(kh * kw * cin, cout)
  a_out = leading_eigenvectors(w_rows.T, rank)  # right singular vectors v_r
  terms = jnp.dot(w_rows, a_out, precision=HIGHEST).reshape(kh, kw, cin, rank)  # σ_r u_r

  def leading(grams: Array) -> Array:  # (rank, n, n) -> (n, rank): each Gram's leading eigenvector
    return jnp.linalg.eigh(grams)[1][..., -1].T

  a_h = leading(jnp.einsum("xycr,zycr->rxz", terms, terms, precision=HIGHEST))
  a_w = leading(jnp.einsum("xycr,xzcr->ryz", terms, terms, precision=HIGHEST))

  def rank_one_sweep(_: Array, spatial: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
    a_h, a_w, _ = spatial
    a_in = unit_columns(jnp.einsum("xycr,xr,yr->cr", terms, a_h, a_w, precision=HIGHEST))[0]
    a_h = unit_columns(jnp.einsum("xycr,yr,cr->xr", terms, a_w, a_in, precision=HIGHEST))[0]
    a_w = unit_columns(jnp.einsum("xycr,xr,cr->yr", terms, a_h, a_in, precision=HIGHEST))[0]
    return a_h, a_w, a_in

  start = (a_h, a_w, jnp.zeros((cin, rank), w.dtype))
  a_h, a_w, a_in = jax.lax.fori_loop(0, RANK_ONE_SWEEPS, rank_one_sweep, start)
  return a_h, a_w, a_in, a_out


def _initial_factors(w: Array, rank: int, init: str, key: Array) -> Factors:
  if init == "svd_terms":
    return _svd_terms_factors(w, rank)
  keys = jax.random.split(key, 4)
  unfoldings = CP.unfoldings(w)
  factors = []
  for mode, size in enumerate(w.shape):
    if init == "random":
      factors.append(unit_columns(jax.random.normal(keys[mode], (size, rank), w.dtype))[0])
      continue
    k = min(size, rank)
    u = leading_eigenvectors(unfoldings[mode].matrix, k)
    if k < rank:
      # A mode shorter than the rank has only `size` singular vectors. The rest start as uniform [0, 1)
      # columns, as TensorLy's parafac init="svd" pads them, so that a single fit is a draw from the same
      # distribution of minima as TensorLy's and the restarts (more draws) can only improve on it.
      padding = unit_columns(jax.random.uniform(keys[mode], (size, rank - k), w.dtype))[0]
      u = jnp.concatenate([u, padding], axis=1)
    factors.append(u)
  return factors_of(factors)
