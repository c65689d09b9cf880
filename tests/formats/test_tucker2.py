"""Tests of the Tucker-2 format: shape checks and counts by hand."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import efficonv


def _tucker2(cin: int = 16, r1: int = 4, r2: int = 6, cout: int = 32, kh: int = 3, kw: int = 3) -> efficonv.Tucker2:
  return efficonv.Tucker2(jnp.ones((cin, r1)), jnp.ones((kh, kw, r1, r2)), jnp.ones((r2, cout)))


def test_properties() -> None:
  fmt = _tucker2(cin=5, r1=2, r2=3, cout=7, kh=1, kw=3)
  assert (fmt.kernel_size, fmt.in_features, fmt.out_features, fmt.rank) == ((1, 3), 5, 7, (2, 3))
  assert not fmt.has_depthwise


def test_params_and_macs_by_hand() -> None:
  fmt = _tucker2()  # 16 → 32 channels, 3×3, ranks (4, 6)
  assert fmt.params() == 16 * 4 + 3 * 3 * 4 * 6 + 6 * 32 == 472
  # SAME, stride 1 on 2×8×8: 1×1 (16→4), 3×3 (4→6), 1×1 (6→32), all at 8×8.
  assert fmt.macs((2, 8, 8, 16)) == 2 * 8 * 8 * (16 * 4 + 3 * 3 * 4 * 6 + 6 * 32)
  # Stride 2, explicit ((1, 0), (0, 1)) on 2×8×8: (9 - 3) // 2 + 1 = 4 rows and columns after the first 1×1.
  assert fmt.macs((2, 8, 8, 16), strides=2, padding=((1, 0), (0, 1))) == (
    2 * 8 * 8 * 16 * 4 + 2 * 4 * 4 * 3 * 3 * 4 * 6 + 2 * 4 * 4 * 6 * 32
  )


@pytest.mark.parametrize(
  ("shapes", "match"),
  [
    (((4, 3), (3, 3, 2, 2), (2, 5)), r"^core must have 3 input channels \(first's rank R1\) in axis 2"),
    (((4, 3), (3, 3, 3, 2), (3, 5)), r"^last must have 2 rows \(core's output rank R2\)"),
    (((4, 3), (3, 3, 3), (3, 5)), r"^core must have 4 axes"),
    (((4,), (3, 3, 3, 2), (2, 5)), r"^first must have 2 axes, got shape \(4,\)"),
  ],
)
def test_factors_must_chain(shapes: tuple, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    efficonv.Tucker2(*[jnp.zeros(s) for s in shapes])
