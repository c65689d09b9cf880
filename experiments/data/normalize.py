"""Scaling images to zero mean and unit variance with each dataset's statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.data.specs import get_spec


def normalize(images: jax.Array | np.ndarray, name: str) -> jax.Array | np.ndarray:
  """Converts ``uint8`` images to ``float32`` standardized with the dataset's per-channel statistics.

  .. math:: y = \\frac{x / 255 - \\mu_c}{\\sigma_c}

  numpy in, numpy out; a JAX array (or a tracer, inside ``jit``) in, a JAX array out. Apply it after
  :func:`experiments.data.augment.random_crop_flip` so padded pixels are black, as in the usual recipe.

  Args:
    images: ``(..., H, W, C)`` images with values in ``[0, 255]``.
    name: the dataset whose ``mean`` / ``std`` to use (:class:`~experiments.data.specs.DatasetSpec`).

  Returns:
    ``float32`` array of the same shape.
  """
  spec = get_spec(name)
  channels = len(spec.mean)
  if images.ndim < 1 or images.shape[-1] != channels:
    raise ValueError(
      f"images must have {channels} channel(s) in the last axis for {spec.title}, got shape {images.shape}"
    )
  xp = jnp if isinstance(images, jax.Array) else np
  shape = (1,) * (images.ndim - 1) + (channels,)
  mean = np.asarray(spec.mean, np.float32).reshape(shape)
  std = np.asarray(spec.std, np.float32).reshape(shape)
  return (images.astype(xp.float32) / np.float32(255.0) - mean) / std
