"""What each supported dataset is made of: files, shapes, classes, statistics, download locations, digests."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"

_IDX_FILES = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# SHA-256 of the files as served at the canonical URLs, as published in tensorflow_datasets'
# url_checksums/{fashion_mnist,mnist,cifar10}.txt (the MNIST and CIFAR-10 digests are also quoted by many
# other projects). The Fashion-MNIST ones were checked against the Debian package `dataset-fashion-mnist`: its
# .gz files hold the same deflate streams, but Debian's strip-nondeterminism rewrote the gzip headers (dropped
# the file name, reset the mtime), so their own digests differ. Rebuilding the original headers (mtime
# 2017-08-31, name field restored) reproduces exactly these four digests (tested in tests/experiments).
_FASHION_MNIST_SHA256 = {
  "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
  "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
  "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
  "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
_MNIST_SHA256 = {
  "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
  "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
  "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
  "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_CIFAR10_SHA256 = {
  "cifar-10-binary.tar.gz": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
}


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetSpec:
  """Static description of one dataset.

  Attributes:
    name: canonical name, as passed to :func:`experiments.data.load`.
    title: human-readable name for messages.
    folder: subfolder of a data root that holds the files (for CIFAR-10 the folder the official archive
      unpacks to, so ``tar xzf cifar-10-binary.tar.gz -C <root>`` produces the expected layout).
    file_format: ``"idx"`` (gzip-compressed IDX, the MNIST format) or ``"cifar-bin"`` (CIFAR binary batches).
    files: split → the files making up that split (images then labels for IDX; the batch files for CIFAR).
    image_shape: ``(H, W, C)`` of one image.
    class_names: one name per class; ``len(class_names)`` is the number of classes.
    mean: per-channel mean of the training images scaled to ``[0, 1]``, length ``C``.
    std: per-channel standard deviation of the training images scaled to ``[0, 1]``, length ``C``.
    base_url: canonical download location; a file's URL is ``base_url + filename``.
    sha256: download file name → SHA-256 hex digest of the canonical file.
    archive: for datasets downloaded as one archive (CIFAR-10): its file name; ``None`` if each file in
      ``files`` is downloaded on its own.
    files_in_root: whether the files may also sit directly in a data root rather than in ``folder``. Only
      Fashion-MNIST allows it: MNIST's files have the same names, so a root can hold only one of them loose.
    system_dirs: directories where a system package installs the files directly (last in the search order).
  """

  name: str
  title: str
  folder: str
  file_format: str
  files: Mapping[str, tuple[str, ...]]
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  base_url: str
  sha256: Mapping[str, str]
  archive: str | None = None
  files_in_root: bool = False
  system_dirs: tuple[str, ...] = ()

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.files)

  def downloads(self, split: str) -> tuple[str, ...]:
    """The files to download to get ``split``: the archive if there is one, else the split's files."""
    return (self.archive,) if self.archive is not None else self.files[split]


SPECS: dict[str, DatasetSpec] = {
  "fashion_mnist": DatasetSpec(
    name="fashion_mnist",
    title="Fashion-MNIST",
    folder="fashion-mnist",
    file_format="idx",
    files=_IDX_FILES,
    image_shape=(28, 28, 1),
    class_names=(
      "T-shirt/top",
      "Trouser",
      "Pullover",
      "Dress",
      "Coat",
      "Sandal",
      "Shirt",
      "Sneaker",
      "Bag",
      "Ankle boot",
    ),
    # Computed from the 60000 training images (Debian's copy): 0.28604, 0.35302.
    mean=(0.2860,),
    std=(0.3530,),
    base_url=FASHION_MNIST_URL,
    sha256=_FASHION_MNIST_SHA256,
    files_in_root=True,
    system_dirs=("/usr/share/datasets/fashion-mnist",),
  ),
  "mnist": DatasetSpec(
    name="mnist",
    title="MNIST",
    folder="mnist",
    file_format="idx",
    files=_IDX_FILES,
    image_shape=(28, 28, 1),
    class_names=tuple(str(digit) for digit in range(10)),
    # The usual values (0.13066, 0.30811) over the 60000 training images.
    mean=(0.1307,),
    std=(0.3081,),
    base_url=MNIST_URL,
    sha256=_MNIST_SHA256,
  ),
  "cifar10": DatasetSpec(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-bin",
    file_format="cifar-bin",
    files={
      "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
      "test": ("test_batch.bin",),
    },
    image_shape=(32, 32, 3),
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    # Per-channel mean and standard deviation over all pixels of the 50000 training images. (The often-copied
    # std (0.2023, 0.1994, 0.2010) is the mean of per-image standard deviations, not the dataset's.)
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    base_url=CIFAR10_URL,
    sha256=_CIFAR10_SHA256,
    archive="cifar-10-binary.tar.gz",
  ),
}


def get_spec(name: str) -> DatasetSpec:
  """Looks up a dataset by name; ``-`` and ``_`` are interchangeable and case is ignored.

  Args:
    name: ``"fashion_mnist"``, ``"mnist"`` or ``"cifar10"``.

  Returns:
    The dataset's :class:`DatasetSpec`.
  """
  key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
  if key not in SPECS:
    raise ValueError(f"name must be one of {sorted(SPECS)}, got {name!r}")
  return SPECS[key]
