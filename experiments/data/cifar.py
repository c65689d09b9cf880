"""Reading the CIFAR-10 *binary* distribution (never the pickled one) and unpacking its archive safely.

Each ``.bin`` file is a sequence of 3073-byte records: one label byte, then the 32×32 red, green and blue
planes (1024 bytes each, row-major), i.e. the image in CHW layout.

References:
  Krizhevsky, `Learning Multiple Layers of Features from Tiny Images
  <https://www.cs.toronto.edu/~kriz/learning-features-2009-TR.pdf>`_, 2009;
  file layout: https://www.cs.toronto.edu/~kriz/cifar.html
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from experiments.data.idx import corrupt_file_error

IMAGE_SHAPE_CHW = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
  """Reads one CIFAR binary batch file.

  Args:
    path: a ``data_batch_*.bin`` or ``test_batch.bin`` file.

  Returns:
    ``(images, labels)``: ``uint8`` images of shape ``(N, 32, 32, 3)`` (NHWC) and ``int32`` labels ``(N,)``.

  Raises:
    DatasetError: the file is empty or its size is not a whole number of records.
  """
  size = os.path.getsize(path)
  if size == 0 or size % RECORD_BYTES:
    raise corrupt_file_error(
      path,
      f"has {size} bytes, not a positive multiple of the {RECORD_BYTES}-byte CIFAR record "
      "(1 label byte + 3×32×32 pixel bytes)",
    )
  records = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)
  labels = records[:, 0].astype(np.int32)
  images = records[:, 1:].reshape((-1, *IMAGE_SHAPE_CHW)).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def extract_members(
  archive: str | os.PathLike[str], members: Sequence[str], destination: str | os.PathLike[str]
) -> None:
  """Extracts the named regular files of a ``.tar.gz`` archive, each written atomically.

  Only the listed members are read, by name, and written under ``destination`` at their archive path; nothing
  else in the archive (links, absolute or ``..`` paths) is ever written. Each file goes to a temporary file in
  its target directory first and is moved into place with :func:`os.replace`, so an interrupted extraction
  leaves no partial file under the final name.

  Args:
    archive: the ``.tar.gz`` file.
    members: archive paths such as ``"cifar-10-batches-bin/test_batch.bin"``; they must be relative and free
      of ``..`` (checked).
    destination: directory the members' paths are relative to.

  Raises:
    DatasetError: the archive is not a valid gzip-compressed tar file or lacks one of the members.
  """
  destination = Path(destination)
  for member in members:
    if Path(member).is_absolute() or ".." in Path(member).parts:
      raise ValueError(f"members must be relative paths without '..', got {member!r}")
  wanted = set(members)
  try:
    # Stream mode: one sequential pass over the compressed archive, whatever the member order.
    with tarfile.open(archive, "r|gz") as tar:
      for info in tar:
        if info.name not in wanted:
          continue
        if not info.isfile():
          raise corrupt_file_error(archive, f"archive member {info.name!r} is not a regular file")
        source = tar.extractfile(info)
        assert source is not None  # regular files always have content
        with source:
          _write_atomically(source, destination / info.name)
        wanted.discard(info.name)
  except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as error:
    raise corrupt_file_error(archive, f"not a valid .tar.gz archive ({error})") from error
  if wanted:
    raise corrupt_file_error(archive, f"archive lacks {sorted(wanted)}")


def _write_atomically(source: IO[bytes], target: Path) -> None:
  """Copies ``source`` to a temporary file next to ``target``, then moves it into place; no partial file."""
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(
    dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False
  ) as temporary:
    try:
      shutil.copyfileobj(source, temporary)
    except BaseException:
      temporary.close()
      with contextlib.suppress(OSError):
        os.unlink(temporary.name)
      raise
  os.replace(temporary.name, target)
