"""Tests of the dense reconstructions against their formulas, summed term by term in NumPy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from efficonv.kernels import cp_to_dense, separable_to_dense, spatial_to_dense, tt_to_dense, tucker2_to_dense


def _normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
  return rng.standard_normal(shape)


def _close(actual: object, expected: np.ndarray) -> None:
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5, atol=1e-5)


def test_spatial() -> None:
  rng = np.random.default_rng(0)
  kh, kw, cin, k, cout = 3, 2, 4, 3, 5
  v, h = _normal(rng, kh, cin, k), _normal(rng, kw, k, cout)
  expected = np.zeros((kh, kw, cin, cout))
  for x, y, c, s in itertools.product(range(kh), range(kw), range(cin), range(cout)):
    expected[x, y, c, s] = sum(v[x, c, r] * h[y, r, s] for r in range(k))
  _close(spatial_to_dense(v.astype(np.float32), h.astype(np.float32), precision="highest"), expected)


def test_cp() -> None:
  rng = np.random.default_rng(1)
  kh, kw, cin, rank, cout = 2, 3, 4, 3, 5
  first, vert, horiz, last = (_normal(rng, cin, rank), _normal(rng, kh, rank), _normal(rng, kw, rank),
                              _normal(rng, rank, cout))  # fmt: skip
  expected = np.zeros((kh, kw, cin, cout))
  for x, y, c, s in itertools.product(range(kh), range(kw), range(cin), range(cout)):
    expected[x, y, c, s] = sum(first[c, r] * vert[x, r] * horiz[y, r] * last[r, s] for r in range(rank))
  args = [a.astype(np.float32) for a in (first, vert, horiz, last)]
  _close(cp_to_dense(*args, precision="highest"), expected)


def test_tucker2() -> None:
  rng = np.random.default_rng(2)
  kh, kw, cin, r1, r2, cout = 3, 1, 4, 2, 3, 5
  first, core, last = _normal(rng, cin, r1), _normal(rng, kh, kw, r1, r2), _normal(rng, r2, cout)
  expected = np.zeros((kh, kw, cin, cout))
  for x, y, c, s in itertools.product(range(kh), range(kw), range(cin), range(cout)):
    expected[x, y, c, s] = sum(first[c, a] * core[x, y, a, b] * last[b, s] for a in range(r1) for b in range(r2))
  args = [a.astype(np.float32) for a in (first, core, last)]
  _close(tucker2_to_dense(*args, precision="highest"), expected)


@pytest.mark.parametrize("multiplier", [1, 3])
def test_separable_channel_order(multiplier: int) -> None:
  # Pointwise row c·m + j belongs to input channel c and multiplier index j (lax's grouped-conv order).
  rng = np.random.default_rng(3)
  kh, kw, cin, cout = 2, 3, 4, 5
  dw, pw = _normal(rng, kh, kw, cin, multiplier), _normal(rng, cin * multiplier, cout)
  expected = np.zeros((kh, kw, cin, cout))
  for x, y, c, s in itertools.product(range(kh), range(kw), range(cin), range(cout)):
    expected[x, y, c, s] = sum(dw[x, y, c, j] * pw[c * multiplier + j, s] for j in range(multiplier))
  _close(separable_to_dense(dw.astype(np.float32), pw.astype(np.float32), precision="highest"), expected)


@pytest.mark.parametrize(
  ("in_modes", "out_modes", "ranks"),
  [((4,), (3,), (2,)), ((2, 3), (3, 2), (2, 3)), ((2, 1, 3), (1, 2, 2), (2, 3, 2))],
)
def test_tt_channel_order(in_modes: tuple, out_modes: tuple, ranks: tuple) -> None:
  # Channel c = ravel(c_1..c_d) in C order (c_d fastest), likewise s.
  rng = np.random.default_rng(4)
  kh, kw, d = 2, 3, len(in_modes)
  full = (*ranks, 1)
  spatial = _normal(rng, kh, kw, ranks[0])
  cores = [_normal(rng, full[k], in_modes[k], out_modes[k], full[k + 1]) for k in range(d)]
  cin, cout = int(np.prod(in_modes)), int(np.prod(out_modes))
  expected = np.zeros((kh, kw, cin, cout))
  for x, y in itertools.product(range(kh), range(kw)):
    for cs in itertools.product(*(range(m) for m in in_modes)):
      for ss in itertools.product(*(range(m) for m in out_modes)):
        chain = spatial[x, y, :][None, :]  # (1, r_0)
        for k in range(d):
          chain = chain @ cores[k][:, cs[k], ss[k], :]
        c = int(np.ravel_multi_index(cs, in_modes))
        s = int(np.ravel_multi_index(ss, out_modes))
        expected[x, y, c, s] = chain[0, 0]
  out = tt_to_dense(spatial.astype(np.float32), [g.astype(np.float32) for g in cores], precision="highest")
  assert out.shape == (kh, kw, cin, cout)
  _close(out, expected)
