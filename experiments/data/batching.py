"""Epoch-aware, seeded mini-batching of in-memory arrays.

The order of epoch ``e`` depends only on ``(seed, e)``: it is
``np.random.default_rng([seed, e]).permutation(N)``. A run resumed from a checkpoint taken after ``k`` steps
of epoch ``e`` therefore continues exactly where it stopped with ``batches(..., epoch=e, start_batch=k)``, and
no random state needs to be saved.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator

import numpy as np


def _non_negative_int(name: str, value: int) -> int:
  try:
    value = operator.index(value)
  except TypeError:
    raise ValueError(f"{name} must be a non-negative integer, got {value!r}") from None
  if value < 0:
    raise ValueError(f"{name} must be a non-negative integer, got {value}")
  return value


def num_batches(num_examples: int, batch_size: int, *, drop_remainder: bool = True) -> int:
  """Number of batches in one epoch.

  .. math:: \\lfloor N / B \\rfloor \\text{ if drop\\_remainder else } \\lceil N / B \\rceil

  Args:
    num_examples: ``N``.
    batch_size: ``B``, at least 1.
    drop_remainder: whether the last, smaller batch is dropped.

  Returns:
    The number of batches.
  """
  num_examples = _non_negative_int("num_examples", num_examples)
  batch_size = _non_negative_int("batch_size", batch_size)
  if batch_size == 0:
    raise ValueError("batch_size must be at least 1, got 0")
  return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def epoch_permutation(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
  """The example order of one epoch: ``np.random.default_rng([seed, epoch]).permutation(num_examples)``.

  Args:
    num_examples: ``N``.
    seed: run seed, non-negative.
    epoch: epoch index, non-negative.

  Returns:
    ``int64`` permutation of ``range(N)``, shape ``(N,)``.
  """
  seed = _non_negative_int("seed", seed)
  epoch = _non_negative_int("epoch", epoch)
  return np.random.default_rng([seed, epoch]).permutation(_non_negative_int("num_examples", num_examples))


def batches(
  images: np.ndarray,
  labels: np.ndarray,
  batch_size: int,
  *,
  shuffle: bool = True,
  seed: int = 0,
  epoch: int = 0,
  drop_remainder: bool = True,
  start_batch: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Iterates over one epoch of ``(images, labels)`` batches.

  Args:
    images: ``(N, ...)`` array.
    labels: ``(N, ...)`` array.
    batch_size: ``B``, at least 1 (and at most ``N`` when ``drop_remainder``, so no epoch is empty).
    shuffle: visit the examples in the order :func:`epoch_permutation` gives; else in stored order.
    seed: run seed (ignored without ``shuffle``).
    epoch: epoch index (ignored without ``shuffle``).
    drop_remainder: drop the last batch if it has fewer than ``B`` examples, so all batches have one shape
      (no recompilation of a jitted step).
    start_batch: skip this many batches of the epoch (to resume mid-epoch), in ``[0, num_batches]``.

  Yields:
    ``(images[idx], labels[idx])`` for consecutive index blocks ``idx`` of length ``B`` (the last one possibly
    shorter when not ``drop_remainder``).
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim == 0 or labels.ndim == 0 or images.shape[0] != labels.shape[0]:
    raise ValueError(
      f"labels must have as many entries as images along axis 0, got images {images.shape} and labels {labels.shape}"
    )
  total = images.shape[0]
  count = num_batches(total, batch_size, drop_remainder=drop_remainder)
  if drop_remainder and count == 0:
    raise ValueError(
      f"batch_size must be at most the number of examples ({total}) with drop_remainder=True, got {batch_size}"
    )
  start_batch = _non_negative_int("start_batch", start_batch)
  if start_batch > count:
    raise ValueError(f"start_batch must be in [0, {count}] (the number of batches per epoch), got {start_batch}")
  order = epoch_permutation(total, seed=seed, epoch=epoch) if shuffle else None
  for index in range(start_batch, count):
    block = slice(index * batch_size, min((index + 1) * batch_size, total))
    if order is None:
      yield images[block], labels[block]
    else:
      selected = order[block]
      yield images[selected], labels[selected]
