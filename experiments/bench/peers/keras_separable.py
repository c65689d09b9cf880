"""The Keras peer: ``keras.layers.SeparableConv2D`` on the JAX backend holding efficonv's separable factors.

Depth multipliers 1 and 4, channels last, called through ``stateless_call`` under ``jax.jit`` (forward, and
``jax.vjp`` for forward+backward, exactly as efficonv's layers are timed).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.bench.cases import Shape
from experiments.bench.peers.base import PeerUnavailableError, Timer, as_numpy, check_no_bias, record

KERAS_SCHEMES: tuple[str, ...] = ("separable_m1", "separable_m4")
"""efficonv schemes timed against ``keras.layers.SeparableConv2D``."""


def import_keras() -> Any:
  """Keras on the JAX backend.

  Raises:
    PeerUnavailableError: when Keras is not importable, or was imported before with another backend.
  """
  already = sys.modules.get("keras")
  if already is not None:
    backend = already.backend.backend()
    if backend != "jax":
      raise PeerUnavailableError(f"keras was already imported with the {backend!r} backend (the JAX backend is needed)")
    return already
  previous = os.environ.get("KERAS_BACKEND")
  os.environ["KERAS_BACKEND"] = "jax"
  try:
    import keras
  except ImportError as e:
    raise PeerUnavailableError(f"keras is not importable ({e})") from e
  finally:
    if previous is None:
      os.environ.pop("KERAS_BACKEND", None)
    else:
      os.environ["KERAS_BACKEND"] = previous
  if keras.backend.backend() != "jax":
    raise PeerUnavailableError(f"keras runs the {keras.backend.backend()!r} backend (the JAX backend is needed)")
  return keras


def keras_separable(keras: Any, layer: Any, input_shape: Sequence[int]) -> Any:
  """A built ``keras.layers.SeparableConv2D`` (channels last, no bias) holding efficonv ``layer``'s factors.

  Args:
    keras: the imported ``keras`` module (JAX backend).
    layer: an efficonv :class:`~efficonv.nnx.SeparableConv` (no bias).
    input_shape: NHWC.

  Returns:
    The Keras layer.
  """
  check_no_bias(layer)
  f = layer.format
  dw = as_numpy(f.depthwise)
  k = keras.layers.SeparableConv2D(
    layer.out_features,
    tuple(layer.kernel_size),
    padding="same",
    depth_multiplier=dw.shape[3],
    use_bias=False,
    data_format="channels_last",
  )
  k.build(tuple(input_shape))
  k.depthwise_kernel.assign(dw)
  k.pointwise_kernel.assign(as_numpy(f.pointwise)[None, None])
  return k


def run_keras(shape: Shape, layers: dict[str, Any], timer: Timer, seed: int) -> list[dict[str, Any]]:
  """Records of every :data:`KERAS_SCHEMES` scheme in ``layers``, both passes."""
  keras = import_keras()
  import jax
  import jax.numpy as jnp

  from experiments.bench.dense_baselines import PASSES, pass_args, with_pass
  from experiments.common.timing import compile_fn

  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(shape.input_shape, np.float32))
  cot = jnp.asarray(np.random.default_rng(1).standard_normal(shape.input_shape, np.float32))
  records = []
  for scheme in KERAS_SCHEMES:
    if scheme not in layers:
      continue
    k = keras_separable(keras, layers[scheme], shape.input_shape)
    trainable = [v.value for v in k.trainable_variables]
    frozen = [v.value for v in k.non_trainable_variables]

    def fn(x: Any, params: list[Any], k: Any = k, frozen: list[Any] = frozen) -> Any:
      return k.stateless_call(params, frozen, x)[0]

    for pass_name in PASSES:
      args = pass_args(x, trainable, pass_name, cot)
      compiled = compile_fn(with_pass(fn, pass_name), args)

      def call(compiled: Any = compiled, args: tuple[Any, ...] = args) -> Any:
        return jax.block_until_ready(compiled(*args))

      records.append(record("keras_jax", scheme, "sequence", "nhwc", shape, pass_name, timer(call)))
  return records
