"""Tests of the Tensor-Train format: shape checks, modes and ranks, and counts by hand."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import efficonv


def _tt() -> efficonv.TT:
  # 3×3 kernel, in_modes (4, 4) → 16 channels, out_modes (4, 8) → 32, ranks (3, 2).
  return efficonv.TT(jnp.ones((3, 3, 3)), (jnp.ones((3, 4, 4, 2)), jnp.ones((2, 4, 8, 1))))


def test_properties() -> None:
  fmt = _tt()
  assert fmt.kernel_size == (3, 3)
  assert (fmt.in_modes, fmt.out_modes, fmt.rank) == ((4, 4), (4, 8), (3, 2))
  assert (fmt.in_features, fmt.out_features) == (16, 32)
  assert fmt.has_depthwise


def test_cores_given_as_a_list_become_a_tuple() -> None:
  fmt = efficonv.TT(jnp.ones((1, 3, 2)), [jnp.ones((2, 5, 3, 1))])
  assert isinstance(fmt.cores, tuple)
  assert (fmt.rank, fmt.in_features, fmt.out_features, fmt.kernel_size) == ((2,), 5, 3, (1, 3))


def test_params_and_macs_by_hand() -> None:
  fmt = _tt()
  assert fmt.params() == 3 * 3 * 3 + 3 * 4 * 4 * 2 + 2 * 4 * 8 * 1 == 187
  pix = 2 * 8 * 8  # SAME, stride 1 on 2×8×8
  spatial = pix * 3 * 3 * 16 * 3  # depthwise 3×3, multiplier r_0 = 3, over 16 channels
  # Core 1 contracts (c_1, r_0) of a (pix, c_1, c_2, r_0) tensor into (s_1, r_1): pix·c_2·(r_0·c_1)·(s_1·r_1).
  core1 = pix * 4 * (3 * 4) * (4 * 2)
  # Core 2 contracts (c_2, r_1) of (pix, c_2, s_1, r_1) into s_2: pix·s_1·(r_1·c_2)·s_2.
  core2 = pix * 4 * (2 * 4) * 8
  assert fmt.macs((2, 8, 8, 16)) == spatial + core1 + core2


@pytest.mark.parametrize(
  ("spatial", "cores", "match"),
  [
    ((3, 3, 2), [(3, 2, 1, 2), (2, 2, 5, 1)], r"^cores\[0\] must have left rank 2 \(previous core's right rank\)"),
    ((3, 3, 2), [(2, 2, 1, 3), (2, 2, 5, 1)], r"^cores\[1\] must have left rank 3"),
    ((3, 3, 2), [(2, 2, 1, 2), (2, 2, 5, 2)], r"^cores\[1\] must have right rank 1, got 2"),
    ((3, 3, 2), [], r"^cores must hold at least one channel core"),
    ((3, 3), [(2, 2, 1, 1)], r"^spatial must have 3 axes"),
    ((3, 3, 2), [(2, 2, 1)], r"^cores\[0\] must have 4 axes"),
  ],
)
def test_cores_must_chain(spatial: tuple, cores: list, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    efficonv.TT(jnp.zeros(spatial), tuple(jnp.zeros(c) for c in cores))


def test_cores_must_be_a_sequence() -> None:
  with pytest.raises(ValueError, match=r"^cores must be a sequence of arrays"):
    efficonv.TT(jnp.zeros((3, 3, 2)), 5)  # type: ignore[arg-type]
