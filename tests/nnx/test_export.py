"""``jax.export`` of every NNX layer: symbolic batch and spatial sizes, serialization, other platforms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import efficonv
from efficonv import nnx as enn

from ._layers import IN_FEATURES, LAYER_NAMES, build_compiled, make_layer, run_compiled


def _forward(layer: nnx.Module) -> tuple[Callable[[list[jax.Array], jax.Array], jax.Array], list[jax.Array]]:
  """The layer as a function of its flat parameter leaves (serializable, unlike nnx.State) and an input."""
  graphdef, state = nnx.split(layer)
  leaves, treedef = jax.tree.flatten(state)

  def forward(leaves: list[jax.Array], x: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(x)

  return forward, leaves


def _export(layer: nnx.Module, spec: str, **kwargs: Any) -> tuple[jax.export.Exported, list[jax.Array]]:
  """The layer exported for an input of the symbolic shape ``spec``."""
  forward, leaves = _forward(layer)
  x = jax.ShapeDtypeStruct(jax.export.symbolic_shape(spec), jnp.float32)
  return jax.export.export(jax.jit(forward), **kwargs)(leaves, x), leaves


def _roundtrip_matches(layer: nnx.Module, spec: str, shapes: list[tuple[int, ...]]) -> None:
  exported, leaves = _export(layer, spec)
  restored = jax.export.deserialize(exported.serialize())
  forward, _ = _forward(layer)
  for k, shape in enumerate(shapes):
    x = jax.random.normal(jax.random.key(k), shape)
    np.testing.assert_allclose(restored.call(leaves, x), run_compiled(forward, leaves, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_every_layer_exports_with_symbolic_batch_and_spatial_sizes_and_runs_after_a_round_trip(name: str) -> None:
  layer = make_layer(name)
  _roundtrip_matches(layer, f"b, h, w, {IN_FEATURES}", [(1, 10, 9, IN_FEATURES), (3, 7, 8, IN_FEATURES)])


def test_the_dense_conv_exports_with_symbolic_sizes_and_runs_after_a_round_trip() -> None:
  # 2×2 maps: the CPU rule runs im2col there, whose patch-array size depends on the (symbolic) batch.
  layer = build_compiled(lambda: enn.Conv(IN_FEATURES, 4, (3, 3), rngs=nnx.Rngs(0)))
  _roundtrip_matches(layer, f"b, h, w, {IN_FEATURES}", [(1, 2, 2, IN_FEATURES), (5, 6, 4, IN_FEATURES)])


def test_a_plan_on_a_symbolic_shape_names_the_stand_in() -> None:
  layer = build_compiled(lambda: enn.CPConv(IN_FEATURES, 4, 3, 2, rank=2, rngs=nnx.Rngs(0)))
  shape = jax.export.symbolic_shape(f"b, 9, 9, {IN_FEATURES}")
  assert f"planned for batch {efficonv.planning.SYMBOLIC_BATCH} (symbolic b)" in layer.plan(shape).reason
  with efficonv.planning.plan_for(batch=64):
    assert "planned for batch 64 (symbolic b)" in layer.plan(shape).reason


def test_symbolic_spatial_sizes_that_fix_no_padding_raise_a_value_error_naming_the_fix() -> None:
  strided = build_compiled(lambda: enn.CPConv(IN_FEATURES, 4, 3, 2, rank=2, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="pads that depend on the size"):
    _export(strided, f"b, h, w, {IN_FEATURES}")
  _export(strided, f"b, 2*h, 2*w, {IN_FEATURES}")  # SAME pads of an even size under stride 2 are fixed
  valid = build_compiled(lambda: enn.CPConv(IN_FEATURES, 4, 3, padding="VALID", rank=2, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="add the constraint 'h >= 3'"):
    _export(valid, f"b, h, 5, {IN_FEATURES}")


# 32 channels at rank 2 on 16×16 maps: the CPU plan is factorized with shift-and-add, the GPU plan reconstructed.
CROSS = {"in_features": 32, "out_features": 32, "kernel_size": 3, "rank": 2}
CROSS_SPEC = "b, 16, 16, 32"


def _cross(**options: Any) -> enn.CPConv:
  return build_compiled(lambda: enn.CPConv(**CROSS, **options, rngs=nnx.Rngs(0)))


def test_plans_differ_between_cpu_and_gpu_for_the_cross_platform_case() -> None:
  layer = _cross()
  cpu, gpu = (layer.format.plan((8, 16, 16, 32), backend=b) for b in ("cpu", "gpu"))
  assert (cpu.implementation, cpu.depthwise) == ("factorized", "shift")
  assert gpu.implementation == "reconstructed"


def test_exporting_for_a_platform_not_planned_for_raises_naming_plan_for() -> None:
  layer = _cross()
  for platforms in (("cuda",), ("cpu", "cuda")):
    with pytest.raises(ValueError, match=r"planned this conv for \('cpu',\).*plan_for"):
      _export(layer, CROSS_SPEC, platforms=platforms)


def test_exporting_for_cpu_and_cuda_plans_per_platform_and_runs_the_cpu_branch_here() -> None:
  layer = _cross()
  with efficonv.planning.plan_for(platforms=("cpu", "cuda")):
    exported, leaves = _export(layer, CROSS_SPEC, platforms=("cpu", "cuda"))
  assert exported.platforms == ("cpu", "cuda")
  text = exported.mlir_module()
  assert "stablehlo.case" in text and "stablehlo.convolution" in text  # a branch per platform: GPU's dense conv
  restored = jax.export.deserialize(exported.serialize())
  forward, _ = _forward(layer)
  for batch in (1, 3):
    x = jax.random.normal(jax.random.key(batch), (batch, 16, 16, 32))
    np.testing.assert_allclose(restored.call(leaves, x), run_compiled(forward, leaves, x), rtol=1e-5, atol=1e-5)


def test_exporting_for_cuda_alone_holds_the_gpu_plan_only() -> None:
  layer = _cross()
  with efficonv.planning.plan_for(platforms="cuda"):
    exported, _ = _export(layer, CROSS_SPEC, platforms=("cuda",))
  cpu, _ = _export(layer, CROSS_SPEC)
  # The GPU plan reconstructs the kernel and runs one dense conv; the CPU plan runs shift-and-add and matmuls.
  assert "stablehlo.case" not in exported.mlir_module()
  assert "stablehlo.convolution" in exported.mlir_module()
  assert "stablehlo.convolution" not in cpu.mlir_module()


def test_forced_implementations_export_for_any_platform_without_plan_for() -> None:
  layer = _cross(implementation="factorized", depthwise_implementation="xla")
  exported, _ = _export(layer, CROSS_SPEC, platforms=("cuda", "tpu"))
  assert exported.platforms == ("cuda", "tpu")


def test_autotune_cannot_plan_for_a_platform_without_a_device_here() -> None:
  layer = _cross(implementation="autotune")
  with efficonv.planning.plan_for(platforms="cuda"), pytest.raises(ValueError, match=r"autotune.*no 'gpu' device"):
    _export(layer, CROSS_SPEC, platforms=("cuda",))


def test_the_dense_conv_plans_per_platform_too() -> None:
  layer = build_compiled(lambda: enn.Conv(8, 8, (3, 3), rngs=nnx.Rngs(0)))  # 2×2 maps: im2col on CPU, XLA's conv on GPU
  with pytest.raises(ValueError, match="planned this conv for"):
    _export(layer, "b, 2, 2, 8", platforms=("cuda",))
  with efficonv.planning.plan_for(platforms="cuda"):
    exported, _ = _export(layer, "b, 2, 2, 8", platforms=("cuda",))
  assert "stablehlo.convolution" in exported.mlir_module()
  assert "stablehlo.convolution" not in _export(layer, "b, 2, 2, 8")[0].mlir_module()


def test_a_gradient_exports_with_a_symbolic_batch() -> None:
  # Shift-and-add forced: its kernel gradient tiles the batch when the batch is concrete.
  layer = _cross(implementation="factorized", depthwise_implementation="shift")
  forward, leaves = _forward(layer)
  grad = jax.jit(jax.grad(lambda leaves, x: jnp.sum(forward(leaves, x) ** 2)))
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(CROSS_SPEC), jnp.float32)
  restored = jax.export.deserialize(jax.export.export(grad)(leaves, spec).serialize())
  for batch in (1, 2):
    x = jax.random.normal(jax.random.key(batch), (batch, 16, 16, 32))
    for got, want in zip(restored.call(leaves, x), grad(leaves, x)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
