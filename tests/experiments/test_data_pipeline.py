"""Tests for experiments.data batching, normalization and augmentation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import data

# --- batching -----------------------------------------------------------------------------------------------


def _ids(count: int) -> tuple[np.ndarray, np.ndarray]:
  """Images whose only pixel is the example's id, and labels equal to it, so batches can be traced back."""
  ids = np.arange(count)
  return ids.reshape(count, 1, 1, 1).astype(np.int64), ids


def test_epoch_order_is_the_documented_permutation() -> None:
  np.testing.assert_array_equal(
    data.epoch_permutation(50, seed=3, epoch=2), np.random.default_rng([3, 2]).permutation(50)
  )


def test_batches_cover_the_epoch_once() -> None:
  images, labels = _ids(23)
  got = list(data.batches(images, labels, 5, seed=1, epoch=0, drop_remainder=False))
  assert [batch_labels.shape[0] for _, batch_labels in got] == [5, 5, 5, 5, 3]
  seen = np.concatenate([batch_labels for _, batch_labels in got])
  np.testing.assert_array_equal(np.sort(seen), labels)
  np.testing.assert_array_equal(seen, data.epoch_permutation(23, seed=1, epoch=0))
  for batch_images, batch_labels in got:
    np.testing.assert_array_equal(batch_images[:, 0, 0, 0], batch_labels)  # pairs stay together


def test_drop_remainder_gives_full_distinct_batches() -> None:
  images, labels = _ids(23)
  got = [batch_labels for _, batch_labels in data.batches(images, labels, 5, seed=1)]
  assert len(got) == data.num_batches(23, 5) == 4
  assert all(batch.shape == (5,) for batch in got)
  assert np.unique(np.concatenate(got)).size == 20


def test_same_seed_and_epoch_same_order_other_epoch_other_order() -> None:
  images, labels = _ids(40)

  def order(seed: int, epoch: int) -> np.ndarray:
    return np.concatenate([batch for _, batch in data.batches(images, labels, 8, seed=seed, epoch=epoch)])

  np.testing.assert_array_equal(order(0, 3), order(0, 3))
  assert not np.array_equal(order(0, 3), order(0, 4))
  assert not np.array_equal(order(0, 3), order(1, 3))


def test_start_batch_resumes_mid_epoch() -> None:
  images, labels = _ids(30)
  full = [batch for _, batch in data.batches(images, labels, 4, seed=7, epoch=5, drop_remainder=False)]
  resumed = [
    batch for _, batch in data.batches(images, labels, 4, seed=7, epoch=5, drop_remainder=False, start_batch=3)
  ]
  assert len(resumed) == len(full) - 3
  for expected, got in zip(full[3:], resumed):
    np.testing.assert_array_equal(got, expected)
  assert list(data.batches(images, labels, 4, seed=7, epoch=5, start_batch=7)) == []


def test_no_shuffle_keeps_stored_order() -> None:
  images, labels = _ids(10)
  got = np.concatenate([batch for _, batch in data.batches(images, labels, 3, shuffle=False, drop_remainder=False)])
  np.testing.assert_array_equal(got, labels)


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
    (
      {"batch_size": 11},
      r"batch_size must be at most the number of examples \(10\) with drop_remainder=True, got 11",
    ),
    ({"batch_size": 3, "start_batch": 4}, r"start_batch must be in \[0, 3\]"),
    ({"batch_size": 3, "seed": -1}, "seed must be a non-negative integer, got -1"),
    ({"batch_size": 3, "epoch": 1.5}, "epoch must be a non-negative integer, got 1.5"),
  ],
)
def test_batching_rejects_bad_arguments(kwargs: dict, message: str) -> None:
  images, labels = _ids(10)
  with pytest.raises(ValueError, match=message):
    next(data.batches(images, labels, **kwargs))


def test_batching_rejects_mismatched_lengths() -> None:
  with pytest.raises(ValueError, match="labels must have as many entries as images"):
    next(data.batches(np.zeros((4, 2, 2, 1)), np.zeros(3), 2))


# --- normalization ------------------------------------------------------------------------------------------


def test_normalize_uses_the_dataset_statistics() -> None:
  spec = data.get_spec("cifar10")
  images = np.zeros((2, 4, 4, 3), np.uint8)
  images[1] = 255
  got = data.normalize(images, "cifar10")
  assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == images.shape
  mean, std = np.asarray(spec.mean), np.asarray(spec.std)
  np.testing.assert_allclose(got[0, 0, 0], -mean / std, rtol=1e-6)
  np.testing.assert_allclose(got[1, 3, 3], (1 - mean) / std, rtol=1e-6)


def test_normalize_jax_under_jit_matches_numpy() -> None:
  images = np.random.default_rng(0).integers(0, 256, (3, 5, 5, 1), dtype=np.uint8)
  got = jax.jit(lambda x: data.normalize(x, "mnist"))(jnp.asarray(images))
  assert isinstance(got, jax.Array) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), data.normalize(images, "mnist"), rtol=1e-6, atol=1e-6)


def test_normalize_checks_channels() -> None:
  with pytest.raises(ValueError, match=r"images must have 3 channel\(s\) in the last axis for CIFAR-10"):
    data.normalize(np.zeros((2, 32, 32, 1), np.uint8), "cifar10")


# --- augmentation -------------------------------------------------------------------------------------------


def _window(image: np.ndarray, offset: np.ndarray, padding: int) -> np.ndarray:
  """The (H, W) window at offset in the zero-padded image, computed with numpy."""
  height, width, _ = image.shape
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  row, column = (int(v) for v in offset)
  return padded[row : row + height, column : column + width]


@pytest.fixture(scope="module")
def cifar_like() -> np.ndarray:
  return np.random.default_rng(0).integers(1, 256, (32, 32, 32, 3), dtype=np.uint8)  # no zeros: padding shows


def test_crop_and_flip_is_a_shifted_mirrored_window(cifar_like: np.ndarray) -> None:
  image = cifar_like[0]
  for offset in ((0, 0), (8, 8), (1, 6), (4, 4)):
    for flip in (False, True):
      got = np.asarray(data.crop_and_flip(jnp.asarray(image), jnp.asarray(offset), jnp.asarray(flip), padding=4))
      expected = _window(image, np.asarray(offset), 4)
      np.testing.assert_array_equal(got, expected[:, ::-1] if flip else expected)
  # Offset (4, 4) without flip is the image itself; (0, 0) shifts it by 4 pixels, bringing in zero borders.
  centre = data.crop_and_flip(jnp.asarray(image), jnp.asarray((4, 4)), jnp.asarray(False))
  np.testing.assert_array_equal(np.asarray(centre), image)
  corner = np.asarray(data.crop_and_flip(jnp.asarray(image), jnp.asarray((0, 0)), jnp.asarray(False)))
  assert not corner[:4].any() and not corner[:, :4].any()
  np.testing.assert_array_equal(corner[4:, 4:], image[:-4, :-4])


def test_random_crop_flip_applies_the_sampled_draws(cifar_like: np.ndarray) -> None:
  key = jax.random.key(42)
  got = data.random_crop_flip(key, jnp.asarray(cifar_like))
  assert got.shape == cifar_like.shape and got.dtype == jnp.uint8
  offsets, flips = (np.asarray(a) for a in data.sample_crop_flip(key, cifar_like.shape[0]))
  assert flips.any() and not flips.all()  # both branches exercised (fails with probability 2^-31)
  for image, result, offset, flip in zip(cifar_like, np.asarray(got), offsets, flips):
    expected = _window(image, offset, 4)
    np.testing.assert_array_equal(result, expected[:, ::-1] if flip else expected)


def test_random_crop_flip_is_deterministic_per_key(cifar_like: np.ndarray) -> None:
  images = jnp.asarray(cifar_like, jnp.float32)
  first = data.random_crop_flip(jax.random.key(1), images)
  np.testing.assert_array_equal(np.asarray(first), np.asarray(data.random_crop_flip(jax.random.key(1), images)))
  assert not np.array_equal(np.asarray(first), np.asarray(data.random_crop_flip(jax.random.key(2), images)))
  assert first.dtype == jnp.float32


def test_sampled_offsets_span_the_padding() -> None:
  offsets, flips = data.sample_crop_flip(jax.random.key(0), 2000, padding=2)
  values, counts = np.unique(np.asarray(offsets), return_counts=True)
  np.testing.assert_array_equal(values, np.arange(5))
  assert counts.min() > 600  # about 800 each of 4000 draws
  assert 800 < int(np.asarray(flips).sum()) < 1200


def test_no_padding_and_no_flip_is_identity(cifar_like: np.ndarray) -> None:
  got = data.crop_and_flip(jnp.asarray(cifar_like[0]), jnp.asarray((0, 0)), jnp.asarray(False), padding=0)
  np.testing.assert_array_equal(np.asarray(got), cifar_like[0])


def test_random_crop_flip_checks_rank() -> None:
  with pytest.raises(ValueError, match=r"images must be \(N, H, W, C\), got shape \(32, 32, 3\)"):
    data.random_crop_flip(jax.random.key(0), jnp.zeros((32, 32, 3)))
