"""Tests of efficonv.vbmf: EVBMF recovers planted ranks, returns 0 on noise, and is scale-free."""

from __future__ import annotations

import math

import numpy as np
import pytest

from efficonv.vbmf import evbmf, tau_underbar


def _planted(rng: np.random.Generator, L: int, M: int, r: int, sigma: float) -> np.ndarray:
  """Rank-``r`` signal whose singular values are 2–4 times the noise's top singular value, plus noise."""
  u = np.linalg.qr(rng.normal(size=(L, r)))[0]
  v = np.linalg.qr(rng.normal(size=(M, r)))[0]
  edge = sigma * (math.sqrt(L) + math.sqrt(M))  # Marchenko–Pastur edge of the noise's singular values
  return (u * (edge * np.linspace(4.0, 2.0, r))[None, :]) @ v.T + sigma * rng.normal(size=(L, M))


def _psi_free_energy(s2: float, gamma: np.ndarray, L: int, M: int, x_under: float) -> float:
  """The free energy in the paper's ψ0/ψ1 form (independent of the module's constant-free form)."""
  alpha = L / M
  x = gamma**2 / (M * s2)
  psi0 = x - np.log(x)
  above = x > x_under
  b = x[above] - (1 + alpha)
  tau = 0.5 * (b + np.sqrt(b * b - 4 * alpha))
  psi1 = np.log(tau + 1) + alpha * np.log(tau / alpha + 1) - tau
  return float(psi0.sum() + psi1.sum())


def test_tau_underbar_is_the_zero_of_psi1() -> None:
  for alpha in (1.0, 0.5, 0.1, 0.01):
    tau = tau_underbar(alpha)
    assert math.log1p(tau) + alpha * math.log1p(tau / alpha) - tau == pytest.approx(0.0, abs=1e-12)
    assert math.sqrt(alpha) < tau <= 2.513
  assert tau_underbar(1.0) == pytest.approx(2.5129, abs=1e-4)  # the constant quoted by the paper
  # 2.5129·√α is exact only at α = 1.
  assert tau_underbar(0.1) > 2.5129 * math.sqrt(0.1) + 0.02


@pytest.mark.parametrize(("L", "M", "r"), [(32, 288, 5), (48, 288, 7), (40, 40, 6), (120, 30, 4)])
def test_recovers_planted_rank_and_noise(L: int, M: int, r: int) -> None:
  rng = np.random.default_rng(L + M + r)
  for _ in range(5):
    sigma = 0.02
    res = evbmf(_planted(rng, L, M, r, sigma))
    assert res.rank == r
    assert res.sigma2 == pytest.approx(sigma**2, rel=0.2)
    kept = res.singular_values[:r]
    assert np.all(kept > res.threshold) and np.all(res.singular_values[r:] <= res.threshold)
    assert np.all((res.estimates[:r] > 0) & (res.estimates[:r] < kept))  # shrunk, not zeroed
    assert np.all(res.estimates[r:] == 0)


@pytest.mark.parametrize(("L", "M"), [(16, 16), (32, 288), (200, 20)])
def test_pure_noise_has_rank_zero(L: int, M: int) -> None:
  rng = np.random.default_rng(L * M)
  for _ in range(5):
    res = evbmf(1e-3 * rng.normal(size=(L, M)))
    assert res.rank == 0
    assert res.sigma2 == pytest.approx(1e-6, rel=0.25)


def test_scale_and_transpose_invariance() -> None:
  # A bounded minimizer with an absolute tolerance on σ² (scipy's default) fails this at small scales.
  y = _planted(np.random.default_rng(0), 32, 96, 5, 0.05)
  base = evbmf(y)
  for scale in (1e-4, 1e-2, 1e3):
    res = evbmf(scale * y)
    assert res.rank == base.rank == 5
    assert res.sigma2 / scale**2 == pytest.approx(base.sigma2, rel=1e-6)
  transposed = evbmf(y.T)
  assert transposed.rank == 5 and transposed.sigma2 == pytest.approx(base.sigma2, rel=1e-9)


def test_sigma2_minimizes_the_free_energy() -> None:
  y = _planted(np.random.default_rng(1), 24, 60, 3, 0.1)
  res = evbmf(y)
  L, M = y.shape
  alpha = L / M
  tau = tau_underbar(alpha)
  x_under = (1 + tau) * (1 + alpha / tau)
  h_bar = math.ceil(L / (1 + alpha)) - 1
  g2 = res.singular_values**2
  lower = max(g2[h_bar] / (M * x_under), g2[h_bar:].sum() / (M * (L - h_bar)))
  upper = g2.sum() / (L * M)
  assert res.max_rank == h_bar and lower <= res.sigma2 <= upper
  grid = np.geomspace(lower, upper, 4000)
  best = min(_psi_free_energy(s, res.singular_values, L, M, x_under) for s in grid)
  assert _psi_free_energy(res.sigma2, res.singular_values, L, M, x_under) <= best + 1e-9


def test_known_sigma2_sets_the_threshold() -> None:
  y = _planted(np.random.default_rng(2), 20, 50, 3, 0.1)
  res = evbmf(y, sigma2=0.01)
  tau = tau_underbar(0.4)
  assert res.sigma2 == 0.01
  assert res.threshold == pytest.approx(math.sqrt(50 * 0.01 * (1 + tau) * (1 + 0.4 / tau)))
  assert res.rank == int((res.singular_values > res.threshold).sum())


def test_stack_with_shared_noise() -> None:
  rng = np.random.default_rng(3)
  planted = [0, 1, 2, 3, 2, 1, 0, 2]
  stack = np.stack([_planted(rng, 9, 32, r, 0.05) if r else 0.05 * rng.normal(size=(9, 32)) for r in planted])
  res = evbmf(stack)
  assert res.ranks == tuple(planted) and res.rank == 3
  assert res.sigma2 == pytest.approx(0.05**2, rel=0.2)
  assert res.singular_values.shape == (8, 9)


def test_zero_matrix_has_rank_zero() -> None:
  res = evbmf(np.zeros((5, 7)))
  assert res.rank == 0 and res.sigma2 == 0.0


@pytest.mark.parametrize(
  ("matrix", "kwargs", "name"),
  [
    (np.ones(5), {}, "matrix"),
    (np.full((3, 4), np.nan), {}, "matrix"),
    (np.ones((3, 4)), {"sigma2": 0.0}, "sigma2"),
    (np.ones((3, 4)), {"sigma2": math.inf}, "sigma2"),
  ],
)
def test_errors_name_the_argument(matrix: np.ndarray, kwargs: dict, name: str) -> None:
  with pytest.raises(ValueError, match=name):
    evbmf(matrix, **kwargs)


def _exact(rng: np.random.Generator, L: int, M: int, r: int) -> np.ndarray:
  return rng.normal(size=(L, r)) @ rng.normal(size=(r, M))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("L", "M", "r"), [(64, 576, 4), (40, 40, 6), (120, 30, 3)])
def test_noise_free_low_rank_gives_the_numerical_rank(dtype: type, L: int, M: int, r: int) -> None:
  y = _exact(np.random.default_rng(L + r), L, M, r).astype(dtype)
  res = evbmf(y)
  assert res.rank == r
  assert np.all(res.singular_values[r:] <= res.threshold) and res.threshold < res.singular_values[r - 1]
  if dtype is np.float32:  # the rounding tail is what the estimate collapsed onto
    assert res.numerical
  # A float32 matrix cast to float64 needs the source's eps (as efficonv.rank passes it).
  assert evbmf(y.astype(np.float64), eps=float(np.finfo(dtype).eps)).rank == r


@pytest.mark.parametrize("noise", [1e-6, 1e-4, 1e-2, 1e-1])
def test_small_noise_keeps_the_planted_rank(noise: float) -> None:
  rng = np.random.default_rng(3)
  y = _exact(rng, 64, 576, 4)
  y = (y + noise * y.std() * rng.normal(size=y.shape)).astype(np.float32)
  res = evbmf(y)
  assert res.rank == 4


def test_the_floor_leaves_noisy_estimates_alone() -> None:
  y = _planted(np.random.default_rng(4), 32, 288, 5, 0.02)
  res = evbmf(y)
  assert not res.numerical and res.sigma2 == pytest.approx(0.02**2, rel=0.2)
  with pytest.raises(ValueError, match="eps"):
    evbmf(y, eps=1.5)
