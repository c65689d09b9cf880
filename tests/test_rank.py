"""Tests of efficonv.rank: every rule on known cases, validity of every rank, clipping, errors."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
import pytest

import efficonv
from efficonv import decompose
from efficonv import rank as rk

SHAPE = (3, 3, 8, 12)
X_SHAPE = (2, 10, 10, 8)
TT_MODES = {"in_modes": (2, 4), "out_modes": (3, 4)}


def _kernel(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _modes(scheme: str) -> dict[str, Any]:
  return TT_MODES if scheme == "tt" else {}


def _init(scheme: str, rank: Any, shape: tuple[int, int, int, int] = SHAPE) -> efficonv.Format:
  """The format of that rank, built by its own validating ``init`` (under ``eval_shape``: no compile)."""
  kh, kw, cin, cout = shape
  key = jax.random.key(0)
  options = TT_MODES if scheme == "tt" else {}
  fmt = efficonv.schemes.get(scheme).format
  return jax.eval_shape(lambda: fmt.init(key, cin, cout, (kh, kw), rank, **options))


def _next(scheme: str, rank: Any, shape: tuple[int, int, int, int] = SHAPE) -> Any:
  """The next member of the budget family documented in efficonv.rank."""
  if scheme == "tucker2":
    cin, cout = shape[2:]
    t = (rank[0] if cin >= cout else rank[1]) + 1  # the larger mode's rank is t itself
    return (math.ceil(t * cin / max(cin, cout)), math.ceil(t * cout / max(cin, cout)))
  if scheme == "tt":
    return rk.choose_rank("tt", shape, rk.Fixed(max(rank) + 1), **TT_MODES).rank
  return rank + 1


# --- Fixed and clipping ---------------------------------------------------------------------------


def test_fixed_in_range_is_kept() -> None:
  choice = rk.choose_rank("cp", SHAPE, rk.Fixed(7))
  assert choice.rank == 7 and not choice.details["clipped"] and "clipped" not in choice.reason
  assert choice.details["params"] == 7 * (8 + 3 + 3 + 12)
  assert rk.choose_rank("tucker2", SHAPE, (3, 5)).rank == (3, 5)  # a bare tuple means Fixed
  assert rk.choose_rank("spatial", SHAPE, 4).rank == 4


@pytest.mark.parametrize(
  ("scheme", "requested", "expected"),
  [
    ("cp", 10_000, 3 * 3 * 8 * 12 // 12),
    ("tucker2", 100, (8, 12)),
    ("tucker2", (2, 100), (2, 12)),
    ("spatial", 500, min(3 * 8, 3 * 12)),
    ("separable", 50, 9),
    # Bond 0: min(kh·kw, 6·12) = 9; bond 1: min(r_0·c_1 s_1 = 9·6, 4·4) = 16.
    ("tt", 100, (9, 16)),
    # r_0 = 1 limits bond 1 to r_0·c_1 s_1 = 6 (TT-SVD's bound).
    ("tt", (1, 16), (1, 6)),
  ],
)
def test_fixed_is_clipped_and_says_so(scheme: str, requested: Any, expected: Any) -> None:
  choice = rk.choose_rank(scheme, SHAPE, rk.Fixed(requested), **_modes(scheme))
  assert choice.rank == expected
  assert choice.details["clipped"] and "clipped" in choice.reason
  _init(scheme, choice.rank)  # valid for the format


def test_max_rank_matches_the_decompositions() -> None:
  assert rk.max_rank("cp", SHAPE) == efficonv.CP.max_rank(SHAPE)
  assert rk.max_rank("tt", SHAPE, **TT_MODES) == efficonv.TT.max_rank(SHAPE, **TT_MODES)
  # Default TT modes: two balanced factors, as efficonv.nnx.TTConv.
  assert rk.choose_rank("tt", SHAPE, 2).details["in_modes"] == (4, 2)


# --- ParamFraction --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 3, 64, 64), (5, 3, 16, 48), (1, 7, 32, 8)])
@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.6])
def test_param_fraction_cp_formula(shape: tuple[int, int, int, int], fraction: float) -> None:
  kh, kw, cin, cout = shape
  dense = kh * kw * cin * cout
  expected = max(1, min(math.floor(fraction * dense / (cin + kh + kw + cout)), rk.max_rank("cp", shape)))
  assert rk.choose_rank("cp", shape, rk.ParamFraction(fraction)).rank == expected


@pytest.mark.parametrize("scheme", ["cp", "tucker2", "spatial", "separable", "tt"])
@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_param_fraction_is_the_largest_rank_within_budget(scheme: str, fraction: float) -> None:
  choice = rk.choose_rank(scheme, SHAPE, rk.ParamFraction(fraction), **_modes(scheme))
  fmt = _init(scheme, choice.rank)
  assert choice.details["target_met"]
  assert fmt.params() == choice.details["params"] <= fraction * fmt.dense_params()
  if choice.rank != rk.max_rank(scheme, SHAPE, **_modes(scheme)):
    assert _init(scheme, _next(scheme, choice.rank)).params() > fraction * fmt.dense_params()


def test_param_fraction_unreachable_returns_smallest_rank() -> None:
  choice = rk.choose_rank("separable", SHAPE, rk.ParamFraction(0.01))  # m = 1 already has 14% of dense
  assert choice.rank == 1 and not choice.details["target_met"] and "not met" in choice.reason


# --- MacReduction ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["cp", "tucker2", "spatial", "separable", "tt"])
@pytest.mark.parametrize(("reduction", "strides", "padding"), [(2.0, 1, "SAME"), (3.0, 2, "VALID")])
def test_mac_reduction_achieved_and_next_rank_misses(scheme: str, reduction: float, strides: int, padding: str) -> None:
  conv = {"strides": strides, "padding": padding}
  choice = rk.choose_rank(scheme, SHAPE, rk.MacReduction(reduction), input_shape=X_SHAPE, **conv, **_modes(scheme))
  fmt = _init(scheme, choice.rank)
  dense, macs = fmt.dense_macs(X_SHAPE, **conv), fmt.macs(X_SHAPE, **conv)
  assert choice.details["target_met"] and choice.details["macs"] == macs
  assert dense / macs >= reduction
  if choice.rank != rk.max_rank(scheme, SHAPE, **_modes(scheme)):
    assert dense / _init(scheme, _next(scheme, choice.rank)).macs(X_SHAPE, **conv) < reduction


def test_mac_reduction_unreachable_returns_rank_one() -> None:
  choice = rk.choose_rank("cp", SHAPE, rk.MacReduction(1000.0), input_shape=X_SHAPE)
  fmt = _init("cp", 1)
  assert choice.rank == 1 and not choice.details["target_met"] and "not met" in choice.reason
  assert choice.details["mac_reduction"] == pytest.approx(fmt.dense_macs(X_SHAPE) / fmt.macs(X_SHAPE))


# --- Energy ---------------------------------------------------------------------------------------


def _with_singular_values(rows: int, cols: int, values: np.ndarray, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  k = len(values)
  u = np.linalg.qr(rng.normal(size=(rows, k)))[0]
  v = np.linalg.qr(rng.normal(size=(cols, k)))[0]
  return (u * values[None, :]) @ v.T


VALUES = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.25])
CUMULATIVE = np.cumsum(VALUES**2) / np.sum(VALUES**2)  # 0.636, 0.865, 0.967, 0.992, 0.998, 1


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_energy_spatial_exact_on_known_singular_values(k: int) -> None:
  kh, kw, cin, cout = SHAPE
  m = _with_singular_values(kh * cin, kw * cout, VALUES, seed=k)
  kernel = m.reshape(kh, cin, kw, cout).transpose(0, 2, 1, 3)  # M[(x,c),(y,s)] = W[x,y,c,s]
  energy = 0.5 * (CUMULATIVE[k - 1] + (CUMULATIVE[k - 2] if k > 1 else 0.0))  # strictly inside step k
  choice = rk.choose_rank("spatial", kernel, rk.Energy(energy))
  assert choice.rank == k
  assert choice.details["energy_kept"] == pytest.approx(CUMULATIVE[k - 1])
  assert rk.choose_rank("spatial", kernel, rk.Energy(float(CUMULATIVE[k - 1]))).rank == k  # exactly on the step
  if k == 2:  # the energy kept is exactly what the spatial decomposition keeps (one compile is enough)
    _, info = decompose.spatial(kernel, k)
    assert float(info.relative_error) ** 2 == pytest.approx(1 - CUMULATIVE[k - 1], abs=1e-5)


def test_energy_tucker2_uses_the_channel_unfoldings() -> None:
  kh, kw, cin, cout = 3, 3, 8, 10
  x = _with_singular_values(cin, kh * kw * cout, VALUES, seed=5)  # the C_in-unfolding, known values
  kernel = np.moveaxis(x.reshape(cin, kh, kw, cout), 0, 2)
  choice = rk.choose_rank("tucker2", kernel, rk.Energy(0.95))
  assert choice.rank[0] == 3  # 0.865 < 0.95 <= 0.967
  s_out = np.linalg.svd(np.moveaxis(kernel, 3, 0).reshape(cout, -1), compute_uv=False) ** 2
  cum_out = np.cumsum(s_out) / s_out.sum()
  assert cum_out[choice.rank[1] - 1] >= 0.95 > (cum_out[choice.rank[1] - 2] if choice.rank[1] > 1 else 0.0)
  # Truncated HOSVD (and HOOI, which only improves it) loses at most (1 - e1) + (1 - e2).
  _, info = decompose.tucker2(kernel, choice.rank)
  assert float(info.relative_error) ** 2 <= 2 * (1 - 0.95) + 1e-5


def test_energy_separable_exact_on_known_slices() -> None:
  kh, kw, cin, cout = SHAPE
  # Every channel's (kh·kw)×C_out slice has the singular values VALUES.
  slices = np.stack([_with_singular_values(kh * kw, cout, VALUES, seed=c) for c in range(cin)])
  kernel = slices.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)
  choice = rk.choose_rank("separable", kernel, rk.Energy(0.9))
  assert choice.rank == 3 and choice.details["energy_kept"] == pytest.approx(CUMULATIVE[2])
  _, info = decompose.separable(kernel, 3)
  assert float(info.relative_error) ** 2 == pytest.approx(1 - CUMULATIVE[2], abs=1e-5)


def test_energy_tt_bounds_the_tt_svd_error() -> None:
  kernel = _kernel(3)
  energy = 0.9
  choice = rk.choose_rank("tt", kernel, rk.Energy(energy), **TT_MODES)
  assert all(k >= energy for k in choice.details["energy_kept"])
  _, info = decompose.tt(kernel, choice.rank, **TT_MODES)
  assert float(info.relative_error) ** 2 <= len(choice.rank) * (1 - energy) + 1e-5
  # Minimality at bond 0: its unfolding is (kh·kw) × rest.
  s0 = np.linalg.svd(kernel.reshape(9, -1).astype(np.float64), compute_uv=False) ** 2
  assert np.cumsum(s0)[choice.rank[0] - 2] / s0.sum() < energy


def test_energy_cp_is_the_largest_mode_rank() -> None:
  kernel = _kernel(4)
  energy = 0.8
  mode_ranks = []
  for axis in range(4):
    s = np.linalg.svd(np.moveaxis(kernel, axis, 0).reshape(kernel.shape[axis], -1), compute_uv=False) ** 2
    mode_ranks.append(int(np.searchsorted(np.cumsum(s) / s.sum(), energy)) + 1)
  choice = rk.choose_rank("cp", kernel, rk.Energy(energy))
  assert choice.rank == max(mode_ranks) and choice.details["mode_ranks"] == tuple(mode_ranks)
  assert "heuristic" in choice.reason


# --- VBMF -----------------------------------------------------------------------------------------


def _tucker_kernel(ranks: tuple[int, int], shape: tuple[int, int, int, int], noise: float, seed: int) -> np.ndarray:
  kh, kw, cin, cout = shape
  rng = np.random.default_rng(seed)
  first = np.linalg.qr(rng.normal(size=(cin, ranks[0])))[0]
  last = np.linalg.qr(rng.normal(size=(cout, ranks[1])))[0].T
  core = rng.normal(size=(kh, kw, *ranks))
  kernel = np.einsum("ca,xyab,bs->xycs", first, core, last)
  return kernel + noise * np.linalg.norm(kernel) / math.sqrt(kernel.size) * rng.normal(size=shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vbmf_recovers_planted_tucker2_ranks(seed: int) -> None:
  kernel = _tucker_kernel((5, 7), (3, 3, 32, 48), noise=0.05, seed=seed)
  choice = rk.choose_rank("tucker2", kernel, rk.VBMF())
  assert choice.rank == (5, 7) and choice.details["vbmf_rank"] == (5, 7)
  # Scale-free: conv weights are small, and a noise-variance search with an absolute tolerance is not.
  assert rk.choose_rank("tucker2", 1e-4 * kernel, rk.VBMF()).rank == (5, 7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vbmf_gives_the_numerical_rank_of_a_noise_free_kernel(dtype: type) -> None:
  # Without a floor on the noise estimate this float32 kernel got ranks in the 20s-40s.
  kernel = _tucker_kernel((4, 4), (3, 3, 64, 64), noise=0.0, seed=3).astype(dtype)
  choice = rk.choose_rank("tucker2", kernel, rk.VBMF())
  assert choice.rank == (4, 4)
  if dtype is np.float32:
    assert "numerical rank" in choice.reason
  fit = decompose.tucker2(kernel, choice.rank)[1]
  assert float(fit.relative_error) < 1e-5


@pytest.mark.parametrize("noise", [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
def test_vbmf_keeps_the_planted_rank_under_small_noise(noise: float) -> None:
  kernel = _tucker_kernel((4, 4), (3, 3, 64, 64), noise=noise, seed=3).astype(np.float32)
  assert rk.choose_rank("tucker2", kernel, rk.VBMF()).rank == (4, 4)


def test_vbmf_recovers_planted_spatial_and_separable_ranks() -> None:
  rng = np.random.default_rng(7)
  kh, kw, cin, cout = 3, 3, 16, 24
  v, h = rng.normal(size=(kh, cin, 4)), rng.normal(size=(kw, 4, cout))
  spatial_kernel = np.einsum("xck,yks->xycs", v, h)
  spatial_kernel += 0.02 * spatial_kernel.std() * rng.normal(size=spatial_kernel.shape)
  assert rk.choose_rank("spatial", spatial_kernel, rk.VBMF()).rank == 4
  d, p = rng.normal(size=(kh, kw, cin, 2)), rng.normal(size=(cin * 2, cout))
  separable_kernel = np.einsum("xycj,cjs->xycs", d, p.reshape(cin, 2, cout))
  separable_kernel += 0.02 * separable_kernel.std() * rng.normal(size=separable_kernel.shape)
  choice = rk.choose_rank("separable", separable_kernel, rk.VBMF())
  assert choice.rank == 2 and choice.details["channel_ranks"] == (2,) * cin


def test_vbmf_recovers_planted_tt_ranks() -> None:
  rng = np.random.default_rng(8)
  (c1, c2), (s1, s2) = TT_MODES["in_modes"], TT_MODES["out_modes"]
  g0, g1, g2 = rng.normal(size=(3, 3, 3)), rng.normal(size=(3, c1, s1, 5)), rng.normal(size=(5, c2, s2))
  kernel = np.einsum("xya,acsb,bdt->xycdst", g0, g1, g2).reshape(SHAPE)
  kernel += 1e-3 * kernel.std() * rng.normal(size=SHAPE)
  choice = rk.choose_rank("tt", kernel, rk.VBMF(), **TT_MODES)
  assert choice.rank == (3, 5) and not choice.details["clipped"]


def test_vbmf_on_noise_is_raised_to_rank_one() -> None:
  for scheme in ("tucker2", "spatial", "cp"):
    choice = rk.choose_rank(scheme, _kernel(5, (3, 3, 16, 24)), rk.VBMF())
    assert choice.rank in (1, (1, 1)) and "raised to 1" in choice.reason


# --- every rule gives a rank the formats and decompositions accept --------------------------------


RULES = [rk.Fixed(3), rk.ParamFraction(0.4), rk.MacReduction(2.0), rk.Energy(0.9), rk.VBMF()]
DECOMPOSE = {
  "cp": lambda k, r: decompose.cp(k, r, n_iter=2),
  "tucker2": lambda k, r: decompose.tucker2(k, r, n_iter=1),
  "spatial": decompose.spatial,
  "separable": decompose.separable,
  "tt": lambda k, r: decompose.tt(k, r, **TT_MODES),
}


@pytest.mark.parametrize("scheme", ["cp", "tucker2", "spatial", "separable", "tt"])
def test_every_rule_gives_a_valid_rank(scheme: str) -> None:
  kernel = _kernel(6)
  for rule in RULES:
    choice = rk.choose_rank(scheme, kernel, rule, input_shape=X_SHAPE, **_modes(scheme))
    fmt, _ = jax.eval_shape(lambda k, r=choice.rank: DECOMPOSE[scheme](k, r), kernel)  # argument checks only
    assert fmt.rank == choice.rank
    assert _init(scheme, choice.rank).params() == choice.details["params"]
    assert choice.reason.endswith(".") and choice.rule == repr(rule)
    assert {"max_rank", "params", "dense_params", "macs", "mac_reduction", "clipped", "target_met"} <= set(
      choice.details
    )


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("make", "name"),
  [
    (lambda: rk.ParamFraction(0.0), "fraction"),
    (lambda: rk.ParamFraction(1.5), "fraction"),
    (lambda: rk.ParamFraction(math.nan), "fraction"),
    (lambda: rk.MacReduction(0.5), "reduction"),
    (lambda: rk.MacReduction(math.inf), "reduction"),
    (lambda: rk.Energy(0.0), "energy"),
    (lambda: rk.Energy(1.01), "energy"),
    (lambda: rk.Fixed(0), "rank"),
    (lambda: rk.Fixed((3, 0)), "rank"),
    (lambda: rk.Fixed(2.5), "rank"),  # type: ignore[arg-type]
  ],
)
def test_bad_rule_parameters(make: Any, name: str) -> None:
  with pytest.raises(ValueError, match=name):
    make()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_kernel(bad: float) -> None:
  kernel = _kernel()
  kernel[0, 1, 2, 3] = bad
  with pytest.raises(ValueError, match="kernel"):
    rk.choose_rank("cp", kernel, rk.Fixed(2))


@pytest.mark.parametrize(
  ("args", "kwargs", "name"),
  [
    (("cpd", SHAPE, rk.Fixed(2)), {}, "scheme"),
    (("cp", SHAPE, rk.Energy(0.9)), {}, "kernel_or_shape"),
    (("tucker2", SHAPE, rk.VBMF()), {}, "kernel_or_shape"),
    (("cp", (3, 3, 8), rk.Fixed(2)), {}, "kernel_or_shape"),
    (("cp", np.ones((3, 3, 8)), rk.Fixed(2)), {}, "kernel_or_shape"),
    (("cp", SHAPE, "0.5"), {}, "rule"),
    (("cp", SHAPE, rk.Fixed((2, 3))), {}, "rank"),
    (("tucker2", SHAPE, rk.Fixed((2, 3, 4))), {}, "rank"),
    (("tt", SHAPE, rk.Fixed((2, 3, 4))), TT_MODES, "rank"),
    (("cp", SHAPE, rk.MacReduction(2.0)), {}, "input_shape"),
    (("cp", SHAPE, rk.MacReduction(2.0)), {"input_shape": (2, 10, 10, 5)}, "input"),
    (("cp", SHAPE, rk.Fixed(2)), {"in_modes": (2, 4)}, "in_modes"),
    (("tt", SHAPE, rk.Fixed(2)), {"in_modes": (3, 3)}, "in_modes"),
    (("tt", SHAPE, rk.Fixed(2)), {"in_modes": (2, 4), "out_modes": (12,)}, "out_modes"),
  ],
)
def test_bad_arguments_name_the_argument(args: tuple, kwargs: dict, name: str) -> None:
  with pytest.raises(ValueError, match=name):
    rk.choose_rank(*args, **kwargs)


def test_traced_kernel_is_rejected() -> None:
  with pytest.raises(ValueError, match="kernel_or_shape"):
    jax.jit(lambda k: rk.choose_rank("cp", k, rk.Fixed(2)).rank)(_kernel())
