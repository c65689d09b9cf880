"""Data for the experiments: Fashion-MNIST, MNIST and CIFAR-10 as numpy arrays, batching, augmentation.

Quick use::

  from experiments import data

  train = data.load("cifar10", "train")                  # Dataset: uint8 (50000, 32, 32, 3), int32 labels
  for images, labels in data.batches(train.images, train.labels, 128, seed=0, epoch=epoch):
    images = data.random_crop_flip(key, images)            # jax, per-example crop + flip
    x = data.normalize(images, "cifar10")                  # float32, standardized

Files are read with numpy only (IDX via gzip; CIFAR-10 from its *binary* distribution, never pickles). Where
files are looked for and where downloads go is described in :mod:`experiments.data.locate`: ``data_dir``, then
``$EFFICONV_DATA``, then ``$XDG_CACHE_HOME/efficonv`` (``~/.cache/efficonv``), then, for Fashion-MNIST,
``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``). Downloads are checked
against SHA-256 digests and written atomically; ``$EFFICONV_DATA_URL`` points them at a mirror.
"""

from experiments.data.augment import crop_and_flip as crop_and_flip
from experiments.data.augment import random_crop_flip as random_crop_flip
from experiments.data.augment import sample_crop_flip as sample_crop_flip
from experiments.data.batching import batches as batches
from experiments.data.batching import epoch_permutation as epoch_permutation
from experiments.data.batching import num_batches as num_batches
from experiments.data.errors import DatasetError as DatasetError
from experiments.data.load import Dataset as Dataset
from experiments.data.load import load as load
from experiments.data.locate import cache_dir as cache_dir
from experiments.data.locate import data_roots as data_roots
from experiments.data.normalize import normalize as normalize
from experiments.data.specs import SPECS as SPECS
from experiments.data.specs import DatasetSpec as DatasetSpec
from experiments.data.specs import get_spec as get_spec
