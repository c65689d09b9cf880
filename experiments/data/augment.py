"""CIFAR-style augmentation in JAX: random crop of the zero-padded image and random horizontal flip.

Each example gets its own crop offset and flip draw; the whole batch is one jitted, vmapped call,
deterministic given the key. The split into :func:`sample_crop_flip` (randomness) and :func:`crop_and_flip`
(a pure function of the draws) lets either be tested or reused on its own.

References:
  He et al., `Deep Residual Learning for Image Recognition <https://arxiv.org/abs/1512.03385>`_, CVPR 2016,
  §4.2 (4-pixel padding, random 32×32 crops, horizontal flips).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from experiments.data.batching import _non_negative_int


def sample_crop_flip(key: jax.Array, num_examples: int, *, padding: int = 4) -> tuple[jax.Array, jax.Array]:
  """Draws per-example crop offsets and flip decisions.

  Args:
    key: PRNG key.
    num_examples: ``N``.
    padding: ``p``; offsets are uniform in ``[0, 2p]`` per axis.

  Returns:
    ``(offsets, flips)``: ``int32`` offsets ``(N, 2)`` as (row, column) into the padded image, and ``bool``
    flips ``(N,)``, each true with probability 1/2.
  """
  padding = _non_negative_int("padding", padding)
  offset_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(offset_key, (num_examples, 2), 0, 2 * padding + 1, dtype=jnp.int32)
  flips = jax.random.bernoulli(flip_key, 0.5, (num_examples,))
  return offsets, flips


def crop_and_flip(image: jax.Array, offset: jax.Array, flip: jax.Array, *, padding: int = 4) -> jax.Array:
  """Crops one zero-padded image at ``offset`` and mirrors it left-right if ``flip``.

  .. math:: y_{i,j,c} = \\tilde x_{r+i,\\; s+j',\\; c}, \\quad j' = W-1-j \\text{ if flip else } j

  where :math:`\\tilde x` is ``image`` with ``p`` zero rows/columns on every side and ``(r, s) = offset``.

  Args:
    image: ``(H, W, C)``.
    offset: ``(2,)`` integer (row, column) of the window's top-left corner in the padded image, each in
      ``[0, 2p]``.
    flip: scalar bool.
    padding: ``p``.

  Returns:
    ``(H, W, C)`` array of the input's dtype.
  """
  height, width, channels = image.shape
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  window = jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0), (height, width, channels))
  return jnp.where(flip, window[:, ::-1, :], window)


@functools.partial(jax.jit, static_argnames=("padding",))
def random_crop_flip(key: jax.Array, images: jax.Array, *, padding: int = 4) -> jax.Array:
  """Randomly crops (after ``padding`` pixels of zero padding) and horizontally flips each image.

  Equivalent to ``vmap(crop_and_flip)(images, *sample_crop_flip(key, N, padding=padding))``.

  Args:
    key: PRNG key; the same key gives the same output.
    images: ``(N, H, W, C)`` images, any dtype. Apply to raw ``uint8`` images, before
      :func:`experiments.data.normalize.normalize`, so the padding is black.
    padding: ``p``, pixels of zero padding on each side (4 for CIFAR).

  Returns:
    ``(N, H, W, C)`` array of the input's dtype.
  """
  if images.ndim != 4:
    raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
  offsets, flips = sample_crop_flip(key, images.shape[0], padding=padding)
  return jax.vmap(functools.partial(crop_and_flip, padding=padding))(images, offsets, flips)
