"""A small learnable synthetic image dataset, for tests and dry runs of the experiments without data files.

Each class has a random smooth prototype image; an example is its class's prototype plus pixel noise, as
``uint8``. A small CNN separates the classes within a few dozen steps, so a training run on it shows a falling
loss, while nothing is read from disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.data import Dataset

SOURCE = Path("<synthetic>")


def synthetic_datasets(
  image_shape: tuple[int, int, int],
  num_train: int,
  num_test: int,
  *,
  num_classes: int = 10,
  seed: int = 0,
) -> tuple[Dataset, Dataset]:
  """Generates a train and a test split.

  The datasets are named after the real dataset with the same number of channels (``"fashion_mnist"`` for 1,
  ``"cifar10"`` for 3), so :func:`experiments.data.normalize` standardizes them with those statistics.

  Args:
    image_shape: ``(H, W, C)`` with ``C`` 1 or 3.
    num_train: training examples.
    num_test: test examples.
    num_classes: classes (labels are balanced: ``i % num_classes``, then shuffled).
    seed: the data depend only on this seed.

  Returns:
    ``(train, test)``: :class:`experiments.data.Dataset` with ``uint8`` images ``(N, H, W, C)`` and ``int32``
    labels ``(N,)``.

  Raises:
    ValueError: naming ``image_shape`` when ``C`` is not 1 or 3, or a count when it is not positive.
  """
  height, width, channels = (int(v) for v in image_shape)
  if channels not in (1, 3) or height < 4 or width < 4:
    raise ValueError(f"image_shape must be (H, W, 1) or (H, W, 3) with H, W >= 4, got {tuple(image_shape)}")
  for name, value in (("num_train", num_train), ("num_test", num_test), ("num_classes", num_classes)):
    if value < 1:
      raise ValueError(f"{name} must be positive, got {value}")
  rng = np.random.default_rng(seed)
  # Smooth prototypes: coarse random grids upsampled 4×, so the classes differ in shape, not pixel noise.
  coarse = rng.uniform(0.0, 255.0, (num_classes, -(-height // 4), -(-width // 4), channels))
  prototypes = coarse.repeat(4, axis=1).repeat(4, axis=2)[:, :height, :width]
  name = "fashion_mnist" if channels == 1 else "cifar10"

  def split(count: int, split_name: str) -> Dataset:
    labels = rng.permutation(np.arange(count) % num_classes).astype(np.int32)
    noise = rng.normal(0.0, 48.0, (count, height, width, channels))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return Dataset(images, labels, num_classes, name, split_name, SOURCE)

  return split(num_train, "train"), split(num_test, "test")
