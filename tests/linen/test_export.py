"""``jax.export`` of every Linen layer with symbolic batch and spatial sizes, serialized and run again."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen

from efficonv import linen as eln

IN_FEATURES, FEATURES = 6, 4  # TT: in_modes (2, 3), out_modes (2, 2)
LAYERS: dict[str, linen.Module] = {
  "CPConv": eln.CPConv(features=FEATURES, kernel_size=(3, 2), rank=3),
  "TuckerConv": eln.TuckerConv(features=FEATURES, kernel_size=(3, 2), rank=(3, 2)),
  "SpatialConv": eln.SpatialConv(features=FEATURES, kernel_size=(3, 2), rank=3),
  "SeparableConv": eln.SeparableConv(features=FEATURES, kernel_size=(3, 2), depth_multiplier=2),
  "TTConv": eln.TTConv(features=FEATURES, kernel_size=(3, 2), rank=(2, 3), in_modes=(2, 3), out_modes=(2, 2)),
  "Bottleneck": eln.Bottleneck(features=FEATURES, kernel_size=(3, 2), width=(3, 5)),
  "StackedConv": eln.StackedConv(features=FEATURES, kernel_size=(5, 3), small_kernel_size=(3, 2)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_every_linen_layer_exports_with_symbolic_sizes_and_runs_after_a_round_trip(name: str) -> None:
  module = LAYERS[name]
  params = jax.jit(module.init)(jax.random.key(0), jnp.ones((1, 8, 8, IN_FEATURES)))["params"]

  @jax.jit
  def forward(params: Any, x: jax.Array) -> jax.Array:
    return module.apply({"params": params}, x)

  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"b, h, w, {IN_FEATURES}"), jnp.float32)
  exported = jax.export.export(forward)(params, spec)
  restored = jax.export.deserialize(exported.serialize())
  for k, shape in enumerate([(1, 10, 9, IN_FEATURES), (3, 7, 8, IN_FEATURES)]):
    x = jax.random.normal(jax.random.key(k), shape)
    np.testing.assert_allclose(restored.call(params, x), forward(params, x), rtol=1e-5, atol=1e-5)
