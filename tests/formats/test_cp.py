"""Tests of the CP format: shape checks, counts by hand, and the cost model's choice."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import efficonv


def _cp(cin: int = 16, rank: int = 4, cout: int = 32, kh: int = 3, kw: int = 3) -> efficonv.CP:
  return efficonv.CP(jnp.ones((cin, rank)), jnp.ones((kh, rank)), jnp.ones((kw, rank)), jnp.ones((rank, cout)))


def test_properties() -> None:
  fmt = _cp(cin=5, rank=3, cout=7, kh=3, kw=2)
  assert (fmt.kernel_size, fmt.in_features, fmt.out_features, fmt.rank) == ((3, 2), 5, 7, 3)
  assert fmt.dtype == jnp.float32
  assert fmt.has_depthwise


def test_params_and_macs_by_hand() -> None:
  fmt = _cp()  # 16 → 32 channels, 3×3, rank 4
  assert fmt.params() == 16 * 4 + 3 * 4 + 3 * 4 + 4 * 32 == 216
  assert fmt.dense_params() == 3 * 3 * 16 * 32
  # SAME, stride 1 on 2×8×8: the 1×1 runs on 8×8; the 3×1 depthwise on the 10-wide padded map gives 8×10;
  # the 1×3 gives 8×8; then the last 1×1.
  first, vertical, horizontal, last = 2 * 8 * 8 * 16 * 4, 2 * 8 * 10 * 4 * 3, 2 * 8 * 8 * 4 * 3, 2 * 8 * 8 * 4 * 32
  assert fmt.macs((2, 8, 8, 16)) == first + vertical + horizontal + last == 28032
  # VALID, stride 2 on 2×9×9: 4 output rows and columns, the vertical step keeps all 9 columns.
  first, vertical, horizontal, last = 2 * 9 * 9 * 16 * 4, 2 * 4 * 9 * 4 * 3, 2 * 4 * 4 * 4 * 3, 2 * 4 * 4 * 4 * 32
  assert fmt.macs((2, 9, 9, 16), strides=2, padding="VALID") == first + vertical + horizontal + last
  assert fmt.dense_macs((2, 9, 9, 16), strides=2, padding="VALID") == 2 * 4 * 4 * 3 * 3 * 16 * 32


@pytest.mark.parametrize(
  ("shapes", "match"),
  [
    (((4, 3), (3, 2), (3, 3), (3, 5)), r"^vertical must have rank 3 \(from first's shape \(4, 3\)\)"),
    (((4, 3), (3, 3), (2, 2), (3, 5)), r"^horizontal must have rank 3"),
    (((4, 3), (3, 3), (3, 3), (2, 5)), r"^last must have rank 3"),
    (((4,), (3, 3), (3, 3), (3, 5)), r"^first must have 2 axes, got shape \(4,\)"),
    (((4, 3), (3, 3, 1), (3, 3), (3, 5)), r"^vertical must have rank 3"),
    (((4, 3), (3, 3), (3, 3), (5,)), r"^last must have 2 axes"),
  ],
)
def test_factors_must_chain(shapes: tuple, match: str) -> None:
  with pytest.raises(ValueError, match=match):
    efficonv.CP(*[jnp.zeros(s) for s in shapes])


# 64 → 64 channels, 3×3, on 8×32×32: the reference layer.
_SHAPE = (8, 32, 32, 64)


def test_plan_picks_factorized_at_small_rank_on_cpu() -> None:
  plan = _cp(64, 8, 64).plan(_SHAPE, backend="cpu")
  assert plan.implementation == "factorized"
  assert plan.depthwise == "shift"
  assert plan.estimated_factorized_s < plan.estimated_reconstructed_s
  assert plan.mac_ratio > 10
  assert "auto on cpu" in plan.reason


def test_plan_picks_reconstructed_near_full_rank_on_cpu() -> None:
  fmt = _cp(64, 576, 64)  # 576 = 3·3·64, the rank of a generic 64→64 3×3 kernel's unfolding
  plan = fmt.plan(_SHAPE, backend="cpu")
  assert plan.implementation == "reconstructed"
  assert plan.depthwise is None
  assert plan.mac_ratio < 1
  assert plan.reason
  forced = fmt.plan(_SHAPE, implementation="factorized", backend="cpu")
  assert forced.implementation == "factorized"
  assert forced.reason
  assert forced.factorized_macs == plan.factorized_macs == fmt.macs(_SHAPE)


def test_plan_on_the_default_backend() -> None:
  fmt = _cp(64, 8, 64)
  assert fmt.plan(_SHAPE) == fmt.plan(_SHAPE, backend=jax.default_backend())
