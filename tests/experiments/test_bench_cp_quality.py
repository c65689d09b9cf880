"""The CP benchmark's GEMM floor loop does the two channel-mode MTTKRP GEMMs of each sweep, nothing hoisted."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from experiments.bench.cp_quality import SHAPE, SYNTHETIC_RANK, mttkrp_gemm_loop, synthetic_kernel


def test_mttkrp_gemm_loop_iterates_both_gemms() -> None:
  w = synthetic_kernel(0.8, 0)
  rows = w.reshape(-1, SHAPE[3]).astype(np.float64)
  a_out = np.ones((SHAPE[3], SYNTHETIC_RANK))
  for _ in range(2):
    khatri_rao = np.tanh(rows @ a_out)
    a_out = np.tanh(rows.T @ khatri_rao)
  result = np.asarray(mttkrp_gemm_loop(jnp.asarray(w), sweeps=2))
  assert result.shape == (SHAPE[3], SYNTHETIC_RANK)
  np.testing.assert_allclose(result, a_out, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(mttkrp_gemm_loop(jnp.asarray(w), sweeps=0)), np.ones_like(result))
