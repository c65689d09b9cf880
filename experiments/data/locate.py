"""Where dataset files are looked for, in order.

Data roots, highest priority first:

1. the ``data_dir`` argument, if given;
2. the ``EFFICONV_DATA`` environment variable, if set;
3. the user cache: ``$XDG_CACHE_HOME/efficonv``, else ``~/.cache/efficonv``.

Inside a root each dataset has its own folder (:attr:`DatasetSpec.folder`)::

  <root>/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
  <root>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
  <root>/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin
  <root>/cifar-10-binary.tar.gz          (the CIFAR-10 archive; unpacked into the folder above when needed)

Fashion-MNIST's files are also accepted directly in a root (``<root>/train-images-idx3-ubyte.gz``), and after
all roots the Debian package ``dataset-fashion-mnist``'s directory ``/usr/share/datasets/fashion-mnist`` is
searched. Downloads go to the first root (``data_dir`` if given, else ``EFFICONV_DATA`` if set, else the
cache).
"""

from __future__ import annotations

import os
from pathlib import Path

from experiments.data.specs import DatasetSpec

DATA_DIR_ENV = "EFFICONV_DATA"


def cache_dir() -> Path:
  """The user cache root: ``$XDG_CACHE_HOME/efficonv``, else ``~/.cache/efficonv``."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "efficonv"


def data_roots(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
  """The data roots in search order: ``data_dir``, ``$EFFICONV_DATA``, the user cache (duplicates dropped).

  Args:
    data_dir: explicit root, or ``None``.

  Returns:
    The roots; the first is where downloads go.
  """
  candidates = [data_dir, os.environ.get(DATA_DIR_ENV) or None, cache_dir()]
  roots: list[Path] = []
  for candidate in candidates:
    if candidate is None:
      continue
    root = Path(candidate).expanduser()
    if root not in roots:
      roots.append(root)
  return roots


def dataset_dirs(spec: DatasetSpec, roots: list[Path]) -> list[Path]:
  """The directories that may hold ``spec``'s files, in search order.

  Args:
    spec: the dataset.
    roots: data roots from :func:`data_roots`.

  Returns:
    For each root its ``spec.folder`` (and the root itself where ``spec.files_in_root``), then
    ``spec.system_dirs``.
  """
  directories: list[Path] = []
  for root in roots:
    directories.append(root / spec.folder)
    if spec.files_in_root:
      directories.append(root)
  directories.extend(Path(directory) for directory in spec.system_dirs)
  return directories
