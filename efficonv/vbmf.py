"""Empirical variational Bayesian matrix factorization (EVBMF): the rank a matrix's data supports.

For an observed ``L × M`` matrix ``Y = B A^T + E`` (``L ≤ M``, Gaussian noise ``E`` of variance ``σ²``,
Gaussian priors on the columns of ``A`` and ``B`` whose variances are learned from the data), the
variational Bayes posterior is a reweighted SVD of ``Y`` and has a closed form (Nakajima et al. 2013).
With ``α = L / M``, the singular values ``γ_1 ≥ … ≥ γ_L`` of ``Y`` and

.. math::
  x_h = \\frac{\\gamma_h^2}{M \\sigma^2}, \\qquad
  \\tau(x) = \\tfrac12\\Big(x - (1 + \\alpha) + \\sqrt{(x - (1 + \\alpha))^2 - 4\\alpha}\\Big),

component ``h`` survives iff
``x_h > \\underline{x} = (1 + \\underline\\tau)(1 + \\alpha / \\underline\\tau)``, where
``\\underline\\tau`` is the unique positive zero of
``\\psi_1(\\tau) = \\log(\\tau + 1) + \\alpha \\log(\\tau / \\alpha + 1) - \\tau``.
The survivors are shrunk to

.. math::
  \\hat\\gamma_h = \\frac{\\gamma_h}{2}\\Big(1 - \\frac{(L + M)\\sigma^2}{\\gamma_h^2}
    + \\sqrt{\\Big(1 - \\frac{(L + M)\\sigma^2}{\\gamma_h^2}\\Big)^2
    - \\frac{4 L M \\sigma^4}{\\gamma_h^4}}\\Big).

The noise variance is the minimizer of the free energy (up to constants, and with the prior variances
already optimized out)

.. math::
  \\Omega(\\sigma^2) = \\sum_{h=1}^{L} \\frac{\\gamma_h^2}{M\\sigma^2} + L \\log \\sigma^2
    + \\sum_{h: x_h > \\underline{x}} \\psi_1(\\tau(x_h)),

over ``[\\underline\\sigma^2, \\bar\\sigma^2]`` with ``\\bar\\sigma^2 = ||Y||_F^2 / (LM)``,
``\\underline\\sigma^2 = \\max(\\gamma_{\\bar H + 1}^2 / (M \\underline x),\\;
\\sum_{h > \\bar H} \\gamma_h^2 / (M (L - \\bar H)))`` and
``\\bar H = \\lceil L / (1 + \\alpha) \\rceil - 1``,
the largest rank EVBMF can return. (``Ω`` increases above ``\\bar\\sigma^2``: every term does, because
``\\psi_1`` decreases in ``x``, with ``dψ_1/dx = -\\tau^2 / ((\\tau + 1)(\\tau + \\alpha))``.) The estimated
rank is the number of survivors at the minimizer.

Why this module instead of a copy of the public ``VBMF.py`` (used by many CNN-compression scripts):

* ``\\underline\\tau`` is solved for exactly (bisection); the scripts use ``2.5129 \\sqrt\\alpha``, which is
  exact only at ``α = 1`` (at ``α = 0.1`` the root is ``0.82``, not ``0.79``).
* ``Ω`` is minimized over ``\\log \\sigma^2`` by a grid followed by golden-section refinement, so the result
  does not depend on the scale of ``Y``. The scripts call ``scipy.optimize.minimize_scalar(method="bounded")``
  on ``σ²`` itself, whose default *absolute* tolerance ``xatol=1e-5`` is larger than the whole search
  interval for typical conv weights (``σ² ≈ 1e-4 … 1e-6``): the returned ``σ²`` — hence the rank — is
  then close to arbitrary. The grid also guards against a local minimum (``Ω`` is not convex).
* Wide or tall matrices both work (the scripts need ``L ≤ M`` and silently misbehave otherwise).

References:
  Nakajima, Sugiyama, Babacan & Tomioka, `Global analytic solution of fully-observed variational Bayesian
  matrix factorization <https://jmlr.org/papers/v14/nakajima13a.html>`_, JMLR 14, 2013.
  Nakajima, Tomioka, Sugiyama & Babacan, `Condition for perfect dimensionality recovery by variational
  Bayesian PCA <https://jmlr.org/papers/v16/nakajima15a.html>`_, JMLR 16, 2015.
  Kim et al., `Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile
  Applications <https://arxiv.org/abs/1511.06530>`_, ICLR 2016 (EVBMF ranks for Tucker-2).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Grid points over log σ² before the golden-section refinement, and refinement steps.
_GRID = 512
_GOLDEN_STEPS = 80


@dataclasses.dataclass(frozen=True)
class EVBMFResult:
  """What :func:`evbmf` found.

  Attributes:
    rank: number of components EVBMF keeps (the largest of ``ranks`` for a stack).
    ranks: the rank of each matrix (one entry for a single matrix).
    sigma2: the noise variance ``σ̂²`` (estimated, or the one given).
    threshold: singular values above it are kept: ``\\sqrt{M σ̂² \\underline{x}}``.
    max_rank: ``\\bar H``, the largest rank EVBMF can return for this shape.
    singular_values: ``γ``, ``(L,)`` or ``(B, L)`` for a stack, descending.
    estimates: the EVB estimates ``γ̂`` (zero for the discarded components), same shape.
    numerical: whether the estimated noise was below the numerical resolution of the input, so that
      ``σ̂²`` was raised to the floor and ``rank`` is the numerical rank (see :func:`evbmf`).
  """

  rank: int
  ranks: tuple[int, ...]
  sigma2: float
  threshold: float
  max_rank: int
  singular_values: np.ndarray
  estimates: np.ndarray
  numerical: bool = False


def tau_underbar(alpha: float) -> float:
  """The positive zero of ``log(τ + 1) + α log(τ/α + 1) − τ`` (the EVB threshold's ``τ``), ``0 < α ≤ 1``.

  The function is concave, has slope 1 at 0 and is below ``2 log(τ + 1) − τ`` (its value at ``α = 1``),
  which is negative past ``τ = 2.5129``; so the zero is unique and bracketed by ``(0, 2.52]``.
  """
  if not 0.0 < alpha <= 1.0:
    raise ValueError(f"alpha must be in (0, 1], got {alpha}")
  lo, hi = 1e-12, 2.52
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    value = math.log1p(mid) + alpha * math.log1p(mid / alpha) - mid
    if value > 0.0:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


def evbmf(matrix: np.ndarray, *, sigma2: float | None = None, eps: float | None = None) -> EVBMFResult:
  """The EVBMF rank of a matrix, or of a stack of matrices sharing one noise variance.

  A (numerically) noise-free low-rank matrix has no noise to estimate: its tail singular values are
  rounding errors, whose spectrum is not that of Gaussian noise, and the free energy's minimizer
  collapses towards ``σ² = 0`` and keeps some of them (a rank-4 float32 kernel got ranks in the 40s).
  So the estimated ``σ̂²`` is floored where the threshold it implies would fall below the input's
  resolution, ``tol = 2 √L · eps · γ_1`` (entrywise rounding by ``eps`` perturbs the singular values by
  at most ``eps ||Y||_F ≤ eps √L γ_1``; the factor 2 allows for the rounding in computing ``Y`` itself):
  then the result is the numerical rank, ``#{γ_h > tol}`` (``numerical=True``).

  Example:
    >>> import numpy as np
    >>> from efficonv.vbmf import evbmf
    >>> rng = np.random.default_rng(0)
    >>> low_rank = (rng.normal(size=(32, 4)) @ rng.normal(size=(4, 96))).astype(np.float32)
    >>> evbmf(low_rank).rank, evbmf(low_rank).numerical
    (4, True)
    >>> evbmf(low_rank + 0.1 * rng.normal(size=low_rank.shape)).rank
    4

  Args:
    matrix: ``(m, n)``; or ``(B, m, n)``: ``B`` matrices with independent factors and priors but one
      noise variance, estimated by minimizing their summed free energy over
      ``[min_b \\underline\\sigma_b^2, max_b \\bar\\sigma_b^2]`` (the union of the single-matrix ranges —
      a heuristic range for stacks). Transposed internally so that ``L = min(m, n)``.
    sigma2: a known noise variance (skips the estimation and the floor).
    eps: the relative precision of the entries; ``None``: the machine epsilon of ``matrix``'s dtype
      (float64's for non-float input). Pass the source's (e.g. ``np.finfo(np.float32).eps``) when a
      lower-precision matrix was cast to float64.

  Returns:
    An :class:`EVBMFResult`. A matrix of pure noise gives rank 0.

  Raises:
    ValueError: naming ``matrix`` when it is not 2-D/3-D, empty or not finite, ``sigma2`` when not
      positive and finite, or ``eps`` when not in ``[0, 1)``.
  """
  if eps is None:
    dtype = getattr(matrix, "dtype", np.asarray(matrix).dtype)
    eps = float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else float(np.finfo(np.float64).eps)
  if not (math.isfinite(eps) and 0.0 <= eps < 1.0):
    raise ValueError(f"eps must be a float in [0, 1), got {eps}")
  y = np.asarray(matrix, dtype=np.float64)
  if y.ndim not in (2, 3) or y.size == 0:
    raise ValueError(f"matrix must be a non-empty (m, n) or (B, m, n) array, got shape {y.shape}")
  if not np.isfinite(y).all():
    raise ValueError("matrix must be finite, got NaN or Inf entries")
  if sigma2 is not None and not (math.isfinite(sigma2) and sigma2 > 0):
    raise ValueError(f"sigma2 must be a positive finite float or None, got {sigma2}")
  stack = y if y.ndim == 3 else y[None]
  if stack.shape[1] > stack.shape[2]:
    stack = np.swapaxes(stack, 1, 2)
  _, L, M = stack.shape
  alpha = L / M
  gamma = np.linalg.svd(stack, compute_uv=False)  # (B, L), descending
  x_under = _x_underbar(alpha)
  # ⌈L/(1+α)⌉ - 1 = ⌈LM/(L+M)⌉ - 1, in integers.
  h_bar = min(-(-L * M // (L + M)) - 1, L)
  numerical = False
  if sigma2 is None:
    sigma2 = _estimate_sigma2(gamma, L, M, h_bar, x_under)
    tol = 2.0 * math.sqrt(L) * eps * float(gamma.max())
    floor = tol**2 / (M * x_under)  # the σ² whose threshold sqrt(M σ² x_under) is tol
    if 0.0 < sigma2 < floor:
      sigma2, numerical = floor, True
  if sigma2 <= 0.0:  # all-zero input: nothing to keep
    zeros = np.zeros_like(gamma)
    return EVBMFResult(0, (0,) * len(gamma), 0.0, 0.0, h_bar, _unstack(gamma, y), _unstack(zeros, y))
  threshold = math.sqrt(M * sigma2 * x_under)
  keep = gamma > threshold
  safe = np.where(keep, gamma, 1.0)
  shrink = 1.0 - (L + M) * sigma2 / safe**2
  disc = np.maximum(shrink**2 - 4.0 * L * M * sigma2**2 / safe**4, 0.0)
  estimates = np.where(keep, 0.5 * safe * (shrink + np.sqrt(disc)), 0.0)
  ranks = tuple(int(k) for k in keep.sum(axis=1))
  return EVBMFResult(
    max(ranks), ranks, float(sigma2), threshold, h_bar, _unstack(gamma, y), _unstack(estimates, y), numerical
  )


def _unstack(values: np.ndarray, original: np.ndarray) -> np.ndarray:
  return values if original.ndim == 3 else values[0]


def _x_underbar(alpha: float) -> float:
  tau = tau_underbar(alpha)
  return (1.0 + tau) * (1.0 + alpha / tau)


def _free_energy(log_s: np.ndarray, gamma2: np.ndarray, L: int, M: int, x_under: float) -> np.ndarray:
  """``Ω`` (without constants) at each ``log σ²`` in ``log_s`` ``(G,)``; ``gamma2`` is ``(B, L)``."""
  alpha = L / M
  s = np.exp(log_s)[:, None, None]  # (G, 1, 1)
  x = gamma2[None] / (M * s)  # (G, B, L)
  above = x > x_under
  xa = np.where(above, x, x_under + 1.0)  # any value past the threshold keeps the sqrt real
  b = xa - (1.0 + alpha)
  tau = 0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0)))
  psi1 = np.log1p(tau) + alpha * np.log1p(tau / alpha) - tau
  n = gamma2.size
  return x.sum(axis=(1, 2)) + n * log_s + np.where(above, psi1, 0.0).sum(axis=(1, 2))


def _estimate_sigma2(gamma: np.ndarray, L: int, M: int, h_bar: int, x_under: float) -> float:
  """Minimizes the (summed) free energy over ``log σ²`` in the paper's range; see the module docstring."""
  gamma2 = gamma**2
  upper = gamma2.sum(axis=1) / (L * M)  # (B,)
  if h_bar < L:
    tail = gamma2[:, h_bar:].sum(axis=1) / (M * (L - h_bar))
    lower = np.maximum(gamma2[:, h_bar] / (M * x_under), tail)
  else:  # unreachable for L >= 1 (h_bar < L/(1+α) <= L), kept for safety
    lower = np.zeros_like(upper)
  positive = lower[lower > 0.0]
  if upper.max() <= 0.0:
    return 0.0
  lo = math.log(positive.min()) if positive.size else math.log(upper.max()) - 30.0
  hi = math.log(upper.max())
  if hi <= lo:
    return float(np.exp(hi))
  grid = np.linspace(lo, hi, _GRID)
  values = _free_energy(grid, gamma2, L, M, x_under)
  best = int(np.argmin(values))
  a, b = grid[max(best - 1, 0)], grid[min(best + 1, _GRID - 1)]
  ratio = (math.sqrt(5.0) - 1.0) / 2.0
  c, d = b - ratio * (b - a), a + ratio * (b - a)
  fc, fd = (float(v) for v in _free_energy(np.array([c, d]), gamma2, L, M, x_under))
  for _ in range(_GOLDEN_STEPS):
    if fc <= fd:
      b, d, fd = d, c, fc
      c = b - ratio * (b - a)
      fc = float(_free_energy(np.array([c]), gamma2, L, M, x_under)[0])
    else:
      a, c, fc = c, d, fd
      d = a + ratio * (b - a)
      fd = float(_free_energy(np.array([d]), gamma2, L, M, x_under)[0])
  refined, f_refined = (c, fc) if fc <= fd else (d, fd)
  return float(math.exp(refined if f_refined <= values[best] else grid[best]))
