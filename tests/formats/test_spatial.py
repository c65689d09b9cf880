"""Tests of the spatial (``kh×1`` then ``1×kw``) format: shape checks and counts by hand."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import efficonv


def test_properties() -> None:
  fmt = efficonv.Spatial(jnp.ones((5, 4, 3)), jnp.ones((2, 3, 7)))
  assert (fmt.kernel_size, fmt.in_features, fmt.out_features, fmt.rank) == ((5, 2), 4, 7, 3)
  assert not fmt.has_depthwise


def test_params_and_macs_by_hand() -> None:
  fmt = efficonv.Spatial(jnp.ones((3, 16, 5)), jnp.ones((3, 5, 32)))  # 16 → 32 channels, 3×3, rank 5
  assert fmt.params() == 3 * 16 * 5 + 3 * 5 * 32 == 720
  # SAME, stride 1 on 2×8×8: the 3×1 conv (16→5) runs on the 10-wide padded map (8×10 outputs), the 1×3 (5→32)
  # gives 8×8.
  assert fmt.macs((2, 8, 8, 16)) == 2 * 8 * 10 * 3 * 16 * 5 + 2 * 8 * 8 * 3 * 5 * 32
  # CIRCULAR, stride 2, dilation 2 on 2×9×9: extent 5, padded 13, (13 - 5) // 2 + 1 = 5 outputs per axis.
  assert fmt.macs((2, 9, 9, 16), strides=2, padding="CIRCULAR", dilation=2) == (
    2 * 5 * 13 * 3 * 16 * 5 + 2 * 5 * 5 * 3 * 5 * 32
  )


@pytest.mark.parametrize(
  ("shapes", "match"),
  [
    (((3, 4, 2), (3, 3, 5)), r"^horizontal must have rank 2 \(vertical's last axis\) in axis 1"),
    (((3, 4), (3, 4, 5)), r"^vertical must have 3 axes"),
    (((3, 4, 2), (2, 5)), r"^horizontal must have 3 axes"),
  ],
)
def test_factors_must_chain(shapes: tuple, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    efficonv.Spatial(*[jnp.zeros(s) for s in shapes])
