"""Fits compile with the CPU options when called on CPU arrays, and inline into a caller's trace."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficonv.decompose import cp
from efficonv.decompose._compile import CPU_COMPILER_OPTIONS, FitJit, on_cpu

from . import _builders as build


def test_on_cpu_is_true_only_for_concrete_cpu_arrays() -> None:
  assert on_cpu(jnp.ones(3))
  assert not on_cpu(np.ones(3))
  seen = []
  jax.jit(lambda x: seen.append(on_cpu(x)) or x)(jnp.ones(3))
  assert seen == [False]


def test_eager_calls_use_the_cpu_executable_and_traced_calls_the_plain_one() -> None:
  fit = FitJit(lambda x, *, k: x * k, ["k"])
  np.testing.assert_array_equal(np.asarray(fit(jnp.ones(3), k=2)), 2 * np.ones(3))
  assert (fit._cpu._cache_size(), fit._plain._cache_size()) == (1, 0)
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda x: fit(x, k=3))(jnp.ones(3))), 3 * np.ones(3))
  assert fit._cpu._cache_size() == 1
  assert fit.__name__ == "<lambda>"


def test_cpu_options_are_accepted_by_xla() -> None:
  compiled = jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(jnp.ones(3)).compile()
  assert compiled is not None


def test_eager_cp_matches_cp_under_the_callers_jit() -> None:
  rng = np.random.default_rng(0)
  w = build.cp_kernel(rng, (3, 3, 8, 10), 6) + 0.3 * build.gaussian(rng, (3, 3, 8, 10))
  _, eager = cp(w, 5, n_iter=30, tol=0.0, n_restarts=2)
  _, traced = jax.jit(lambda k: cp(k, 5, n_iter=30, tol=0.0, n_restarts=2))(jnp.asarray(w))
  assert float(eager.relative_error) == pytest.approx(float(traced.relative_error), rel=1e-4)
