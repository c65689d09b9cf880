"""Leading singular subspaces, the building block of every SVD-based fit."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from efficonv.typing import Array


def leading_left_singular_vectors(matrix: Array, k: int) -> Array:
  """The ``k`` leading left singular vectors of ``matrix``.

  Args:
    matrix: ``(m, n)`` with ``k <= m``.
    k: number of vectors (static).

  Returns:
    ``(m, k)`` with orthonormal columns. When ``k > min(m, n)`` the extra columns are an orthonormal
    basis of the remaining space (from the full ``U``), so the result is still orthonormal.
  """
  m, n = matrix.shape
  u, _, _ = jnp.linalg.svd(matrix, full_matrices=k > min(m, n))
  return u[:, :k]


def truncated_svd(matrix: Array, k: int) -> tuple[Array, Array, Array]:
  """Rank-``k`` truncated SVD ``U_k diag(s_k) V_k^T`` of ``matrix`` (``k <= min(m, n)``), batched over leading axes.

  Args:
    matrix: ``(..., m, n)``.
    k: number of singular triplets kept (static).

  Returns:
    ``(u (..., m, k), s (..., k), vt (..., k, n))``, singular values in decreasing order.
  """
  u, s, vt = jnp.linalg.svd(matrix, full_matrices=False)
  return u[..., :k], s[..., :k], vt[..., :k, :]


def leading_eigenvectors(matrix: Array, k: int) -> Array:
  """The ``k`` leading left singular vectors of ``matrix`` from the eigenvectors of its Gram matrix.

  Cheaper than :func:`leading_left_singular_vectors` for wide matrices (``(m, m)`` eigenproblem instead of
  an ``(m, n)`` SVD), but forming ``M M^T`` squares the condition number: directions with
  ``σ_i < √eps · σ_1`` are not resolved. Good for initializations, not for final subspaces.

  Args:
    matrix: ``(m, n)`` with ``k <= m``.
    k: number of vectors (static).

  Returns:
    ``(m, k)`` with orthonormal columns, by decreasing singular value.
  """
  _, vectors = jnp.linalg.eigh(jnp.dot(matrix, matrix.T, precision=jax.lax.Precision.HIGHEST))
  return vectors[:, ::-1][:, :k]
