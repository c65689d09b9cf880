"""Kernels with a known exact structure (CP rank, Tucker ranks, TT ranks, spatial rank, separable multiplier)."""

from __future__ import annotations

import math

import numpy as np


def gaussian(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  return rng.standard_normal(shape).astype(np.float32)


def cp_kernel(rng: np.random.Generator, shape: tuple[int, int, int, int], rank: int) -> np.ndarray:
  """A kernel of CP rank ``rank`` (generic Gaussian factors)."""
  factors = [rng.standard_normal((size, rank)) for size in shape]
  return np.einsum("xr,yr,cr,sr->xycs", *factors).astype(np.float32)


def tucker2_kernel(rng: np.random.Generator, shape: tuple[int, int, int, int], ranks: tuple[int, int]) -> np.ndarray:
  kh, kw, cin, cout = shape
  first = rng.standard_normal((cin, ranks[0]))
  core = rng.standard_normal((kh, kw, ranks[0], ranks[1]))
  last = rng.standard_normal((ranks[1], cout))
  return np.einsum("ca,xyab,bs->xycs", first, core, last).astype(np.float32)


def tt_kernel(
  rng: np.random.Generator,
  kernel_size: tuple[int, int],
  ranks: tuple[int, ...],
  in_modes: tuple[int, ...],
  out_modes: tuple[int, ...],
) -> np.ndarray:
  """A TT-conv kernel with the given TT ranks, reconstructed independently of efficonv (C-order channels)."""
  acc = rng.standard_normal((*kernel_size, 1, 1, ranks[0]))
  bonds = (*ranks, 1)
  for k, (c, s) in enumerate(zip(in_modes, out_modes)):
    core = rng.standard_normal((bonds[k], c, s, bonds[k + 1]))
    acc = np.einsum("xyabr,rcsq->xyacbsq", acc, core)
    x, y, a, c_, b, s_, q = acc.shape
    acc = acc.reshape(x, y, a * c_, b * s_, q)
  return acc[..., 0].astype(np.float32)


def spatial_kernel(rng: np.random.Generator, shape: tuple[int, int, int, int], rank: int) -> np.ndarray:
  kh, kw, cin, cout = shape
  vertical = rng.standard_normal((kh, cin, rank))
  horizontal = rng.standard_normal((kw, rank, cout))
  return np.einsum("xck,yks->xycs", vertical, horizontal).astype(np.float32)


def separable_kernel(rng: np.random.Generator, shape: tuple[int, int, int, int], m: int) -> np.ndarray:
  kh, kw, cin, cout = shape
  depthwise = rng.standard_normal((kh, kw, cin, m))
  pointwise = rng.standard_normal((cin, m, cout))
  return np.einsum("xycj,cjs->xycs", depthwise, pointwise).astype(np.float32)


def relative_error(kernel: np.ndarray, approximation: np.ndarray) -> float:
  """Float64 reference of ``||W - Ŵ|| / ||W||``."""
  kernel = np.asarray(kernel, np.float64)
  return float(np.linalg.norm(kernel - np.asarray(approximation, np.float64)) / np.linalg.norm(kernel))


def optimal_truncation_error(matrices: np.ndarray, rank: int) -> float:
  """Relative error of the best rank-``rank`` approximation of each matrix in a stack (Eckart–Young), float64."""
  s = np.linalg.svd(np.asarray(matrices, np.float64), compute_uv=False)
  discarded = float(np.sum(s[..., rank:] ** 2))
  return math.sqrt(discarded / float(np.sum(s**2)))
