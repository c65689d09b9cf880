"""Downloading dataset files: SHA-256 verified, atomic, with an overridable base URL."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from experiments.data.errors import DatasetError
from experiments.data.specs import DatasetSpec

logger = logging.getLogger(__name__)

BASE_URL_ENV = "EFFICONV_DATA_URL"

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
  """Returns the SHA-256 hex digest of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as stream:
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def file_url(spec: DatasetSpec, filename: str, base_url: str | None = None) -> str:
  """The URL a dataset file is downloaded from.

  With no override this is the canonical ``spec.base_url + filename``. A mirror (``base_url``, else the
  ``EFFICONV_DATA_URL`` environment variable) is laid out by dataset name, like::

    <mirror>/fashion_mnist/train-images-idx3-ubyte.gz
    <mirror>/mnist/train-images-idx3-ubyte.gz
    <mirror>/cifar10/cifar-10-binary.tar.gz

  Args:
    spec: the dataset.
    filename: a file in ``spec.downloads(split)``.
    base_url: mirror root, e.g. ``"http://127.0.0.1:8000"`` or ``"file:///srv/datasets"``; ``None`` to use
      ``EFFICONV_DATA_URL`` if set, else the canonical location.

  Returns:
    The URL.
  """
  mirror = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
  if mirror is None:
    return spec.base_url + filename
  return f"{mirror.rstrip('/')}/{spec.name}/{filename}"


def expected_sha256(spec: DatasetSpec, filename: str, checksums: Mapping[str, str] | None = None) -> str:
  """The digest a downloaded file must have: ``checksums[filename]`` if given, else the spec's constant."""
  digests = {**spec.sha256, **(checksums or {})}
  if filename not in digests:
    raise ValueError(f"checksums must give a SHA-256 for {filename!r} (no known digest for it)")
  return digests[filename].lower()


def fetch(url: str, destination: str | os.PathLike[str], *, sha256: str, timeout: float = 60.0) -> Path:
  """Downloads ``url`` to ``destination`` if and only if its content has the given SHA-256.

  The bytes go to a temporary file in the destination's directory, are hashed on the way, and only a file
  with the right digest is moved into place (:func:`os.replace`, atomic on POSIX). On any failure, including
  an interrupt, the temporary file is removed: no partial or corrupt file is ever left under either name.

  Args:
    url: what to download (``http(s)://`` or ``file://``).
    destination: final path of the file; its directory is created if needed.
    sha256: expected hex digest.
    timeout: socket timeout in seconds.

  Returns:
    ``destination`` as a :class:`~pathlib.Path`.

  Raises:
    DatasetError: the download failed or its digest does not match (the message names the URL, the expected
      and the received digest).
  """
  destination = Path(destination)
  destination.parent.mkdir(parents=True, exist_ok=True)
  logger.info("Downloading %s to %s", url, destination)
  temporary = tempfile.NamedTemporaryFile(
    dir=destination.parent, prefix=f".{destination.name}.", suffix=".part", delete=False
  )
  try:
    digest = hashlib.sha256()
    with temporary:
      try:
        request = urllib.request.Request(url, headers={"User-Agent": "efficonv-experiments"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
          for chunk in iter(lambda: response.read(_CHUNK), b""):
            digest.update(chunk)
            temporary.write(chunk)
      except (urllib.error.URLError, OSError) as error:
        raise DatasetError(
          f"Could not download {url}: {error}. Check the network, set {BASE_URL_ENV} to a mirror, or "
          f"download the file by hand and put it at {destination} (or under a directory named by "
          "EFFICONV_DATA)."
        ) from error
      temporary.flush()
      os.fsync(temporary.fileno())
    got = digest.hexdigest()
    if got != sha256.lower():
      raise DatasetError(
        f"Download of {url} is corrupt: expected SHA-256 {sha256.lower()}, got {got}. Nothing was saved; "
        "re-run to try again, or use another mirror (EFFICONV_DATA_URL)."
      )
    os.replace(temporary.name, destination)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(temporary.name)
    raise
  return destination
