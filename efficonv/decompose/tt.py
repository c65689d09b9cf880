"""Tensor-Train decomposition into the TT-conv format by TT-SVD."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from efficonv._typing import Array, ArrayLike
from efficonv.decompose._info import HIGHEST, FitInfo, dense_relative_error, safe_ratio
from efficonv.decompose._svd import truncated_svd
from efficonv.decompose._validate import check_kernel
from efficonv.formats import TT
from efficonv.kernels.reconstruct import tt_to_dense


def max_tt_ranks(kernel_size: tuple[int, int], in_modes: Sequence[int], out_modes: Sequence[int]) -> tuple[int, ...]:
  """Largest TT ranks ``(r_0, …, r_{d-1})`` TT-SVD can use for this kernel and channel factorization.

  Bond ``k`` separates ``(kh·kw, c_1 s_1, …, c_k s_k)`` from ``(c_{k+1} s_{k+1}, …, c_d s_d)``, so its rank
  is at most the smaller side's size; TT-SVD also needs ``r_k <= r_{k-1} c_k s_k`` (the rows of the
  matrix it factorizes). With these ranks the decomposition is exact.

  Args:
    kernel_size: ``(kh, kw)``.
    in_modes: ``(c_1, …, c_d)``.
    out_modes: ``(s_1, …, s_d)``.

  Returns:
    ``d`` ints.
  """
  sizes = [m_in * m_out for m_in, m_out in zip(in_modes, out_modes)]
  left = kernel_size[0] * kernel_size[1]
  ranks = []
  for k in range(len(sizes)):
    right = math.prod(sizes[k:])
    ranks.append(min(left, right))
    left = ranks[-1] * sizes[k]
  return tuple(ranks)


def tt(
  kernel: ArrayLike, ranks: int | Sequence[int], in_modes: Sequence[int], out_modes: Sequence[int]
) -> tuple[TT, FitInfo]:
  """TT-conv decomposition of an HWIO kernel by TT-SVD (Oseledets 2011; format of Garipov et al. 2016).

  With ``C_in = ∏ c_k`` and ``C_out = ∏ s_k`` (C-order raveling), the kernel is reordered to the
  ``d + 1``-way tensor ``(kh·kw, c_1 s_1, …, c_d s_d)`` and split left to right by truncated SVDs: the first
  gives the spatial core ``G^0`` (orthonormal columns), each next one a channel core
  ``G^k_{r_{k-1}, c_k, s_k, r_k}``, and the remainder is the last core. The error obeys
  ``||W - \\hat W||^2 <= Σ_k (discarded σ^2 at bond k)``.

  Runs under ``jit`` (``ranks``, ``in_modes``, ``out_modes`` static) and ``vmap``.

  Args:
    kernel: ``(kh, kw, C_in, C_out)``.
    ranks: ``(r_0, …, r_{d-1})``, each ``>= 1`` and at most :func:`max_tt_ranks` (exceeding it is an
      error); or one int, used for every bond and clipped to :func:`max_tt_ranks`.
    in_modes: ``(c_1, …, c_d)``, positive, product ``C_in``.
    out_modes: ``(s_1, …, s_d)``, positive, product ``C_out``, same length as ``in_modes``.

  Returns:
    ``(TT(spatial (kh, kw, r_0), cores), FitInfo)`` with ``n_iter = 1`` and ``degeneracy`` the largest term
    across the spatial bond, ``max_r ||G^0_{:,:,r}|| · ||(G^1 ⋯ G^d)_r|| / ||W||_F`` (``≤ 1``).

  Raises:
    ValueError: naming ``kernel``, ``in_modes``, ``out_modes`` or ``ranks``.

  References:
    Oseledets, `Tensor-Train Decomposition <https://doi.org/10.1137/090752286>`_, SIAM J. Sci. Comput. 2011.
    Garipov et al., `Ultimate tensorization: compressing convolutional and FC layers alike
    <https://arxiv.org/abs/1611.03214>`_, 2016.
  """
  w = check_kernel(kernel)
  kh, kw, cin, cout = w.shape
  in_modes = _check_modes(in_modes, "in_modes", cin, "C_in")
  out_modes = _check_modes(out_modes, "out_modes", cout, "C_out")
  if len(out_modes) != len(in_modes):
    raise ValueError(f"out_modes must have as many factors as in_modes ({len(in_modes)}), got {out_modes}")
  ranks = _check_ranks(ranks, (kh, kw), in_modes, out_modes)
  return _fit(w, ranks=ranks, in_modes=in_modes, out_modes=out_modes)


@functools.partial(jax.jit, static_argnames=("ranks", "in_modes", "out_modes"))
def _fit(
  w: Array, *, ranks: tuple[int, ...], in_modes: tuple[int, ...], out_modes: tuple[int, ...]
) -> tuple[TT, FitInfo]:
  kh, kw = w.shape[:2]
  d = len(in_modes)
  # (kh, kw, c_1..c_d, s_1..s_d) → (kh·kw, c_1, s_1, …, c_d, s_d)
  tensor = w.reshape((kh * kw,) + in_modes + out_modes)
  order = [0] + [axis for k in range(d) for axis in (1 + k, 1 + d + k)]
  rest = jnp.transpose(tensor, order).reshape(kh * kw, -1)
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


def _check_modes(modes: Sequence[int], name: str, total: int, what: str) -> tuple[int, ...]:
  try:
    values = tuple(modes)
  except TypeError as e:
    raise ValueError(f"{name} must be a sequence of positive ints with product {what} = {total}, got {modes!r}") from e
  if (
    not values
    or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values)
    or math.prod(values) != total
  ):
    raise ValueError(
      f"{name} must be a non-empty sequence of positive ints with product {what} = {total}, got {modes!r}"
    )
  return tuple(int(v) for v in values)


def _check_ranks(
  ranks: int | Sequence[int],
  kernel_size: tuple[int, int],
  in_modes: tuple[int, ...],
  out_modes: tuple[int, ...],
) -> tuple[int, ...]:
  d = len(in_modes)
  maximum = max_tt_ranks(kernel_size, in_modes, out_modes)
  if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
    if ranks < 1:
      raise ValueError(f"ranks must be >= 1, got {ranks}")
    return tuple(min(int(ranks), m) for m in maximum)
  try:
    values = tuple(ranks)  # type: ignore[arg-type]
  except TypeError as e:
    raise ValueError(f"ranks must be an int or a sequence of {d} ints, got {ranks!r}") from e
  if len(values) != d or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
    raise ValueError(f"ranks must be an int or a sequence of {d} ints (r_0..r_{d - 1}), got {ranks!r}")
  # TT-SVD's bound depends on the previous rank actually used, so check left to right.
  left = kernel_size[0] * kernel_size[1]
  for k, r in enumerate(values):
    size = in_modes[k] * out_modes[k]
    bound = min(left, math.prod(m_in * m_out for m_in, m_out in zip(in_modes[k:], out_modes[k:])))
    if not 1 <= r <= bound:
      raise ValueError(
        f"ranks[{k}] must be in [1, {bound}] for in_modes={in_modes}, out_modes={out_modes} and "
        f"ranks[:{k}]={values[:k]} (max TT ranks {maximum}), got ranks={values}"
      )
    left = int(r) * size
  return tuple(int(v) for v in values)
