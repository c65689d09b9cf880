"""The default initialization gives every layer's reconstructed kernel ``nnx.Conv``'s LeCun variance.

``nnx.Conv`` draws its kernel from LeCun normal: variance ``1 / fan_in`` with
``fan_in = kh·kw·C_in``. A factorized layer draws its factors so that the
*reconstructed* kernel has that variance (:mod:`efficonv.formats.init`).

How it is measured: ``L`` independent layers are built in one ``vmap`` over
PRNG keys (through the layers' own constructors), and for each the empirical
second moment of its dense kernel (the mean is 0) times ``fan_in`` gives a
ratio ``r_i`` (1 when the variance is right). Entries *within* one kernel are
correlated (they share factors) and products of normals are heavy-tailed, so
the sampling error is estimated from the spread of the per-layer ``r_i``
(standard error ``SE = std(r_i) / sqrt(L)``), not from the pooled entry count.
The test asserts ``|mean(r) - 1| <= TOL = 10%`` and, so that this tolerance is
statistically meaningful, ``SE <= mean(r) · TOL / 4`` (a false failure is a > 4σ event;
``L`` per configuration was chosen for that, pooling 0.5–9 M entries).
A variance off by 2× (or ½) gives a ratio of 2 (or 0.5), 10 (or 5) times
outside the tolerance; :func:`test_check_rejects_a_wrong_variance` shows the
check failing on such kernels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
import pytest
from flax import nnx

from efficonv import nnx as enn

from ._layers import run_compiled

TOL = 0.10  # relative tolerance on the variance
CIN = COUT = 8
KERNEL = (3, 3)
FAN_IN = KERNEL[0] * KERNEL[1] * CIN

# (name, layer factory, number of layers L): heavier-tailed configurations (few terms per entry) get more layers.
LayerFactory = Callable[[nnx.Rngs], nnx.Module]
CONFIGS: list[tuple[str, LayerFactory, int]] = [
  ("CP-rank1", lambda r: enn.CPConv(CIN, COUT, KERNEL, rank=1, rngs=r), 16384),
  ("CP-rank4", lambda r: enn.CPConv(CIN, COUT, KERNEL, rank=4, rngs=r), 4096),
  ("CP-rank16", lambda r: enn.CPConv(CIN, COUT, KERNEL, rank=16, rngs=r), 2048),
  ("Tucker-1x1", lambda r: enn.TuckerConv(CIN, COUT, KERNEL, rank=(1, 1), rngs=r), 4096),
  ("Tucker-2x3", lambda r: enn.TuckerConv(CIN, COUT, KERNEL, rank=(2, 3), rngs=r), 2048),
  ("Spatial-rank1", lambda r: enn.SpatialConv(CIN, COUT, KERNEL, rank=1, rngs=r), 2048),
  ("Spatial-rank8", lambda r: enn.SpatialConv(CIN, COUT, KERNEL, rank=8, rngs=r), 1024),
  ("Separable-m1", lambda r: enn.SeparableConv(CIN, COUT, KERNEL, depth_multiplier=1, rngs=r), 1024),
  ("Separable-m8", lambda r: enn.SeparableConv(CIN, COUT, KERNEL, depth_multiplier=8, rngs=r), 1024),
  ("TT-rank1", lambda r: enn.TTConv(CIN, COUT, KERNEL, rank=1, in_modes=(2, 4), out_modes=(4, 2), rngs=r), 4096),
  ("TT-3x4", lambda r: enn.TTConv(CIN, COUT, KERNEL, rank=(3, 4), in_modes=(2, 4), out_modes=(4, 2), rngs=r), 2048),
  (
    "TT-3cores",
    lambda r: enn.TTConv(CIN, COUT, KERNEL, rank=(2, 3, 2), in_modes=(2, 2, 2), out_modes=(2, 2, 2), rngs=r),
    4096,
  ),
]


@functools.cache
def config_kernels(index: int) -> np.ndarray:
  """:func:`sample_kernels` of ``CONFIGS[index]`` (cached: two tests use the first)."""
  _, make, n_layers = CONFIGS[index]
  return sample_kernels(make, n_layers)


def sample_kernels(make: LayerFactory, n_layers: int, seed: int = 0) -> np.ndarray:
  """Dense kernels ``(L, kh, kw, C_in, C_out)`` of ``L`` layers built with independent keys."""

  def kernel(key: jax.Array) -> jax.Array:
    layer = make(nnx.Rngs(key))
    return layer.kernel[...] if isinstance(layer, nnx.Conv) else layer.to_dense()

  keys = jax.random.split(jax.random.key(seed), n_layers)
  return np.asarray(run_compiled(jax.vmap(kernel), keys), dtype=np.float64)


def variance_ratio(kernels: np.ndarray, fan_in: int) -> tuple[float, float]:
  """``(mean, standard error)`` over layers of ``fan_in · mean(W²)`` (1 for LeCun normal)."""
  ratios = fan_in * np.mean(kernels.reshape(kernels.shape[0], -1) ** 2, axis=1)
  return float(ratios.mean()), float(ratios.std(ddof=1) / np.sqrt(len(ratios)))


def assert_lecun_variance(kernels: np.ndarray, fan_in: int, what: str) -> float:
  """Asserts the kernels have variance ``1 / fan_in`` within :data:`TOL`; returns the measured ratio."""
  ratio, se = variance_ratio(kernels, fan_in)
  assert se <= ratio * TOL / 4, f"{what}: too few samples for a {TOL:.0%} tolerance (SE {se:.3f}); raise L"
  assert abs(ratio - 1) <= TOL, f"{what}: variance is {ratio:.3f} / fan_in (SE {se:.3f}), expected 1 / fan_in"
  return ratio


@pytest.fixture(scope="module")
def nnx_conv_ratio() -> float:
  """The same measurement on ``nnx.Conv``'s own kernel (its default LeCun normal)."""
  kernels = sample_kernels(lambda r: nnx.Conv(CIN, COUT, KERNEL, rngs=r), 512)
  return assert_lecun_variance(kernels, FAN_IN, "nnx.Conv")


@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=[c[0] for c in CONFIGS])
def test_reconstructed_kernel_has_lecun_variance(index: int, nnx_conv_ratio: float) -> None:
  name, _, n_layers = CONFIGS[index]
  kernels = config_kernels(index)
  assert kernels.shape == (n_layers, *KERNEL, CIN, COUT)
  assert kernels.size >= 100_000
  ratio = assert_lecun_variance(kernels, FAN_IN, name)
  # And the same as the layer it replaces, measured the same way.
  assert abs(ratio / nnx_conv_ratio - 1) <= TOL, (name, ratio, nnx_conv_ratio)
  # Zero mean: |mean| within 5 standard errors of the per-layer means.
  means = kernels.reshape(n_layers, -1).mean(axis=1)
  assert abs(means.mean()) <= 5 * means.std(ddof=1) / np.sqrt(n_layers) + 1e-12


@pytest.mark.parametrize("variance_factor", [2.0, 0.5])
def test_check_rejects_a_wrong_variance(variance_factor: float) -> None:
  """The check above is sharp enough to catch a 2× (or ½×) error, even on the heaviest-tailed configuration."""
  name, kernels = CONFIGS[0][0], config_kernels(0)
  assert_lecun_variance(kernels, FAN_IN, name)
  with pytest.raises(AssertionError, match="variance is"):
    assert_lecun_variance(np.sqrt(variance_factor) * kernels, FAN_IN, f"{name} × {variance_factor}")


# One layer per scheme for the kernel_init tests: (name, factory taking kernel_init, number of layers L).
KernelInitFactory = Callable[[nnx.Rngs, Callable], nnx.Module]
KERNEL_INIT_CONFIGS: list[tuple[str, KernelInitFactory, int]] = [
  ("CP", lambda r, k: enn.CPConv(CIN, COUT, KERNEL, rank=4, kernel_init=k, rngs=r), 4096),
  ("Tucker", lambda r, k: enn.TuckerConv(CIN, COUT, KERNEL, rank=(2, 3), kernel_init=k, rngs=r), 2048),
  ("Spatial", lambda r, k: enn.SpatialConv(CIN, COUT, KERNEL, rank=8, kernel_init=k, rngs=r), 1024),
  ("Separable", lambda r, k: enn.SeparableConv(CIN, COUT, KERNEL, depth_multiplier=2, kernel_init=k, rngs=r), 1024),
  (
    "TT",
    lambda r, k: enn.TTConv(CIN, COUT, KERNEL, rank=(3, 4), in_modes=(2, 4), out_modes=(4, 2), kernel_init=k, rngs=r),
    2048,
  ),
]


KERNEL_INIT_CASES = [(i, "he_uniform") for i in range(len(KERNEL_INIT_CONFIGS))] + [
  (3, "lecun_normal"),
  (4, "lecun_normal"),
]


@pytest.mark.parametrize(
  ("index", "init_name"), KERNEL_INIT_CASES, ids=[f"{KERNEL_INIT_CONFIGS[i][0]}-{n}" for i, n in KERNEL_INIT_CASES]
)
def test_reconstructed_kernel_follows_the_kernel_init_variance(index: int, init_name: str) -> None:
  """``kernel_init`` is the dense kernel's initializer: the reconstructed kernel gets its variance.

  He-uniform's ``2 / fan_in`` for every scheme (not LeCun's, and not a per-factor draw, which gave TT and
  separable layers an eighth of the std); LeCun normal's ``1 / fan_in`` on separable and TT.
  """
  name, make, n_layers = KERNEL_INIT_CONFIGS[index]
  init, scale = {
    "he_uniform": (nnx.initializers.he_uniform(), 2.0),
    "lecun_normal": (nnx.initializers.lecun_normal(), 1.0),
  }[init_name]
  kernels = sample_kernels(lambda r: make(r, init), n_layers)
  assert_lecun_variance(kernels / np.sqrt(scale), FAN_IN, f"{name} with {init_name}")


def test_zeros_kernel_init_zeroes_only_the_last_factor() -> None:
  """``zeros``: the kernel is zero, and only its last factor, so the gradient still reaches every factor."""
  layer = enn.CPConv(CIN, COUT, KERNEL, rank=4, kernel_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
  *others, last = layer.format.arrays()
  np.testing.assert_array_equal(np.asarray(last), 0.0)
  np.testing.assert_array_equal(np.asarray(layer.to_dense()), 0.0)
  for factor in others:
    assert float(np.std(np.asarray(factor))) > 0.1


def test_nonzero_mean_kernel_init_is_rejected() -> None:
  with pytest.raises(ValueError, match="kernel_init must draw zero-mean kernels"):
    enn.CPConv(CIN, COUT, KERNEL, rank=4, kernel_init=nnx.initializers.ones_init(), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("activation", [nnx.relu, None], ids=["relu", "linear"])
def test_bottleneck_convs_have_lecun_variance_over_their_own_fan_in(activation: Callable | None) -> None:
  """The block is three convs (with or without activation); each is LeCun over its own fan-in."""

  def factors(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    layer = enn.Bottleneck(CIN, COUT, KERNEL, width=(4, 6), activation=activation, rngs=nnx.Rngs(key))
    return layer.first[...], layer.core[...], layer.last[...]

  first, core, last = run_compiled(jax.vmap(factors), jax.random.split(jax.random.key(1), 2048))
  for what, factor, fan_in in (("first", first, CIN), ("core", core, KERNEL[0] * KERNEL[1] * 4), ("last", last, 6)):
    flat = np.asarray(factor, np.float64).reshape(factor.shape[0], -1)
    per_layer = fan_in * np.mean(flat**2, axis=1)
    se = per_layer.std(ddof=1) / np.sqrt(len(per_layer))
    assert se <= TOL / 4 and abs(per_layer.mean() - 1) <= TOL, (what, per_layer.mean(), se)
