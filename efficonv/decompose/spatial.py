"""Spatial (Jaderberg scheme 2) decomposition: one truncated SVD."""

from __future__ import annotations

import jax.numpy as jnp

from efficonv.decompose._compile import fit_jit
from efficonv.decompose._info import HIGHEST, FitInfo, dense_relative_error, safe_ratio
from efficonv.decompose._svd import truncated_svd
from efficonv.decompose._validate import check_kernel
from efficonv.formats import Spatial
from efficonv.formats.ranks import single_rank
from efficonv.kernels.reconstruct import spatial_to_dense
from efficonv.typing import Array, ArrayLike


def spatial(kernel: ArrayLike, rank: int) -> tuple[Spatial, FitInfo]:
  """Best rank-``K`` ``kh×1 → 1×kw`` factorization of an HWIO kernel (Jaderberg et al. 2014, scheme 2).

  The kernel is reshaped to the ``(kh·C_in) × (kw·C_out)`` matrix ``M_{(x,c),(y,s)} = W_{x,y,c,s}``, whose
  truncated SVD ``U_K Σ_K V_K^T`` is the best rank-``K`` approximation in Frobenius norm
  (Eckart–Young); the singular values are split evenly:

  .. math:: V_{x,c,k} = U_{(x,c),k} \\sqrt{\\sigma_k}, \\qquad H_{y,k,s} = \\sqrt{\\sigma_k}\\, V_{(y,s),k}

  Runs under ``jit`` (``rank`` static) and ``vmap``.

  Args:
    kernel: ``(kh, kw, C_in, C_out)``.
    rank: ``K``, ``1 <= K <= min(kh·C_in, kw·C_out)`` (:meth:`efficonv.Spatial.max_rank`).

  Returns:
    ``(Spatial(vertical (kh, C_in, K), horizontal (kw, K, C_out)), FitInfo)`` with ``n_iter = 1`` and
    ``degeneracy = σ_1 / ||W||_F`` (``≤ 1``).

  Raises:
    ValueError: naming ``kernel`` (not 4-D/real/finite) or ``rank`` (out of range).

  References:
    Jaderberg, Vedaldi & Zisserman, `Speeding up Convolutional Neural Networks with Low Rank Expansions
    <https://arxiv.org/abs/1405.3866>`_, BMVC 2014.
  """
  w = check_kernel(kernel)
  rank = single_rank(Spatial.check_rank(rank, w.shape))
  return _fit(w, rank=rank)


@fit_jit("rank")
def _fit(w: Array, *, rank: int) -> tuple[Spatial, FitInfo]:
  kh, kw, cin, cout = w.shape
  (matrix,) = (u.matrix for u in Spatial.unfoldings(w))  # (kh·C_in) × (kw·C_out)
  u, s, vt = truncated_svd(matrix, rank)
  root = jnp.sqrt(s)
  vertical = (u * root[None, :]).reshape(kh, cin, rank)
  horizontal = (root[:, None] * vt).reshape(rank, kw, cout).transpose(1, 0, 2)
  dense = spatial_to_dense(vertical, horizontal, precision=HIGHEST)
  w_norm = jnp.linalg.norm(w.ravel())
  info = FitInfo(dense_relative_error(w, dense), jnp.ones((), jnp.int32), safe_ratio(s[0], w_norm))
  return Spatial(vertical, horizontal), info
