"""Loading a dataset split into numpy arrays, downloading it first if needed."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from experiments.data.cifar import extract_members, read_cifar_batch
from experiments.data.download import expected_sha256, fetch, file_url, sha256_file
from experiments.data.errors import DatasetError
from experiments.data.idx import corrupt_file_error, read_idx_images, read_idx_labels
from experiments.data.locate import DATA_DIR_ENV, data_roots, dataset_dirs
from experiments.data.specs import DatasetSpec, get_spec

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """One split of a dataset, in memory.

  Attributes:
    images: ``uint8`` images, NHWC: ``(N, 28, 28, 1)`` (Fashion-MNIST, MNIST) or ``(N, 32, 32, 3)``
      (CIFAR-10).
    labels: ``int32`` class indices in ``[0, num_classes)``, shape ``(N,)``.
    num_classes: number of classes.
    name: canonical dataset name (``"fashion_mnist"``, ``"mnist"``, ``"cifar10"``).
    split: ``"train"`` or ``"test"``.
    source: directory the files were read from.
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str
  split: str
  source: Path

  def __len__(self) -> int:
    return int(self.labels.shape[0])


def load(
  name: str,
  split: str = "train",
  *,
  data_dir: str | os.PathLike[str] | None = None,
  download: bool = True,
  base_url: str | None = None,
  checksums: Mapping[str, str] | None = None,
) -> Dataset:
  """Loads one split of Fashion-MNIST, MNIST or CIFAR-10 (downloading it if missing and allowed).

  Search order and layout are described in :mod:`experiments.data.locate`: the first directory holding all of
  the split's files wins (for CIFAR-10 a root holding the archive ``cifar-10-binary.tar.gz`` also counts: the
  archive is verified and unpacked next to it). A file that is found but corrupt is an error, not skipped.
  If nothing is found and ``download`` is true, the split's files (CIFAR-10: the archive) are downloaded into
  the first data root, each verified against its SHA-256.

  Args:
    name: ``"fashion_mnist"``, ``"mnist"`` or ``"cifar10"`` (``-`` for ``_`` and any case accepted).
    split: ``"train"`` or ``"test"``.
    data_dir: data root searched first (and downloaded into); ``None`` to start at ``$EFFICONV_DATA``.
    download: whether to download missing files.
    base_url: mirror root used instead of the canonical URLs (see :func:`experiments.data.download.file_url`);
      ``None`` to use ``$EFFICONV_DATA_URL`` if set, else the canonical URLs.
    checksums: file name → SHA-256 hex digest, overriding the built-in digests (for mirrors serving other
      files, and tests).

  Returns:
    The split as a :class:`Dataset`.

  Raises:
    ValueError: unknown ``name`` or ``split``.
    DatasetError: the files are missing (and ``download`` is false), corrupt, or could not be downloaded.
  """
  spec = get_spec(name)
  if split not in spec.files:
    raise ValueError(f"split must be one of {list(spec.splits)}, got {split!r}")
  roots = data_roots(data_dir)
  directory = _find(spec, split, roots, checksums)
  if directory is None:
    if not download:
      raise DatasetError(_missing_message(spec, split, roots))
    directory = _download(spec, split, roots[0], base_url, checksums)
  images, labels = _read(spec, split, directory)
  return Dataset(images, labels, spec.num_classes, spec.name, split, directory)


def _has_files(directory: Path, files: tuple[str, ...]) -> bool:
  return all((directory / filename).is_file() for filename in files)


def _find(spec: DatasetSpec, split: str, roots: list[Path], checksums: Mapping[str, str] | None) -> Path | None:
  """The first directory holding the split's files, unpacking a found CIFAR-10 archive on the way."""
  files = spec.files[split]
  for directory in dataset_dirs(spec, roots):
    if _has_files(directory, files):
      return directory
    root = directory.parent
    if spec.archive is not None and directory.name == spec.folder and (root / spec.archive).is_file():
      _unpack(spec, root / spec.archive, root, checksums)
      return directory
  return None


def _unpack(spec: DatasetSpec, archive: Path, root: Path, checksums: Mapping[str, str] | None) -> None:
  assert spec.archive is not None
  want = expected_sha256(spec, spec.archive, checksums)
  got = sha256_file(archive)
  if got != want:
    raise corrupt_file_error(archive, f"SHA-256 is {got}, expected {want}")
  logger.info("Unpacking %s into %s", archive, root)
  members = [f"{spec.folder}/{filename}" for split_files in spec.files.values() for filename in split_files]
  extract_members(archive, members, root)


def _download(
  spec: DatasetSpec, split: str, root: Path, base_url: str | None, checksums: Mapping[str, str] | None
) -> Path:
  directory = root / spec.folder
  if spec.archive is not None:
    archive = fetch(
      file_url(spec, spec.archive, base_url),
      root / spec.archive,
      sha256=expected_sha256(spec, spec.archive, checksums),
    )
    _unpack(spec, archive, root, checksums)
    return directory
  for filename in spec.files[split]:
    if not (directory / filename).is_file():
      fetch(
        file_url(spec, filename, base_url),
        directory / filename,
        sha256=expected_sha256(spec, filename, checksums),
      )
  return directory


def _read(spec: DatasetSpec, split: str, directory: Path) -> tuple[np.ndarray, np.ndarray]:
  files = [directory / filename for filename in spec.files[split]]
  if spec.file_format == "idx":
    images_path, labels_path = files
    images = read_idx_images(images_path, image_size=spec.image_shape[:2])
    labels = _checked_labels(spec, labels_path, read_idx_labels(labels_path))
    if images.shape[0] != labels.shape[0]:
      raise corrupt_file_error(
        labels_path, f"holds {labels.shape[0]} labels but {images_path.name} holds {images.shape[0]} images"
      )
    return images, labels
  parts = [read_cifar_batch(path) for path in files]
  for path, (_, labels) in zip(files, parts):
    _checked_labels(spec, path, labels)
  if len(parts) == 1:
    return parts[0]
  return np.concatenate([images for images, _ in parts]), np.concatenate([labels for _, labels in parts])


def _checked_labels(spec: DatasetSpec, path: Path, labels: np.ndarray) -> np.ndarray:
  if labels.size and int(labels.max()) >= spec.num_classes:
    raise corrupt_file_error(path, f"has label {int(labels.max())}, but {spec.title} has {spec.num_classes} classes")
  return labels


def _missing_message(spec: DatasetSpec, split: str, roots: list[Path]) -> str:
  looked = "\n".join(f"  {directory}" for directory in dataset_dirs(spec, roots))
  archive = f" (or the archive {spec.archive} in a data root)" if spec.archive else ""
  return (
    f"{spec.title} {split} split not found: looked for {', '.join(spec.files[split])}{archive} in\n{looked}\n"
    f"Allow downloading (download=True), put the files in one of these directories, or set {DATA_DIR_ENV} "
    f"to a directory holding {spec.folder}/."
  )
