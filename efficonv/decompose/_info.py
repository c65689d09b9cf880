"""The fit report every decomposition returns, and the relative-error helper."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp

from efficonv.typing import Array, ArrayLike, PrecisionLike

# Decompositions are numerical fits: float32 matmuls run at full precision
# (no TF32/bfloat16 passes on accelerators), which is what the 1e-4 recovery
# guarantees rely on.
HIGHEST = jax.lax.Precision.HIGHEST


class FitInfo(NamedTuple):
  """How well a factorization fits its dense kernel (a pytree of arrays, so it passes through ``jit``/``vmap``).

  Attributes:
    relative_error: ``||W - to_dense(fmt)||_F / ||W||_F`` (``||W - to_dense(fmt)||_F`` when ``W = 0``).
    n_iter: iterations done (int32): CP sweeps (or ALS sweep + LM steps), Tucker-2 HOOI sweeps after the
      HOSVD (``0`` = plain HOSVD), ``1`` for the one-pass SVD methods (TT, Spatial, Separable).
    degeneracy: largest Frobenius norm of the additive terms the format sums, over ``||W||_F``. For CP
      the terms are the rank-one tensors (Phan et al. 2020: values ``≫ 1`` mean large terms cancel each
      other). For the SVD-based formats the terms are orthogonal, so the value is ``≤ 1`` up to rounding:
      Spatial — ``σ_1`` of the spatial unfolding; Separable — the largest singular value of any channel's
      slice; Tucker2 — the largest core slice ``||G[:, :, a, b]||``; TT — the largest term across the
      spatial bond, ``max_r ||G^0[:, :, r]|| · ||(G^1 ⋯ G^d)[r]||``.
  """

  relative_error: Array
  n_iter: Array
  degeneracy: Array


class HasDense(Protocol):
  """Anything with a dense reconstruction (every :mod:`efficonv.formats` class)."""

  def to_dense(self, *, precision: PrecisionLike = None) -> Array: ...


def safe_ratio(numerator: Array, kernel_norm: Array) -> Array:
  """``numerator / ||W||``, or ``numerator`` itself for an all-zero kernel (avoids ``0/0``)."""
  positive = kernel_norm > 0
  return jnp.where(positive, numerator / jnp.where(positive, kernel_norm, 1), numerator)


def dense_relative_error(kernel: Array, dense: Array) -> Array:
  """``||kernel - dense||_F / ||kernel||_F`` for two arrays of the same shape."""
  return safe_ratio(jnp.linalg.norm((kernel - dense).ravel()), jnp.linalg.norm(kernel.ravel()))


def relative_error(kernel: ArrayLike, fmt: HasDense | ArrayLike) -> Array:
  """Relative Frobenius error of a factorized (or dense) approximation of ``kernel``.

  .. math:: \\frac{\\|W - \\hat W\\|_F}{\\|W\\|_F}

  Args:
    kernel: the dense HWIO kernel ``W``, ``(kh, kw, C_in, C_out)``.
    fmt: a format object (anything with ``to_dense()``) or a dense array of the same shape.

  Returns:
    A scalar array (``||W - \\hat W||_F`` when ``W`` is all zeros).

  Raises:
    ValueError: naming ``fmt`` when its dense shape differs from ``kernel``'s.
  """
  kernel = jnp.asarray(kernel)
  dense = fmt.to_dense(precision=HIGHEST) if hasattr(fmt, "to_dense") else jnp.asarray(fmt)
  if dense.shape != kernel.shape:
    raise ValueError(f"fmt must reconstruct a kernel of shape {kernel.shape}, got {dense.shape}")
  dtype = jnp.promote_types(jnp.result_type(kernel, dense), jnp.float32)
  return dense_relative_error(kernel.astype(dtype), dense.astype(dtype))
