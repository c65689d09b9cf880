"""Einsum reconstructions of the dense HWIO kernel from each factorization.

Each function here is the definition of its format: the factorized paths in
:mod:`efficonv.kernels.factorized` compute exactly
``conv(x, <format>_to_dense(...))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from efficonv.typing import Array, PrecisionLike


def spatial_to_dense(vertical: Array, horizontal: Array, *, precision: PrecisionLike = None) -> Array:
  """Spatial (Jaderberg scheme 2) kernel.

  .. math:: W_{x,y,c,s} = \\sum_k V_{x,c,k} H_{y,k,s}

  Args:
    vertical: ``(kh, C_in, K)``, the ``kh×1`` conv ``C_in → K``.
    horizontal: ``(kw, K, C_out)``, the ``1×kw`` conv ``K → C_out``.

  Returns:
    ``(kh, kw, C_in, C_out)``.
  """
  return jnp.einsum("xck,yks->xycs", vertical, horizontal, precision=precision)


def cp_to_dense(
  first: Array, vertical: Array, horizontal: Array, last: Array, *, precision: PrecisionLike = None
) -> Array:
  """CP kernel (Lebedev et al. 2014).

  .. math:: W_{x,y,c,s} = \\sum_r U_{c,r} V_{x,r} H_{y,r} L_{r,s}

  Args:
    first: ``(C_in, R)``.
    vertical: ``(kh, R)``.
    horizontal: ``(kw, R)``.
    last: ``(R, C_out)``.

  Returns:
    ``(kh, kw, C_in, C_out)``.
  """
  return jnp.einsum("cr,xr,yr,rs->xycs", first, vertical, horizontal, last, precision=precision)


def tucker2_to_dense(first: Array, core: Array, last: Array, *, precision: PrecisionLike = None) -> Array:
  """Tucker-2 kernel (Kim et al. 2016).

  .. math:: W_{x,y,c,s} = \\sum_{a,b} U_{c,a} G_{x,y,a,b} L_{b,s}

  Args:
    first: ``(C_in, R1)``.
    core: ``(kh, kw, R1, R2)``.
    last: ``(R2, C_out)``.

  Returns:
    ``(kh, kw, C_in, C_out)``.
  """
  return jnp.einsum("ca,xyab,bs->xycs", first, core, last, precision=precision)


def separable_to_dense(depthwise: Array, pointwise: Array, *, precision: PrecisionLike = None) -> Array:
  """Depthwise-separable kernel with depth multiplier ``m``.

  .. math:: W_{x,y,c,s} = \\sum_j D_{x,y,c,j} P_{c m + j, s}

  Args:
    depthwise: ``(kh, kw, C_in, m)``.
    pointwise: ``(C_in·m, C_out)``.

  Returns:
    ``(kh, kw, C_in, C_out)``.
  """
  cin, m = depthwise.shape[2:]
  p = pointwise.reshape(cin, m, pointwise.shape[-1])
  return jnp.einsum("xycj,cjs->xycs", depthwise, p, precision=precision)


def tt_to_dense(spatial: Array, cores: Sequence[Array], *, precision: PrecisionLike = None) -> Array:
  """Tensor-Train kernel (Garipov et al. 2016).

  .. math::
    W_{x,y,(c_1\\dots c_d),(s_1\\dots s_d)} = \\sum_{r_0..r_{d-1}}
      G^0_{x,y,r_0} G^1_{r_0,c_1,s_1,r_1} \\cdots G^d_{r_{d-1},c_d,s_d,1}

  Channel indices are raveled in C order: ``c = ravel(c_1, …, c_d)``.

  Args:
    spatial: ``(kh, kw, r_0)``.
    cores: ``d`` cores, core ``k`` of shape ``(r_{k-1}, c_k, s_k, r_k)``, ``r_d = 1``.

  Returns:
    ``(kh, kw, ∏c_k, ∏s_k)``.
  """
  # acc: (kh, kw, C_so_far, S_so_far, r)
  acc = spatial[:, :, None, None, :]
  for core in cores:
    acc = jnp.einsum("xyabr,rcsq->xyacbsq", acc, core, precision=precision)
    x, y, a, c, b, s, q = acc.shape
    acc = acc.reshape(x, y, a * c, b * s, q)
  return acc[..., 0]
