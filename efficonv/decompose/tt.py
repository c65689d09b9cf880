"""Tensor-Train decomposition into the TT-conv format by TT-SVD."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from efficonv.decompose._compile import fit_jit
from efficonv.decompose._info import HIGHEST, FitInfo, dense_relative_error, safe_ratio
from efficonv.decompose._svd import truncated_svd
from efficonv.decompose._validate import check_kernel
from efficonv.formats import TT
from efficonv.formats.ranks import as_int
from efficonv.formats.tt import reorder
from efficonv.kernels.reconstruct import tt_to_dense
from efficonv.typing import Array, ArrayLike


def tt(
  kernel: ArrayLike,
  rank: int | Sequence[int],
  *,
  in_modes: Sequence[int] | None = None,
  out_modes: Sequence[int] | None = None,
) -> tuple[TT, FitInfo]:
  """TT-conv decomposition of an HWIO kernel by TT-SVD (Oseledets 2011; format of Garipov et al. 2016).

  With ``C_in = ∏ c_k`` and ``C_out = ∏ s_k`` (C-order raveling), the kernel is reordered to the
  ``d + 1``-way tensor ``(kh·kw, c_1 s_1, …, c_d s_d)`` and split left to right by truncated SVDs: the first
  gives the spatial core ``G^0`` (orthonormal columns), each next one a channel core
  ``G^k_{r_{k-1}, c_k, s_k, r_k}``, and the remainder is the last core. The error obeys
  ``||W - \\hat W||^2 <= Σ_k (discarded σ^2 at bond k)``.

  Runs under ``jit`` (``rank``, ``in_modes``, ``out_modes`` static) and ``vmap``.

  Args:
    kernel: ``(kh, kw, C_in, C_out)``.
    rank: ``(r_0, …, r_{d-1})``, each ``>= 1`` and within the bound of
      :func:`efficonv.formats.tt.tt_rank_bounds` (the one :meth:`efficonv.TT.init` checks; exceeding it is
      an error); or one int, used for every bond and clipped to that bound.
    in_modes: ``(c_1, …, c_d)``, positive, product ``C_in`` (default: two balanced factors).
    out_modes: ``(s_1, …, s_d)``, positive, product ``C_out``, same length as ``in_modes`` (default:
      balanced).

  Returns:
    ``(TT(spatial (kh, kw, r_0), cores), FitInfo)`` with ``n_iter = 1`` and ``degeneracy`` the largest term
    across the spatial bond, ``max_r ||G^0_{:,:,r}|| · ||(G^1 ⋯ G^d)_r|| / ||W||_F`` (``≤ 1``).

  Raises:
    ValueError: naming ``kernel``, ``in_modes``, ``out_modes`` or ``rank``.

  References:
    Oseledets, `Tensor-Train Decomposition <https://doi.org/10.1137/090752286>`_, SIAM J. Sci. Comput. 2011.
    Garipov et al., `Ultimate tensorization: compressing convolutional and FC layers alike
    <https://arxiv.org/abs/1611.03214>`_, 2016.
  """
  w = check_kernel(kernel)
  modes = TT.scheme_options(w.shape, in_modes=in_modes, out_modes=out_modes)
  single = as_int(rank)
  if single is not None and single >= 1:  # one int: every bond, clipped to its bound
    rank = TT.clip_rank(single, w.shape, **modes)[0]
  ranks = TT.check_rank(rank, w.shape, **modes)
  return _fit(w, ranks=ranks, **modes)


@fit_jit("ranks", "in_modes", "out_modes")
def _fit(
  w: Array, *, ranks: tuple[int, ...], in_modes: tuple[int, ...], out_modes: tuple[int, ...]
) -> tuple[TT, FitInfo]:
  kh, kw = w.shape[:2]
  d = len(in_modes)
  rest = reorder(w, in_modes=in_modes, out_modes=out_modes).reshape(kh * kw, -1)
  u, s, vt = truncated_svd(rest, ranks[0])
  spatial = u.reshape(kh, kw, ranks[0])
  rest = s[:, None] * vt
  cores = []
  for k in range(d - 1):
    r_prev, size = ranks[k], in_modes[k] * out_modes[k]
    u, s, vt = truncated_svd(rest.reshape(r_prev * size, -1), ranks[k + 1])
    cores.append(u.reshape(r_prev, in_modes[k], out_modes[k], ranks[k + 1]))
    rest = s[:, None] * vt
  cores.append(rest.reshape(ranks[d - 1], in_modes[d - 1], out_modes[d - 1], 1))
  fmt = TT(spatial, tuple(cores))

  dense = tt_to_dense(spatial, cores, precision=HIGHEST)
  w_norm = jnp.linalg.norm(w.ravel())
  info = FitInfo(dense_relative_error(w, dense), jnp.ones((), jnp.int32), safe_ratio(_largest_term(fmt), w_norm))
  return fmt, info


def _largest_term(fmt: TT) -> Array:
  """``max_r ||G^0_{:,:,r}|| · ||(G^1 ⋯ G^d)_r||`` — the terms summed across the spatial bond."""
  channel = fmt.cores[0]  # (r_0, C_so_far, S_so_far, r)
  for core in fmt.cores[1:]:
    channel = jnp.einsum("qabr,rcst->qacbst", channel, core, precision=HIGHEST)
    q, a, c, b, s, t = channel.shape
    channel = channel.reshape(q, a * c, b * s, t)
  channel_norms = jnp.linalg.norm(channel.reshape(channel.shape[0], -1), axis=1)
  spatial_norms = jnp.linalg.norm(fmt.spatial.reshape(-1, fmt.spatial.shape[-1]), axis=0)
  return jnp.max(spatial_norms * channel_norms)
