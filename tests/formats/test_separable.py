"""Tests of the depthwise-separable format: shape checks and counts by hand."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import efficonv


def test_properties() -> None:
  fmt = efficonv.Separable(jnp.ones((3, 2, 4, 3)), jnp.ones((12, 7)))
  assert (fmt.kernel_size, fmt.in_features, fmt.out_features) == ((3, 2), 4, 7)
  assert fmt.depth_multiplier == fmt.rank == 3
  assert fmt.has_depthwise


def test_params_and_macs_by_hand() -> None:
  fmt = efficonv.Separable(jnp.ones((3, 3, 16, 2)), jnp.ones((32, 32)))  # 16 → 32 channels, 3×3, multiplier 2
  assert fmt.params() == 3 * 3 * 16 * 2 + 16 * 2 * 32 == 1312
  # SAME, stride 1 on 2×8×8: depthwise 3×3 over 32 = 16·2 channels, then 1×1 (32→32).
  assert fmt.macs((2, 8, 8, 16)) == 2 * 8 * 8 * 3 * 3 * 32 + 2 * 8 * 8 * 32 * 32
  # REFLECT, stride (2, 1) on 2×8×8: 4×8 outputs.
  assert fmt.macs((2, 8, 8, 16), strides=(2, 1), padding="REFLECT") == 2 * 4 * 8 * 3 * 3 * 32 + 2 * 4 * 8 * 32 * 32


@pytest.mark.parametrize(
  ("shapes", "match"),
  [
    (((3, 3, 4, 2), (7, 5)), r"^pointwise must have C_in·m = 4·2 = 8 rows"),
    (((3, 3, 4), (4, 5)), r"^depthwise must have 4 axes"),
    (((3, 3, 4, 1), (4,)), r"^pointwise must have 2 axes, got shape \(4,\)"),
  ],
)
def test_factors_must_chain(shapes: tuple, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    efficonv.Separable(*[jnp.zeros(s) for s in shapes])
