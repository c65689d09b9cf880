"""Reading gzip-compressed IDX files (the MNIST file format) with numpy only.

An IDX file is a big-endian header followed by the raw array:

* magic number, 4 bytes: ``0x00 0x00 <type> <ndim>``; type ``0x08`` is unsigned byte, so images (3 dims) are
  ``0x00000803`` and labels (1 dim) ``0x00000801``;
* ``ndim`` sizes, 4 bytes each (big-endian unsigned);
* ``prod(sizes)`` data bytes, row-major.

Every check that fails raises :class:`DatasetError` naming the file, what was wrong, and what to do.

References:
  LeCun, Cortes, Burges, `The MNIST database of handwritten digits <http://yann.lecun.com/exdb/mnist/>`_.
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import IO

import numpy as np

from experiments.data.errors import DatasetError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# Far above any dataset read here (Fashion-MNIST train: 47 MB); guards against allocating what a corrupt
# header claims before noticing the data is not there.
MAX_DATA_BYTES = 1 << 31

_CHUNK = 1 << 20


def corrupt_file_error(path: str | os.PathLike[str], problem: str) -> DatasetError:
  """Builds the error for a file that exists but cannot be used.

  Args:
    path: the offending file.
    problem: what is wrong with it, e.g. ``"truncated: holds 10 of 784 data bytes"``.

  Returns:
    A :class:`DatasetError` whose message says how to recover.
  """
  return DatasetError(
    f"{os.fspath(path)}: {problem}. The file is truncated or corrupt: delete it and re-run to download a "
    "fresh copy, or point data_dir / the EFFICONV_DATA environment variable at a directory with intact files."
  )


def _read_exactly(stream: IO[bytes], size: int, path: str | os.PathLike[str], what: str) -> bytes:
  data = stream.read(size)
  if len(data) != size:
    raise corrupt_file_error(path, f"truncated: ends inside the IDX header ({what})")
  return data


def read_idx(path: str | os.PathLike[str], *, magic: int) -> np.ndarray:
  """Reads one gzip-compressed unsigned-byte IDX file.

  Args:
    path: the ``.gz`` file.
    magic: the magic number the file must start with: :data:`IMAGES_MAGIC` or :data:`LABELS_MAGIC`.

  Returns:
    ``uint8`` array whose shape is the header's sizes: ``(N, rows, cols)`` for images, ``(N,)`` for labels.

  Raises:
    DatasetError: the file is not gzip, is truncated, has the wrong magic number, or holds more or fewer
      bytes than its header promises.
  """
  try:
    with gzip.open(path, "rb") as stream:
      got_magic = int.from_bytes(_read_exactly(stream, 4, path, "magic number"), "big")
      if got_magic != magic:
        raise corrupt_file_error(path, f"wrong IDX magic number 0x{got_magic:08x}, expected 0x{magic:08x}")
      ndim = magic & 0xFF
      sizes = tuple(int(s) for s in np.frombuffer(_read_exactly(stream, 4 * ndim, path, "sizes"), ">u4"))
      num_bytes = int(np.prod(sizes, dtype=np.int64))
      if num_bytes > MAX_DATA_BYTES:
        raise corrupt_file_error(path, f"header claims an array of shape {sizes}, which is implausibly large")
      data = np.empty(num_bytes, np.uint8)
      view = memoryview(data)
      filled = 0
      while filled < num_bytes:
        got = stream.readinto(view[filled : filled + _CHUNK])
        if not got:
          raise corrupt_file_error(
            path,
            f"truncated: holds {filled} of the {num_bytes} data bytes its header (shape {sizes}) promises",
          )
        filled += got
      if stream.read(1):
        raise corrupt_file_error(path, f"has data beyond the {num_bytes} bytes its header (shape {sizes}) promises")
  except (gzip.BadGzipFile, EOFError, zlib.error) as error:
    raise corrupt_file_error(path, f"not a valid gzip file ({error})") from error
  return data.reshape(sizes)


def read_idx_images(path: str | os.PathLike[str], *, image_size: tuple[int, int]) -> np.ndarray:
  """Reads an IDX image file into NHWC layout.

  Args:
    path: the ``*-images-idx3-ubyte.gz`` file.
    image_size: the expected ``(rows, cols)``.

  Returns:
    ``uint8`` images of shape ``(N, rows, cols, 1)``.
  """
  images = read_idx(path, magic=IMAGES_MAGIC)
  if images.shape[1:] != tuple(image_size):
    raise corrupt_file_error(path, f"images are {images.shape[1:]} pixels, expected {tuple(image_size)}")
  return images[..., None]


def read_idx_labels(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads an IDX label file.

  Args:
    path: the ``*-labels-idx1-ubyte.gz`` file.

  Returns:
    ``int32`` labels of shape ``(N,)``.
  """
  return read_idx(path, magic=LABELS_MAGIC).astype(np.int32)
