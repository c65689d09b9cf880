"""Tests for experiments.data file handling: parsing, search order, errors, downloads, the real Fashion-MNIST.

The fixture files are written here with struct/gzip/tarfile, independently of the code under test.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import re
import struct
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from experiments import data
from experiments.data import specs

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_ORIGINAL_FASHION_SPEC = specs.SPECS["fashion_mnist"]
IDX_FILES = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
  """Empty user cache, no EFFICONV_* variables, no proxies, and no system Fashion-MNIST unless a test asks."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  for variable in (
    "EFFICONV_DATA",
    "EFFICONV_DATA_URL",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
  ):
    monkeypatch.delenv(variable, raising=False)
  monkeypatch.setenv("no_proxy", "*")
  monkeypatch.setitem(specs.SPECS, "fashion_mnist", dataclasses.replace(_ORIGINAL_FASHION_SPEC, system_dirs=()))


# --- fixture writers (the real formats, built by hand) ------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
  """An unsigned-byte IDX file: magic 0x000008<ndim>, big-endian sizes, raw data."""
  header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def random_split(seed: int, count: int, size: tuple[int, int] = (28, 28)) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, *size), dtype=np.uint8), rng.integers(0, 10, count).astype(np.uint8)


def write_idx_split(
  directory: Path, split: str, images: np.ndarray, labels: np.ndarray, *, compress: bool = True
) -> tuple[Path, Path]:
  directory.mkdir(parents=True, exist_ok=True)
  images_path, labels_path = (directory / filename for filename in IDX_FILES[split])
  images_path.write_bytes(gzip.compress(idx_bytes(images)))
  labels_path.write_bytes(gzip.compress(idx_bytes(labels)))
  return images_path, labels_path


def cifar_records(images_hwc: np.ndarray, labels: np.ndarray) -> bytes:
  """CIFAR binary records: label byte, then the R, G and B 32×32 planes."""
  planes = images_hwc.transpose(0, 3, 1, 2).reshape(images_hwc.shape[0], -1)
  return np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1).tobytes()


def random_cifar(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, count).astype(np.uint8)


CIFAR_FILES = [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]


def cifar_contents() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  return {filename: random_cifar(seed, 2 + seed) for seed, filename in enumerate(CIFAR_FILES)}


def cifar_archive(path: Path, contents: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
  """Writes a cifar-10-binary.tar.gz look-alike (members reordered, an extra file); returns its SHA-256."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(path, "w:gz") as tar:
    members = {f"cifar-10-batches-bin/{name}": cifar_records(*arrays) for name, arrays in contents.items()}
    members["cifar-10-batches-bin/batches.meta.txt"] = b"airplane\n"
    for name in sorted(members, reverse=True):
      info = tarfile.TarInfo(name)
      info.size = len(members[name])
      tar.addfile(info, io.BytesIO(members[name]))
  return hashlib.sha256(path.read_bytes()).hexdigest()


def sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


# --- parsing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "folder"), [("fashion_mnist", "fashion-mnist"), ("mnist", "mnist")])
def test_idx_round_trip(tmp_path: Path, name: str, folder: str) -> None:
  splits = {"train": random_split(0, 7), "test": random_split(1, 3)}
  for split, (images, labels) in splits.items():
    write_idx_split(tmp_path / folder, split, images, labels)
  for split, (images, labels) in splits.items():
    loaded = data.load(name, split, data_dir=tmp_path, download=False)
    assert loaded.images.dtype == np.uint8 and loaded.labels.dtype == np.int32
    assert loaded.images.shape == (len(labels), 28, 28, 1)
    np.testing.assert_array_equal(loaded.images[..., 0], images)
    np.testing.assert_array_equal(loaded.labels, labels)
    assert (loaded.name, loaded.split, loaded.num_classes, len(loaded)) == (name, split, 10, len(labels))
    assert loaded.source == tmp_path / folder


def test_fashion_mnist_files_directly_in_data_dir(tmp_path: Path) -> None:
  images, labels = random_split(2, 4)
  write_idx_split(tmp_path, "test", images, labels)
  loaded = data.load("Fashion-MNIST", "test", data_dir=tmp_path, download=False)
  np.testing.assert_array_equal(loaded.labels, labels)
  assert loaded.source == tmp_path


def test_mnist_files_directly_in_data_dir_are_not_used(tmp_path: Path) -> None:
  # MNIST and Fashion-MNIST files share names, so only Fashion-MNIST may sit loose in a root.
  write_idx_split(tmp_path, "test", *random_split(2, 4))
  with pytest.raises(data.DatasetError, match="MNIST test split not found"):
    data.load("mnist", "test", data_dir=tmp_path, download=False)


def test_cifar_round_trip_from_batch_files(tmp_path: Path) -> None:
  contents = cifar_contents()
  folder = tmp_path / "cifar-10-batches-bin"
  folder.mkdir()
  for filename, arrays in contents.items():
    (folder / filename).write_bytes(cifar_records(*arrays))
  train = data.load("cifar10", "train", data_dir=tmp_path, download=False)
  expected_images = np.concatenate([contents[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
  expected_labels = np.concatenate([contents[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
  assert train.images.shape == (expected_images.shape[0], 32, 32, 3) and train.images.dtype == np.uint8
  np.testing.assert_array_equal(train.images, expected_images)
  np.testing.assert_array_equal(train.labels, expected_labels)
  assert train.labels.dtype == np.int32
  test = data.load("cifar10", "test", data_dir=tmp_path, download=False)
  raw = (folder / "test_batch.bin").read_bytes()
  # Record 1, channel 2 (blue), row 5, column 7: byte 3073 + 1 + 2·1024 + 5·32 + 7.
  assert test.images[1, 5, 7, 2] == raw[3073 + 1 + 2 * 1024 + 5 * 32 + 7]
  assert test.labels[1] == raw[3073]


def test_cifar_archive_in_data_dir_is_verified_and_unpacked(tmp_path: Path) -> None:
  contents = cifar_contents()
  digest = cifar_archive(tmp_path / "cifar-10-binary.tar.gz", contents)
  with pytest.raises(data.DatasetError, match=re.escape("cifar-10-binary.tar.gz: SHA-256 is")):
    data.load("cifar10", "test", data_dir=tmp_path, download=False)
  assert not (tmp_path / "cifar-10-batches-bin").exists()
  loaded = data.load("cifar10", "test", data_dir=tmp_path, download=False, checksums={"cifar-10-binary.tar.gz": digest})
  np.testing.assert_array_equal(loaded.images, contents["test_batch.bin"][0])
  assert sorted(os.listdir(tmp_path / "cifar-10-batches-bin")) == sorted(CIFAR_FILES)


# --- search order -------------------------------------------------------------------------------------------


def test_search_order_explicit_then_env_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
  images = random_split(3, 2)[0]
  places = {
    "explicit": tmp_path / "explicit",
    "env": tmp_path / "env",
    "cache": tmp_path / "cache" / "efficonv",
  }
  for label, root in enumerate(places.values()):
    write_idx_split(root / "mnist", "test", images, np.full(2, label, np.uint8))
  monkeypatch.setenv("EFFICONV_DATA", str(places["env"]))
  assert data.data_roots(places["explicit"]) == list(places.values())

  def source_label(**kwargs: object) -> int:
    return int(data.load("mnist", "test", download=False, **kwargs).labels[0])

  assert source_label(data_dir=places["explicit"]) == 0
  assert source_label() == 1
  assert source_label(data_dir=tmp_path / "empty") == 1  # an explicit root without the files falls through
  monkeypatch.delenv("EFFICONV_DATA")
  assert source_label() == 2


def test_system_fashion_mnist_directory_comes_after_the_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
  system = tmp_path / "usr-share"
  write_idx_split(system, "test", *random_split(4, 3))
  monkeypatch.setitem(
    specs.SPECS, "fashion_mnist", dataclasses.replace(_ORIGINAL_FASHION_SPEC, system_dirs=(str(system),))
  )
  assert data.load("fashion_mnist", "test", download=False).source == system
  write_idx_split(tmp_path / "cache" / "efficonv" / "fashion-mnist", "test", *random_split(5, 3))
  assert data.load("fashion_mnist", "test", download=False).source == tmp_path / "cache" / "efficonv" / "fashion-mnist"


# --- errors -------------------------------------------------------------------------------------------------


def test_missing_files_without_download(tmp_path: Path) -> None:
  with pytest.raises(data.DatasetError) as error:
    data.load("mnist", "train", data_dir=tmp_path / "mine", download=False)
  message = str(error.value)
  for fragment in (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    str(tmp_path / "mine" / "mnist"),
    str(tmp_path / "cache" / "efficonv" / "mnist"),
    "EFFICONV_DATA",
    "download=True",
  ):
    assert fragment in message


def _cut_compressed(path: Path) -> None:
  path.write_bytes(path.read_bytes()[:-40])


def _rewrite(path: Path, change) -> None:
  path.write_bytes(gzip.compress(change(gzip.decompress(path.read_bytes()))))


CORRUPTIONS = {
  "truncated gzip": ("images", _cut_compressed, "not a valid gzip file"),
  "short payload": ("images", lambda p: _rewrite(p, lambda b: b[:-100]), "truncated: holds 4604 of the 4704"),
  "short header": ("labels", lambda p: _rewrite(p, lambda b: b[:6]), "truncated: ends inside the IDX header"),
  "extra bytes": ("labels", lambda p: _rewrite(p, lambda b: b + b"\0"), "has data beyond the 6 bytes"),
  "wrong magic": (
    "images",
    lambda p: _rewrite(p, lambda b: b"\0\0\x08\x01" + b[4:]),
    "0x00000801, expected 0x00000803",
  ),
  "not gzip": ("labels", lambda p: p.write_bytes(b"<html>Not found</html>"), "not a valid gzip file"),
  "wrong image size": (
    "images",
    lambda p: p.write_bytes(gzip.compress(idx_bytes(np.zeros((6, 27, 28))))),
    "expected (28, 28)",
  ),
  "count mismatch": (
    "labels",
    lambda p: p.write_bytes(gzip.compress(idx_bytes(np.zeros(5)))),
    "holds 5 labels but",
  ),
  "label range": (
    "labels",
    lambda p: p.write_bytes(gzip.compress(idx_bytes(np.full(6, 10)))),
    "has label 10, but MNIST",
  ),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_idx_file_on_disk(tmp_path: Path, corruption: str) -> None:
  which, corrupt, fragment = CORRUPTIONS[corruption]
  images_path, labels_path = write_idx_split(tmp_path / "mnist", "test", *random_split(6, 6))
  path = images_path if which == "images" else labels_path
  corrupt(path)
  with pytest.raises(data.DatasetError) as error:
    data.load("mnist", "test", data_dir=tmp_path, download=True)  # found-but-corrupt is never re-downloaded
  message = str(error.value)
  assert message.startswith(f"{path}: ") and fragment in message
  assert "delete it and re-run" in message and "EFFICONV_DATA" in message


def test_cifar_batch_of_wrong_size(tmp_path: Path) -> None:
  folder = tmp_path / "cifar-10-batches-bin"
  folder.mkdir()
  (folder / "test_batch.bin").write_bytes(cifar_records(*random_cifar(0, 2))[:-1])
  with pytest.raises(data.DatasetError, match=r"test_batch.bin: has 6145 bytes, not a positive multiple of the 3073"):
    data.load("cifar10", "test", data_dir=tmp_path, download=False)


def test_bad_arguments() -> None:
  with pytest.raises(ValueError, match=r"name must be one of \['cifar10', 'fashion_mnist', 'mnist'\], got 'svhn'"):
    data.load("svhn")
  with pytest.raises(ValueError, match=r"split must be one of \['train', 'test'\], got 'validation'"):
    data.load("mnist", "validation")


# --- downloads through a loopback HTTP server ---------------------------------------------------------------


@dataclasses.dataclass
class Mirror:
  url: str
  root: Path
  requested: list[str]


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
  """An http.server on 127.0.0.1 serving tmp_path/mirror, recording the paths requested."""
  root = tmp_path / "mirror"
  root.mkdir()
  requested: list[str] = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs) -> None:
      super().__init__(*args, directory=str(root), **kwargs)

    def do_GET(self) -> None:
      requested.append(self.path)
      super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
      del format, args  # keep test output quiet

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
  thread.start()
  try:
    yield Mirror(f"http://127.0.0.1:{server.server_address[1]}", root, requested)
  finally:
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_from_mirror_fetches_only_the_split(tmp_path: Path, mirror: Mirror) -> None:
  images, labels = random_split(7, 5)
  served = write_idx_split(mirror.root / "mnist", "train", images, labels)
  write_idx_split(mirror.root / "mnist", "test", *random_split(8, 2))
  checksums = {path.name: sha256(path) for path in served}
  target = tmp_path / "mine"
  loaded = data.load("mnist", "train", data_dir=target, base_url=mirror.url + "/", checksums=checksums)
  np.testing.assert_array_equal(loaded.images[..., 0], images)
  assert sorted(mirror.requested) == sorted(f"/mnist/{path.name}" for path in served)
  assert sorted(os.listdir(target / "mnist")) == sorted(path.name for path in served)  # no temporary files
  data.load("mnist", "train", data_dir=target, base_url=mirror.url, checksums=checksums)
  assert len(mirror.requested) == 2  # the second load reads the saved files


def test_download_with_env_url_goes_to_the_cache(
  tmp_path: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
  images, labels = random_split(9, 3)
  served = write_idx_split(mirror.root / "fashion_mnist", "test", images, labels)
  monkeypatch.setenv("EFFICONV_DATA_URL", mirror.url)
  loaded = data.load("fashion_mnist", "test", checksums={path.name: sha256(path) for path in served})
  assert loaded.source == tmp_path / "cache" / "efficonv" / "fashion-mnist"
  np.testing.assert_array_equal(loaded.labels, labels)


def test_corrupt_download_leaves_no_file(tmp_path: Path, mirror: Mirror) -> None:
  served = write_idx_split(mirror.root / "mnist", "test", *random_split(10, 2))
  wrong = "0" * 64
  with pytest.raises(data.DatasetError) as error:
    data.load(
      "mnist",
      "test",
      data_dir=tmp_path / "mine",
      base_url=mirror.url,
      checksums={served[0].name: wrong, served[1].name: wrong},
    )
  message = str(error.value)
  assert f"{mirror.url}/mnist/{served[0].name}" in message
  assert f"expected SHA-256 {wrong}, got {sha256(served[0])}" in message
  assert list((tmp_path / "mine" / "mnist").iterdir()) == []


def test_default_digests_reject_a_non_canonical_download(tmp_path: Path, mirror: Mirror) -> None:
  served = write_idx_split(mirror.root / "mnist", "test", *random_split(11, 2))
  with pytest.raises(data.DatasetError, match=f"expected SHA-256 {specs.SPECS['mnist'].sha256[served[0].name]}"):
    data.load("mnist", "test", data_dir=tmp_path / "mine", base_url=mirror.url)
  assert list((tmp_path / "mine" / "mnist").iterdir()) == []


def test_missing_on_mirror_names_the_url(tmp_path: Path, mirror: Mirror) -> None:
  with pytest.raises(
    data.DatasetError,
    match=re.escape(f"Could not download {mirror.url}/mnist/t10k-images-idx3-ubyte.gz: HTTP Error 404"),
  ):
    data.load("mnist", "test", data_dir=tmp_path / "mine", base_url=mirror.url, checksums={})
  assert list((tmp_path / "mine" / "mnist").iterdir()) == []


def test_cifar_download_and_unpack(tmp_path: Path, mirror: Mirror) -> None:
  contents = cifar_contents()
  digest = cifar_archive(mirror.root / "cifar10" / "cifar-10-binary.tar.gz", contents)
  loaded = data.load(
    "cifar10",
    "test",
    data_dir=tmp_path / "mine",
    base_url=mirror.url,
    checksums={"cifar-10-binary.tar.gz": digest},
  )
  np.testing.assert_array_equal(loaded.images, contents["test_batch.bin"][0])
  np.testing.assert_array_equal(loaded.labels, contents["test_batch.bin"][1])
  assert sorted(os.listdir(tmp_path / "mine")) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
  train = data.load("cifar10", "train", data_dir=tmp_path / "mine", base_url=mirror.url, download=False)
  assert len(train) == sum(contents[f"data_batch_{i}.bin"][0].shape[0] for i in range(1, 6))
  assert mirror.requested == ["/cifar10/cifar-10-binary.tar.gz"]


def test_truncated_cifar_archive(tmp_path: Path) -> None:
  archive = tmp_path / "cifar-10-binary.tar.gz"
  cifar_archive(archive, cifar_contents())
  archive.write_bytes(archive.read_bytes()[:-200])
  with pytest.raises(data.DatasetError, match=re.escape("not a valid .tar.gz archive")):
    data.load("cifar10", "test", data_dir=tmp_path, download=False, checksums={archive.name: sha256(archive)})
  assert list(tmp_path.rglob("*.part")) == []


# --- the real Fashion-MNIST (Debian package dataset-fashion-mnist) ------------------------------------------

needs_system_fashion_mnist = pytest.mark.skipif(
  not SYSTEM_FASHION_MNIST.is_dir(),
  reason=f"{SYSTEM_FASHION_MNIST} missing: install the Debian package dataset-fashion-mnist to run this test",
)


@needs_system_fashion_mnist
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setitem(specs.SPECS, "fashion_mnist", _ORIGINAL_FASHION_SPEC)
  train = data.load("fashion_mnist", "train", download=False)
  test = data.load("fashion_mnist", "test", download=False)
  assert train.source == SYSTEM_FASHION_MNIST
  assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(train.labels), np.full(10, 6000))  # the classes are balanced
  np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 1000))
  normalized = data.normalize(train.images, "fashion_mnist")
  assert abs(float(normalized.mean())) < 1e-3 and abs(float(normalized.std()) - 1.0) < 1e-3


@needs_system_fashion_mnist
@pytest.mark.parametrize(
  ("filename", "mtime"),
  [
    ("train-images-idx3-ubyte.gz", 1504176606),
    ("train-labels-idx1-ubyte.gz", 1504176606),
    ("t10k-images-idx3-ubyte.gz", 1504176627),
    ("t10k-labels-idx1-ubyte.gz", 1504176627),
  ],
)
def test_fashion_mnist_digests_match_the_debian_files(filename: str, mtime: int) -> None:
  # Debian strips the gzip header's file name and mtime; restoring them must give the canonical download.
  debian = (SYSTEM_FASHION_MNIST / filename).read_bytes()
  assert debian[:4] == b"\x1f\x8b\x08\x00"  # gzip, deflate, no optional fields
  header = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03" + filename.removesuffix(".gz").encode() + b"\0"
  assert hashlib.sha256(header + debian[10:]).hexdigest() == specs.SPECS["fashion_mnist"].sha256[filename]
