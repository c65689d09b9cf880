"""Dense HWIO kernel → factorized format: each function returns ``(format, FitInfo)``.

All fits run under ``jax.jit`` (with the non-array arguments static or closed over) and ``jax.vmap``
over a stack of same-shape kernels.
"""

from efficonv.decompose._info import FitInfo as FitInfo
from efficonv.decompose._info import relative_error as relative_error
from efficonv.decompose.cp import cp as cp
from efficonv.decompose.separable import separable as separable
from efficonv.decompose.spatial import spatial as spatial
from efficonv.decompose.tt import tt as tt
from efficonv.decompose.tucker2 import tucker2 as tucker2
