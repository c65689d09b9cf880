"""FitInfo and relative_error."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from efficonv.decompose import FitInfo, relative_error, spatial
from efficonv.formats import CP

from . import _builders as build


def test_relative_error_of_format_and_array() -> None:
  rng = np.random.default_rng(0)
  fmt = CP(*(build.gaussian(rng, s) for s in ((4, 2), (3, 2), (3, 2), (2, 5))))
  dense = np.asarray(fmt.to_dense())
  assert float(relative_error(dense, fmt)) < 1e-6
  noisy = dense + 0.1 * build.gaussian(rng, dense.shape)
  np.testing.assert_allclose(float(relative_error(noisy, fmt)), build.relative_error(noisy, dense), rtol=1e-4)
  np.testing.assert_allclose(float(relative_error(noisy, dense)), build.relative_error(noisy, dense), rtol=1e-4)
  assert float(relative_error(np.zeros_like(dense), np.zeros_like(dense))) == 0.0


def test_relative_error_rejects_shape_mismatch() -> None:
  with pytest.raises(ValueError, match="fmt"):
    relative_error(np.ones((3, 3, 4, 5)), np.ones((3, 3, 5, 4)))


def test_fit_info_is_a_pytree_of_arrays() -> None:
  w = build.gaussian(np.random.default_rng(1), (3, 3, 2, 2))
  _, info = spatial(w, 1)
  assert isinstance(info, FitInfo)
  leaves = jax.tree.leaves(info)
  assert len(leaves) == 3 and all(leaf.shape == () for leaf in leaves)
  assert 0 < float(info.relative_error) < 1 and 0 < float(info.degeneracy) <= 1
