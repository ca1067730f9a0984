"""CIFAR-10 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009) in its python-version layout:
locate a ``cifar-10-batches-py`` folder, download it with torchvision (which checks the archive's and every batch's
md5), and read its batches and class names.

The batch files are pickles. They are read with :class:`RestrictedUnpickler`, which builds only dicts, lists,
numbers, bytes and numpy arrays and refuses any other global (the "Restricting Globals" recipe of Python's ``pickle``
documentation), so a tampered file is an error naming it, never code that runs. torch(vision) is imported only by
:func:`download_cifar10`.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_META = "batches.meta"
CIFAR10_SIDE = 32
CIFAR10_CLASSES = 10


def find_cifar10_folder(path) -> Path:
    """``path`` itself if it is a ``cifar-10-batches-py`` folder, else its ``cifar-10-batches-py`` child."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cifar10 path {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"cifar10 path {path} is not a folder; pass the 'cifar-10-batches-py' folder or its parent")
    child = path / CIFAR10_FOLDER
    return child if child.is_dir() else path


def download_cifar10(root: Path) -> Path:
    """Fetch CIFAR-10 with torchvision (which checks the archive's and every batch's md5) into ``root``."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    root.mkdir(parents=True, exist_ok=True)
    archive = root / CIFAR10.filename
    try:
        # One call downloads and extracts the whole archive; train=False keeps torchvision's own loading small.
        CIFAR10(root=str(root), train=False, download=True)
    except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError; torchvision's md5 failures RuntimeErrors
        if archive.exists() and not check_integrity(str(archive), CIFAR10.tgz_md5):
            raise ValueError(f"the CIFAR-10 archive {archive} is corrupt or incomplete (its md5 is not "
                             f"{CIFAR10.tgz_md5}); delete it and run again ({err})") from err
        raise ValueError(f"cannot download CIFAR-10 into {root}: {err}. Without a network, set dataset.path to an "
                         "extracted cifar-10-batches-py folder") from err
    folder = root / CIFAR10_FOLDER
    if not folder.is_dir():
        raise ValueError(f"the CIFAR-10 download did not produce {folder}")
    return folder


_ARRAY_PROBE = np.zeros(1, dtype=np.uint8)
_NUMPY_RECONSTRUCT = _ARRAY_PROBE.__reduce__()[0]  # numpy.core.multiarray._reconstruct, wherever this numpy keeps it
_NUMPY_FROMBUFFER = _ARRAY_PROBE.__reduce_ex__(5)[0]  # numpy.core.numeric._frombuffer (pickle protocol 5)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _NUMPY_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _NUMPY_FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for something other than a plain numpy array; it is refused, not run."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, numbers, bytes and numpy arrays.

    Any other global (``os.system``, ``builtins.eval``, …) raises ``UnsafePickleError`` naming the file."""

    def __init__(self, file, *, source: str | os.PathLike):
        super().__init__(file, encoding="bytes")
        self.source = str(source)

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to unpickle global {module}.{name}; a CIFAR-10 batch file holds only "
                "numpy arrays, lists and bytes (the file is not a genuine batch or was tampered with)"
            ) from None


def restricted_load(path: str | os.PathLike):
    """Unpickle ``path`` with ``RestrictedUnpickler``; any failure is a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"missing CIFAR-10 file {path}")
    try:
        with path.open("rb") as f:
            obj = RestrictedUnpickler(f, source=path).load()
            trailing = f.read(1)
    except UnsafePickleError:
        raise
    except Exception as error:  # truncated or corrupt: EOFError, UnpicklingError, struct/Value/TypeErrors…
        raise ValueError(f"corrupt or truncated CIFAR-10 file {path}: {type(error).__name__}: {error}") from error
    if trailing:
        raise ValueError(f"corrupt CIFAR-10 file {path}: unexpected bytes after the pickled data")
    return obj


def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One batch file → images uint8 (N, 3, 32, 32) and labels int64 (N,).

    Each data row is the red plane, then green, then blue, each 32×32 row-major."""
    path = Path(path)
    batch = restricted_load(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], batch[b"labels"]
    row = 3 * CIFAR10_SIDE * CIFAR10_SIDE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape (N, {row}), got {dtype} {shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: b'labels' must be a list of integers ({error})") from error
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= CIFAR10_CLASSES):
        raise ValueError(f"{path}: labels must lie in 0..{CIFAR10_CLASSES - 1}, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, CIFAR10_SIDE, CIFAR10_SIDE).copy(), labels


def read_cifar10_meta(path: str | os.PathLike) -> list[str]:
    """``batches.meta`` → the ten class names."""
    path = Path(path)
    meta = restricted_load(path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != CIFAR10_CLASSES or not all(isinstance(n, bytes) for n in names):
        raise ValueError(f"{path} is not CIFAR-10 metadata: expected b'label_names', a list of {CIFAR10_CLASSES} names")
    return [n.decode("utf-8", "replace") for n in names]


def read_cifar10_folder(folder: str | os.PathLike) -> dict:
    """A ``cifar-10-batches-py`` folder → train/test images and labels, and the class names."""
    folder = Path(folder)
    train = [read_cifar10_batch(folder / name) for name in CIFAR10_TRAIN_BATCHES]
    test_images, test_labels = read_cifar10_batch(folder / CIFAR10_TEST_BATCH)
    return {
        "train_images": np.concatenate([images for images, _ in train]),
        "train_labels": np.concatenate([labels for _, labels in train]),
        "test_images": test_images,
        "test_labels": test_labels,
        "class_names": read_cifar10_meta(folder / CIFAR10_META),
    }
