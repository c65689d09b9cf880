"""The calling-convention benchmark: its three calls run one program and agree."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.bench.dispatch import calls
from experiments.common.config import load
from experiments.models import build_model


def test_the_three_calls_compute_the_same_outputs() -> None:
  cfg = load("compare_fashion_mnist", "tiny")
  shape = tuple(cfg.data.synthetic_shape)
  model = build_model(cfg.model, shape, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, *shape)), jnp.float32)
  found = calls(model, x)
  assert list(found) == ["predict", "compiled", "flat"]
  outputs = [np.asarray(fn(*args)) for fn, args in found.values()]
  assert outputs[0].shape == (2, cfg.model.num_classes)
  for other in outputs[1:]:
    np.testing.assert_allclose(other, outputs[0], rtol=1e-5, atol=1e-6)
