"""Depthwise-separable decomposition: one truncated SVD per input channel."""

from __future__ import annotations

import jax.numpy as jnp

from efficonv.decompose._compile import fit_jit
from efficonv.decompose._info import HIGHEST, FitInfo, dense_relative_error, safe_ratio
from efficonv.decompose._svd import truncated_svd
from efficonv.decompose._validate import check_kernel
from efficonv.formats import Separable
from efficonv.formats.ranks import single_rank
from efficonv.kernels.reconstruct import separable_to_dense
from efficonv.typing import Array, ArrayLike


def separable(kernel: ArrayLike, depth_multiplier: int = 1) -> tuple[Separable, FitInfo]:
  """Best depthwise-separable approximation of an HWIO kernel with depth multiplier ``m``.

  Input channel ``c`` only reaches the outputs through its own ``m`` depthwise filters, so the fit
  separates by channel: the ``(kh·kw) × C_out`` slice ``W_{:,:,c,:}`` is replaced by its best rank-``m``
  approximation ``U Σ V^T`` (Eckart–Young), which makes the whole fit optimal in Frobenius norm:

  .. math:: D_{x,y,c,j} = U^{(c)}_{(x,y),j} \\sqrt{\\sigma^{(c)}_j}, \\qquad
    P_{c m + j, s} = \\sqrt{\\sigma^{(c)}_j}\\, V^{(c)}_{s,j}

  Runs under ``jit`` (``depth_multiplier`` static) and ``vmap``.

  Args:
    kernel: ``(kh, kw, C_in, C_out)``.
    depth_multiplier: ``m``, ``1 <= m <= min(kh·kw, C_out)`` (the rank of one slice;
      :meth:`efficonv.Separable.max_rank`).

  Returns:
    ``(Separable(depthwise (kh, kw, C_in, m), pointwise (C_in·m, C_out)), FitInfo)`` with ``n_iter = 1``
    and ``degeneracy = max_c σ^{(c)}_1 / ||W||_F`` (``≤ 1``).

  Raises:
    ValueError: naming ``kernel`` (not 4-D/real/finite) or ``depth_multiplier`` (out of range).

  References:
    Chollet, `Xception: Deep Learning with Depthwise Separable Convolutions
    <https://arxiv.org/abs/1610.02357>`_, CVPR 2017.
  """
  w = check_kernel(kernel)
  m = single_rank(Separable.check_rank(depth_multiplier, w.shape, name="depth_multiplier"))
  return _fit(w, m=m)


@fit_jit("m")
def _fit(w: Array, *, m: int) -> tuple[Separable, FitInfo]:
  kh, kw, cin, cout = w.shape
  (slices,) = (u.matrix for u in Separable.unfoldings(w))  # (C_in, kh·kw, C_out): one matrix per input channel
  u, s, vt = truncated_svd(slices, m)  # (cin, kh·kw, m), (cin, m), (cin, m, cout)
  root = jnp.sqrt(s)
  depthwise = (u * root[:, None, :]).reshape(cin, kh, kw, m).transpose(1, 2, 0, 3)
  pointwise = (root[:, :, None] * vt).reshape(cin * m, cout)
  dense = separable_to_dense(depthwise, pointwise, precision=HIGHEST)
  w_norm = jnp.linalg.norm(w.ravel())
  info = FitInfo(dense_relative_error(w, dense), jnp.ones((), jnp.int32), safe_ratio(jnp.max(s[:, 0]), w_norm))
  return Separable(depthwise, pointwise), info
