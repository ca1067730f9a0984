"""The on-disk store of a prepared data set's arrays: ``.npy`` files written whole or row by row, checksummed whole
and per chunk, and read back by index without holding them in memory.

* Writing: :func:`save_npy` (a small array: labels, or images already in memory, atomically) and :class:`RowWriter`
  (a split's images, one row at a time with plain writes, so a preparation's memory does not grow with the data;
  opened again at a row, it goes on from there).
* Checksums: the sha256 of a whole file and of each :data:`CHECKSUM_CHUNK` (64 MiB) chunk of it, in one buffered
  pass (:func:`file_checksums`, :func:`file_entry`, :func:`sha256_file`), as a prepared folder's ``manifest.json``
  records them.
* Reading: :class:`SplitImages`, a split's images read by index with positional reads (``os.preadv``: nothing is
  mapped, unlike ``np.load(mmap_mode="r")``), each chunk checked against its checksum before its first use, so a job
  that reads part of a split verifies only what it reads; safe in DataLoader worker processes.

Files are NumPy's ``.npy`` format (versions 1.0 and 2.0, C order; NumPy's NEP 1), whose shape and dtype are read from
the header alone (:func:`npy_header`). This module knows a file's manifest entry (sha256s, shape, dtype), but
nothing of data sets, splits or ``manifest.json`` itself: ``ddpm.datasets`` builds on it. numpy only, no torch.
"""

from __future__ import annotations

import copy
import hashlib
import io
import numbers
import os
from pathlib import Path

import numpy as np

from .io import atomic_open

#: Bytes per checksum chunk of a prepared file: a job that reads part of a split verifies only the chunks it reads.
CHECKSUM_CHUNK = 1 << 26


def save_npy(path: Path, array: np.ndarray) -> dict:
    """Save ``array`` atomically as .npy; returns its manifest entry (sha256 of the file and of each chunk, shape,
    dtype)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    atomic_write(path, data)
    chunks = [hashlib.sha256(data[i:i + CHECKSUM_CHUNK]).hexdigest() for i in range(0, len(data), CHECKSUM_CHUNK)]
    return {"sha256": hashlib.sha256(data).hexdigest(), "chunk_bytes": CHECKSUM_CHUNK, "chunk_sha256": chunks,
            "shape": list(array.shape), "dtype": str(array.dtype)}


def file_entry(path: Path) -> dict:
    """The manifest entry of a ``.npy`` file on disk, from one buffered pass over it (:func:`file_checksums`)."""
    shape, dtype, _ = npy_header(path)
    whole, chunks = file_checksums(path)
    return {"sha256": whole, "chunk_bytes": CHECKSUM_CHUNK, "chunk_sha256": chunks, "shape": list(shape),
            "dtype": str(dtype)}


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape, dtype and data offset of a C-ordered ``.npy`` file, from its header alone."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
            shape, fortran_order, dtype = read(f)
        except (ValueError, KeyError) as err:
            raise ValueError(f"{path} is not a .npy array file ({err!r}); re-run prepare") from err
        if fortran_order:
            raise ValueError(f"{path} is in Fortran order; re-run prepare")
        return shape, dtype, f.tell()


def file_checksums(path: str | os.PathLike, chunk_bytes: int = CHECKSUM_CHUNK) -> tuple[str, list[str]]:
    """The sha256 of a whole file and of each of its ``chunk_bytes`` chunks, in one pass of 1 MiB reads."""
    whole, chunks = hashlib.sha256(), []
    with open(path, "rb") as f:
        while True:
            chunk, left = hashlib.sha256(), chunk_bytes
            while left and (block := f.read(min(1 << 20, left))):
                whole.update(block)
                chunk.update(block)
                left -= len(block)
            if left == chunk_bytes:
                break
            chunks.append(chunk.hexdigest())
            if left:
                break
    return whole.hexdigest(), chunks


def atomic_write(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def check_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(
            f"checksum mismatch for {path}: manifest has sha256 {expected}, file has {actual}; "
            "the file changed after preparation, re-run prepare"
        )


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class RowWriter:
    """A ``.npy`` file of a known shape filled row by row with plain writes (no mapping: the process's memory does not
    grow with the file). Opened again at ``first_row``, it goes on from there."""

    def __init__(self, path: Path, shape: tuple[int, ...], first_row: int = 0):
        self.path, self.shape = path, shape
        self.row_bytes = int(np.prod(shape[1:]))
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                      "fortran_order": False, "shape": shape})
        self.offset = len(header.getvalue())
        fresh = first_row == 0 or not path.exists()
        self.file = open(path, "wb" if fresh else "r+b")
        if fresh:
            self.file.write(header.getvalue())
            first_row = 0
        self.file.seek(self.offset + first_row * self.row_bytes)
        self.row = first_row

    def write(self, image: np.ndarray) -> None:
        if image.dtype != np.uint8 or image.shape != self.shape[1:]:
            raise ValueError(f"{self.path}: an image of {image.dtype} {image.shape}, expected uint8 {self.shape[1:]}")
        if self.row >= self.shape[0]:
            raise ValueError(f"{self.path}: more images than the {self.shape[0]} of its split")
        self.file.write(np.ascontiguousarray(image).tobytes())
        self.row += 1

    def sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        if not self.file.closed:
            self.sync()
            self.file.close()


class SplitImages:
    """The images of a prepared split, uint8 (N, C, H, W), read from their ``.npy`` file by index with positional
    reads: nothing is mapped, and only what is asked for is in memory. Indexing as a numpy array's first axis (an
    int, a slice of step 1, or an array of indices) returns a numpy array; ``len``, ``shape``, ``dtype``, ``ndim``
    are the array's. Each chunk of the file (:data:`CHECKSUM_CHUNK`) is checked against the manifest's sha256 before
    its first use (:meth:`verify` checks a range, or everything, ahead), so a file changed since preparation is
    refused, naming it. Safe to use in DataLoader worker processes (each opens the file itself)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, path: str | os.PathLike, entry: dict):
        self._fd, self._pid = None, None
        self.path = Path(path)
        self._entry = entry
        shape, dtype, self.offset = npy_header(self.path)
        if dtype != np.uint8 or len(shape) != 4:
            raise ValueError(f"{self.path} must hold uint8 images (N, C, H, W), got {dtype} {shape}")
        self.shape = tuple(int(n) for n in shape)
        self.row_bytes = int(np.prod(self.shape[1:]))
        self._verified: set = set()

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": None}

    def head(self, count: int) -> "SplitImages":
        """The first ``count`` images (all if there are fewer), as another :class:`SplitImages` of the same file."""
        first = copy.copy(self)
        first.shape = (min(int(count), len(self)), *self.shape[1:])
        first._fd, first._pid, first._verified = None, None, self._verified
        return first

    def _descriptor(self) -> int:
        if self._pid != os.getpid():  # a forked worker opens the file itself
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def verify(self, start: int = 0, stop: int | None = None) -> None:
        """Check the chunks that hold images ``start`` … ``stop - 1`` (default: all) against the manifest."""
        stop = len(self) if stop is None else stop
        chunks = self._entry.get("chunk_sha256")
        if chunks is None:
            raise ValueError(f"the manifest of {self.path} has no chunk checksums (prepared by an earlier version): "
                             f"prepare the data set again")
        size = int(self._entry["chunk_bytes"])
        first_byte = 0 if start == 0 else self.offset + start * self.row_bytes
        last_byte = self.offset + max(stop, start + 1) * self.row_bytes - 1
        for k in range(first_byte // size, min(last_byte // size, len(chunks) - 1) + 1):
            if k not in self._verified:
                self._check_chunk(k, size, chunks[k])
                self._verified.add(k)

    def _check_chunk(self, k: int, size: int, expected: str) -> None:
        digest, position, end = hashlib.sha256(), k * size, (k + 1) * size
        while position < end:
            block = os.pread(self._descriptor(), min(1 << 20, end - position), position)
            if not block:
                break
            digest.update(block)
            position += len(block)
        if digest.hexdigest() != expected:
            raise ValueError(f"checksum mismatch for {self.path} (bytes {k * size:,}..{end - 1:,}): the file changed "
                             f"after preparation, re-run prepare")

    def _read_into(self, out: np.ndarray, start: int) -> np.ndarray:
        """Fill ``out`` (uint8, C-contiguous, whole images) with the images from ``start`` on."""
        view, position, done = memoryview(out).cast("B"), self.offset + start * self.row_bytes, 0
        while done < len(view):
            read = os.preadv(self._descriptor(), [view[done:]], position + done)
            if not read:
                raise ValueError(f"{self.path} is truncated: image {start + len(out) - 1} is past its end; re-run "
                                 f"prepare")
            done += read
        return out

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Images ``start`` … ``stop - 1``, read in one piece."""
        start, stop = max(0, start), min(len(self), stop)
        if stop <= start:
            return np.zeros((0, *self.shape[1:]), dtype=np.uint8)
        self.verify(start, stop)
        return self._read_into(np.empty((stop - start, *self.shape[1:]), dtype=np.uint8), start)

    def take(self, indices) -> np.ndarray:
        """The images at ``indices`` (in that order, repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"image index out of range for the {len(self)} images of {self.path}")
        indices = np.where(indices < 0, indices + len(self), indices)
        out = np.empty((len(indices), *self.shape[1:]), dtype=np.uint8)
        for i in np.argsort(indices, kind="stable"):
            row = int(indices[i])
            self.verify(row, row + 1)
            self._read_into(out[i:i + 1], row)
        return out

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            return self.rows(start, stop) if step == 1 else self.take(np.arange(start, stop, step))
        if isinstance(key, numbers.Integral):
            return self.take([int(key)])[0]
        return self.take(key)

    def __array__(self, dtype=None, copy=None):
        images = self.rows(0, len(self))
        return images if dtype is None else images.astype(dtype)

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
