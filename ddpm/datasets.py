"""Datasets as uint8 arrays of shape (N, C, H, W), and their scaling to the model's [-1, 1] (Section 3.3).

Two layers:

* ``load_digits`` / ``load_dataset``: scikit-learn's bundled digits, in memory, no files.
* ``prepare_dataset`` / ``open_split``: a dataset (``digits``, ``cifar10`` or an ``imagefolder``) is
  prepared once into a folder of ``.npy`` files plus ``manifest.json`` (shapes, counts, how the
  split was made, sha256 of every file and of every 64 MiB chunk of it); ``open_split`` gives one split's images
  as a :class:`SplitImages` that reads them from disk by index, each chunk checked before it is first used, so no
  job holds a data set in memory (``load_split`` reads a small split into memory).

An image folder of any size is prepared as it is read: each image goes to its split's file as soon as it is decoded
(in worker processes), and a killed preparation resumes where it stopped (``prepare-partial/``). Every finished file
gets its final name atomically and the manifest is written last, so an interrupted preparation never looks complete.

torch is imported inside the few functions that use it: the workflow reads this module's tables (datasets, their
native sizes and split counts) when it parses its config, without importing torch.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import numbers
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .io import atomic_open, write_json
from .progress import progress as progress_lines

if TYPE_CHECKING:
    import torch

DATASETS = ("digits", "cifar10", "imagefolder")
SPLITS = ("train", "test")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "ddpm-prepared-dataset"
MANIFEST_VERSION = 1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

ALPHA_BACKGROUND = 255
"""Grey level (255 = white) that transparent and half-transparent pixels are composited onto when an image is read
(:func:`load_image_file`), for every kind of transparency: an alpha channel (``LA``, ``RGBA``, ``PA``, premultiplied
``La``/``RGBa``), a palette's transparent entries (``P`` with ``info['transparency']``) and a PNG's transparent colour
(``tRNS`` in ``1``/``L``/``RGB``/16-bit grey). White, because image folders with transparency are mostly objects cut
out on a transparent page (icons, sprites, product shots) that are meant to be seen on a white page; PIL's own
``convert("RGB")`` would instead drop the alpha and show whatever colour the transparent pixels happen to store
(usually black). Result per channel: ``round(colour * alpha / 255 + ALPHA_BACKGROUND * (1 - alpha / 255))``."""

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_META = "batches.meta"
CIFAR10_SIDE = 32
CIFAR10_CLASSES = 10
#: The share of digits and of an image folder held out as the test split by default (300 of digits' 1,797 images).
TEST_FRACTION = 0.1667
#: The side of each dataset's images as published (imagefolder's is the config's ``dataset.image_size``).
NATIVE_IMAGE_SIZES = {"digits": 8, "cifar10": CIFAR10_SIDE}
#: How an image of a folder becomes image_size × image_size (config ``dataset.preprocess``): ``resize-crop``, the
#: shorter side resized bicubically, then the center cropped (torchvision's Resize + CenterCrop); ``stylegan``, the
#: center square cropped, then resized with Lanczos (PIL's ANTIALIAS), as StyleGAN's dataset_tool ``create_lsun``
#: prepared LSUN for DDPM (and for StyleGAN2's FID).
PREPROCESSES = ("resize-crop", "stylegan")
#: Bytes per checksum chunk of a prepared file: a job that reads part of a split verifies only the chunks it reads.
CHECKSUM_CHUNK = 1 << 26
#: Beside a prepared folder's outputs but not one of them (Snakemake does not delete it after a failed job): the
#: split files of an image folder being prepared and how far it got, from which a killed preparation resumes.
PARTIAL_DIR = "prepare-partial"
#: How often a preparation saves how far it got (after syncing the files): a kill loses at most this much work.
SAVE_PROGRESS_SECONDS = 5.0


# --------------------------------------------------------------------------------------------
# In-memory digits and value-range helpers (used by training and sampling).


def load_digits() -> np.ndarray:
    """scikit-learn's bundled 1,797 handwritten digits (8×8, 17 grey levels): real data that needs no network.

    Levels 0…16 are mapped to 0…255 so the usual 256-bin pixel likelihood applies."""
    from sklearn.datasets import load_digits as sklearn_digits

    images = sklearn_digits().images  # (1797, 8, 8) floats 0..16
    return np.round(images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]


def load_dataset(name: str) -> np.ndarray:
    """All images of an in-memory dataset (only ``digits``); others go through ``prepare_dataset``/``load_split``."""
    if name == "digits":
        return load_digits()
    if name in DATASETS:
        raise ValueError(
            f"dataset {name!r} is not loaded in memory; prepare it with prepare_dataset({name!r}, out_dir, ...) "
            "and read it with load_split(out_dir, 'train')"
        )
    raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")


def check_images(images, name: str, *, shape=None, min_count: int = 1) -> None:
    """Refuse anything but a uint8 array (N, C, H, W) with C in {1, 3}, at least ``min_count`` images and, if given,
    the per-image ``shape`` (C, H, W); the error names ``name`` (an argument or a file) and what was found."""
    if not isinstance(images, (np.ndarray, SplitImages)):
        raise ValueError(f"{name} must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8 (0..255), got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {images.shape}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels (axis 1 of (N, C, H, W)), got {images.shape[1]}")
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} holds images of shape (C, H, W) = {tuple(images.shape[1:])}, expected {tuple(shape)}")
    if len(images) < min_count:
        raise ValueError(f"{name} has {len(images)} images; at least {min_count} are needed")


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 0…255 → float32 in [-1, 1]."""
    import torch

    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 0..255, got {images.dtype}")
    return images.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → uint8 0…255 (rounded, clipped)."""
    import torch

    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# --------------------------------------------------------------------------------------------
# Preparing a dataset into files.


def prepare_dataset(
    name: str,
    out_dir: str | os.PathLike,
    *,
    path: str | os.PathLike | None = None,
    image_size: int | None = None,
    download: bool = False,
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
    preprocess: str = PREPROCESSES[0],
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Write ``{train,test}_{images,labels}.npy`` and ``manifest.json`` for dataset ``name`` into ``out_dir``.

    * ``digits``: scikit-learn's digits, a seeded split (``test_fraction``, ``seed``); 8×8 unless ``image_size``.
    * ``cifar10``: the official train/test split, read from ``path`` (a ``cifar-10-batches-py`` folder or
      its parent) or, with ``download=True``, fetched by torchvision into ``out_dir/download``.
    * ``imagefolder``: every image under ``path`` (recursively); labels from the top-level subfolder; brought to
      ``image_size`` (required) as ``preprocess`` says (:data:`PREPROCESSES`); a seeded split. Written as it is read,
      decoded by ``workers`` processes, with a progress line (``progress``); a killed run resumes
      (:func:`_prepare_imagefolder`).

    Images are uint8 (N, C, H, W); labels int64, -1 where there are none. Returns the manifest."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    _check_options(image_size, test_fraction)
    if preprocess not in PREPROCESSES:
        raise ValueError(f"unknown preprocess {preprocess!r}; valid: {', '.join(PREPROCESSES)}")
    image_size = None if image_size is None else int(image_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    if name == "digits":
        prepared = _prepare_digits(image_size, test_fraction, seed)
    elif name == "cifar10":
        prepared = _prepare_cifar10(out_dir, path, image_size, download)
    else:
        return _prepare_imagefolder(out_dir, path, image_size, test_fraction, seed, preprocess=preprocess,
                                    workers=workers, progress=progress)
    return _write_prepared(out_dir, name, prepared)


def _check_options(image_size: int | None, test_fraction: float) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")


def _prepare_digits(image_size: int | None, test_fraction: float, seed: int) -> dict:
    """Digits with sklearn's labels and a seeded split."""
    from sklearn.datasets import load_digits as sklearn_digits

    images = load_digits()
    labels = np.asarray(sklearn_digits().target, dtype=np.int64)
    images = resize_images(images, image_size)
    train_idx, test_idx = seeded_split(len(images), test_fraction, seed)
    return {
        "source": "sklearn",
        "train": (images[train_idx], labels[train_idx]),
        "test": (images[test_idx], labels[test_idx]),
        "num_classes": 10,
        "class_names": [str(d) for d in range(10)],
        "split": _seeded_split_record(test_fraction, seed, test_idx, basis="sklearn.datasets.load_digits() order"),
        "native_size": NATIVE_IMAGE_SIZES["digits"],
        "image_size": image_size,
    }


def _prepare_cifar10(out_dir: Path, path, image_size: int | None, download: bool) -> dict:
    """CIFAR-10's official split from a local folder or torchvision's verified download."""
    downloaded = False
    if path is not None:
        folder = find_cifar10_folder(path)
    elif download:
        folder = download_cifar10(out_dir / "download")
        downloaded = True
    else:
        raise ValueError(
            "cifar10 needs its data: pass path= a local 'cifar-10-batches-py' folder (or the folder containing it, "
            "as extracted from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz), or pass download=True"
        )
    data = read_cifar10_folder(folder)
    return {
        "source": str(folder.resolve()),
        "downloaded": downloaded,
        "train": (resize_images(data["train_images"], image_size), data["train_labels"]),
        "test": (resize_images(data["test_images"], image_size), data["test_labels"]),
        "num_classes": CIFAR10_CLASSES,
        "class_names": data["class_names"],
        "split": {
            "method": "official",
            "rule": "data_batch_1..data_batch_5 (in order) -> train; test_batch -> test",
        },
        "native_size": NATIVE_IMAGE_SIZES["cifar10"],
        "image_size": image_size,
    }


def _prepare_imagefolder(out_dir: Path, path, image_size: int | None, test_fraction: float, seed: int, *,
                         preprocess: str, workers: int, progress: bool) -> dict:
    """Every image under ``path``, brought to ``image_size`` (:func:`load_image_file`), with folder labels and a
    seeded split, written to the split files as it is decoded: memory stays that of a few images whatever the folder
    holds. The split files grow in ``out_dir/prepare-partial/`` with a record of how many images are written
    (every few seconds, after the files are synced); run again after a kill, it goes on from there if the folder
    and the options are the same, else starts over. At the end the files get their checksums and final names, and
    the manifest is written last."""
    if path is None:
        raise ValueError("imagefolder needs path= a folder of images")
    if image_size is None:
        raise ValueError("imagefolder needs image_size= (images are resized and center-cropped to it)")
    root = Path(path)
    files = list_image_files(root)
    labels, class_names = folder_labels(root, files)
    train_idx, test_idx = seeded_split(len(files), test_fraction, seed)
    split_of = np.zeros(len(files), dtype=np.int8)  # 0: train, 1: test (index into SPLITS)
    split_of[test_idx] = 1
    listing = hashlib.sha256("\n".join(files).encode("utf-8")).hexdigest()
    recipe = {"source": str(root.resolve()), "source_files": len(files), "source_files_sha256": listing,
              "image_size": image_size, "preprocess": preprocess, "test_fraction": float(test_fraction),
              "seed": int(seed), "manifest_version": MANIFEST_VERSION}
    partial = out_dir / PARTIAL_DIR
    done = _resume_point(partial, recipe)
    shape = (3, image_size, image_size)
    writers = [_RowWriter(partial / f"{split}_images.npy", (int((split_of == i).sum()), *shape),
                          first_row=int((split_of[:done] == i).sum())) for i, split in enumerate(SPLITS)]
    decoded = _decoded_images(root, files, done, image_size, preprocess, workers)
    saved = time.monotonic()
    try:
        for i, image in progress_lines(decoded, total=len(files) - done, desc="prepare: images", enabled=progress,
                                       every_s=10.0):
            writers[split_of[i]].write(image)
            if time.monotonic() - saved >= SAVE_PROGRESS_SECONDS or i + 1 == len(files):
                for writer in writers:  # the images before i + 1 are on disk: a kill from here resumes at i + 1
                    writer.sync()
                write_json(partial / "progress.json", {**recipe, "done": i + 1})
                saved = time.monotonic()
    finally:
        for writer in writers:
            writer.close()
    prepared = {
        "source": recipe["source"],
        "train": (None, labels[train_idx]),
        "test": (None, labels[test_idx]),
        "num_classes": len(class_names),
        "class_names": class_names,
        "split": _seeded_split_record(test_fraction, seed, test_idx, basis="sorted relative image paths"),
        "source_files": len(files),
        "source_files_sha256": listing,
        "image_size": image_size,
        "preprocess": preprocess,
    }
    manifest = _write_prepared(out_dir, "imagefolder", prepared, image_files={
        split: partial / f"{split}_images.npy" for split in SPLITS})
    shutil.rmtree(partial)
    return manifest


def _resume_point(partial: Path, recipe: dict) -> int:
    """How many images an earlier, killed preparation of the same ``recipe`` wrote to ``partial`` (0: none, or one
    of another folder or options, whose files are dropped)."""
    state_path = partial / "progress.json"
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = {}
        if {k: state.get(k) for k in recipe} == recipe and all((partial / f"{s}_images.npy").is_file() for s in SPLITS):
            print(f"resuming the preparation of {recipe['source']} at image {state['done']:,} of "
                  f"{recipe['source_files']:,} ({state_path})", flush=True)
            return int(state["done"])
        print(f"{state_path} is of another folder or other options: starting over", flush=True)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return 0


def _decoded_images(root: Path, files: list[str], start: int, image_size: int, preprocess: str, workers: int):
    """(index, image) for ``files[start:]`` in order, decoded by :func:`load_image_file` in ``workers`` processes
    (one: in this one). Windows of a few hundred images keep what waits to be written small."""
    decode = _ImageDecoder(root, image_size, preprocess)
    if workers <= 1:
        for i in range(start, len(files)):
            yield i, decode(files[i])
        return
    import multiprocessing

    window = 64 * workers
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for first in range(start, len(files), window):
            block = files[first:first + window]
            for offset, image in enumerate(pool.imap(decode, block, chunksize=8)):
                yield first + offset, image


class _ImageDecoder:
    """One image file of the folder → uint8 (3, S, S), as :func:`load_image_file` (picklable, for the workers)."""

    def __init__(self, root: Path, image_size: int, preprocess: str):
        self.root, self.image_size, self.preprocess = root, image_size, preprocess

    def __call__(self, relative: str) -> np.ndarray:
        return load_image_file(self.root / relative, self.image_size, self.preprocess)


class _RowWriter:
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


# --------------------------------------------------------------------------------------------
# Splits and resizing.


#: Sizes known without preparing the data (imagefolder's depends on the folder).
DIGITS_COUNT = 1797
CIFAR10_TRAIN_COUNT = 50000
CIFAR10_TEST_COUNT = 10000


def known_test_size(name: str, test_fraction: float) -> int | None:
    """The test split's size for ``name`` without reading any data (``None`` for imagefolder)."""
    if name == "digits":
        return int(round(DIGITS_COUNT * test_fraction))  # the rule of seeded_split
    if name == "cifar10":
        return CIFAR10_TEST_COUNT
    return None


def known_train_size(name: str, test_fraction: float) -> int | None:
    """The train split's size for ``name`` without reading any data (``None`` for imagefolder)."""
    if name == "digits":
        return DIGITS_COUNT - known_test_size(name, test_fraction)
    if name == "cifar10":
        return CIFAR10_TRAIN_COUNT
    return None


def seeded_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each sorted: test = the first round(n·test_fraction) of ``default_rng(seed).permutation(n)``."""
    permutation = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    if n - n_test < 1:
        raise ValueError(f"test_fraction={test_fraction} of {n} images leaves no training images")
    return np.sort(permutation[n_test:]), np.sort(permutation[:n_test])


def _seeded_split_record(test_fraction: float, seed: int, test_idx: np.ndarray, *, basis: str) -> dict:
    return {
        "method": "seeded_permutation",
        "rule": "perm = numpy.random.default_rng(seed).permutation(N); test = sorted(perm[:round(N * test_fraction)]); "
        "train = sorted(perm[round(N * test_fraction):])",
        "seed": int(seed),
        "test_fraction": float(test_fraction),
        "index_basis": basis,
        "test_indices": [int(i) for i in test_idx],
    }


def resize_images(images: np.ndarray, image_size: int | None) -> np.ndarray:
    """uint8 (N, C, H, W) → (N, C, S, S) by bilinear interpolation on floats, rounded back; unchanged if no resize is needed."""
    if image_size is None or images.shape[-2:] == (image_size, image_size):
        return images
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    y = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8).numpy()


# --------------------------------------------------------------------------------------------
# CIFAR-10: locate, download, and read with a restricted unpickler.


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


# --------------------------------------------------------------------------------------------
# Image folders.


def list_image_files(root: Path) -> list[str]:
    """The image files under ``root`` (recursively) as paths relative to it (``/``-separated), sorted, skipping hidden
    files and folders (e.g. macOS ``._x.jpg``). Strings, not Path objects: a folder of millions stays small."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"image folder {root} is not a folder")
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        prefix = Path(folder).relative_to(root).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        files += [prefix + name for name in names if not name.startswith(".")
                  and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(folder, name))]
    files.sort()
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return files


def folder_labels(root: Path, files: list[str]) -> tuple[np.ndarray, list[str]]:
    """Label = index of an image's top-level subfolder among the sorted subfolder names; -1 for images directly in
    ``root``. ``files``: relative paths as :func:`list_image_files` gives them."""
    tops = [f.split("/", 1)[0] if "/" in f else None for f in files]
    class_names = sorted({t for t in tops if t is not None})
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[t] if t is not None else -1 for t in tops], dtype=np.int64)
    return labels, class_names


def imagefolder_has_classes(root: str | Path) -> bool:
    """True when every image under ``root`` lies inside a top-level subfolder (one subfolder per class), i.e. every
    :func:`folder_labels` label is >= 0. False for a flat folder and for a mix of loose images and subfolders: those
    loose images get label -1, so the small classifier (``evaluate.feature_extractor: classifier``) cannot be trained
    on them. Raises like :func:`list_image_files` when ``root`` is missing or holds no images."""
    root = Path(root)
    labels, _ = folder_labels(root, list_image_files(root))
    return bool((labels >= 0).all())


# Modes whose conversion by PIL's convert("RGB") is exact (1-bit, 8-bit grey, palette, RGB, padded RGB, CMYK, YCbCr)
# when they carry no transparency.
_PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr")
_ALPHA_MODES = ("LA", "PA", "RGBA")  # straight (non-premultiplied) alpha
_PREMULTIPLIED_MODES = ("La", "RGBa")
_INTEGER_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # scaled from the 16-bit range 0..65535


def _unsupported_mode(path, mode: str, why: str) -> ValueError:
    return ValueError(f"cannot read image {path}: mode {mode} is not supported ({why})")


def _composite(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight-alpha ``colour`` (…, C) over :data:`ALPHA_BACKGROUND`, correctly rounded (no ties can occur)."""
    colour, alpha = colour.astype(np.int64), alpha.astype(np.int64)
    return ((colour * alpha + ALPHA_BACKGROUND * (255 - alpha) + 127) // 255).astype(np.uint8)


def _has_transparency(image) -> bool:
    """A transparent colour or palette index (``info['transparency']``) or a palette with alpha entries."""
    if "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and "A" in image.palette.mode


def _image_to_rgb(image, path):
    """Any supported PIL image → an RGB PIL image; alpha composited on :data:`ALPHA_BACKGROUND`; other modes refused."""
    from PIL import Image

    mode = image.mode
    if mode in _INTEGER_GREY_MODES:
        values = np.asarray(image).astype(np.int64)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise _unsupported_mode(path, mode, f"32-bit integer values {values.min()}..{values.max()} lie outside "
                                    "the 16-bit range 0..65535, so their scale is unknown; convert the image to 8 or "
                                    "16 bits first")
        grey = (2 * values + 257) // 514  # round(v / 65535 * 255) = round(v / 257); v / 257 never ends in .5
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        transparent = image.info.get("transparency")
        if isinstance(transparent, numbers.Integral):  # PNG tRNS: one fully transparent grey value
            rgb = _composite(rgb, np.where(values == transparent, 0, 255)[..., None])
        return Image.fromarray(rgb.astype(np.uint8))
    if mode in _PREMULTIPLIED_MODES:  # colour already multiplied by alpha: over the background = c + B (1 - a)
        values = np.asarray(image).astype(np.int64)
        colour, alpha = values[..., :-1], values[..., -1:]
        rgb = np.minimum(255, colour + (ALPHA_BACKGROUND * (255 - alpha) + 127) // 255)
        return Image.fromarray(np.broadcast_to(rgb, rgb.shape[:-1] + (3,)).astype(np.uint8))
    if mode in _ALPHA_MODES or (mode in _PLAIN_MODES and _has_transparency(image)):
        rgba = np.asarray(image.convert("RGBA"))
        return Image.fromarray(_composite(rgba[..., :3], rgba[..., 3:]))
    if mode in _PLAIN_MODES:
        return image.convert("RGB")
    if mode == "F":
        raise _unsupported_mode(path, mode, "32-bit floating-point pixels have no defined value range; convert the "
                                "image to 8 or 16 bits first")
    raise _unsupported_mode(path, mode, "supported: " + ", ".join(
        _PLAIN_MODES + _ALPHA_MODES + _PREMULTIPLIED_MODES + _INTEGER_GREY_MODES))


def load_image_file(path: Path, image_size: int, preprocess: str = PREPROCESSES[0]) -> np.ndarray:
    """One image → RGB uint8 (3, S, S), as ``preprocess`` says (:data:`PREPROCESSES`): ``resize-crop``, the shorter
    side resized to S (bicubic), then center-cropped; ``stylegan``, the center square (offsets ⌊(W − side) / 2⌋,
    ⌊(H − side) / 2⌋) cropped, then resized to S with Lanczos, as StyleGAN's ``create_lsun``.

    The EXIF orientation is applied first. Pixels are converted exactly or the image is refused (``ValueError``
    naming the file and the mode), never silently altered: 1-bit, 8-bit grey, palette, RGB, CMYK (PIL's conversion)
    and YCbCr become RGB; 16-bit grey (``I;16*``, and 32-bit ``I`` whose values lie in 0..65535) is scaled by
    ``round(v / 65535 * 255)``; transparency of every kind (alpha channel, palette or PNG transparent colour,
    premultiplied alpha) is composited onto :data:`ALPHA_BACKGROUND` (white). Grey images become three equal
    channels. Refused: float ``F``, ``I`` outside 0..65535, and any other mode (e.g. ``LAB``, ``HSV``).
    16-bit RGB/RGBA/grey+alpha PNGs are handed over by PIL as 8-bit RGB/RGBA already (high byte, ``v // 256``: at
    most one level below exact rounding)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    image = _image_to_rgb(image, path)
    width, height = image.size
    if preprocess == "stylegan":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((image_size, image_size), Image.LANCZOS)
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()
    if preprocess != "resize-crop":
        raise ValueError(f"unknown preprocess {preprocess!r}; valid: {', '.join(PREPROCESSES)}")
    scale = image_size / min(width, height)
    new_width, new_height = max(image_size, round(width * scale)), max(image_size, round(height * scale))
    image = image.resize((new_width, new_height), Image.BICUBIC)
    left, top = (new_width - image_size) // 2, (new_height - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


# --------------------------------------------------------------------------------------------
# Writing and reading prepared folders.


def _write_prepared(out_dir: Path, name: str, prepared: dict, image_files: dict[str, Path] | None = None) -> dict:
    """Write the four arrays atomically, then the manifest (last, so partial output never looks complete). Images
    already written to files (``image_files``: split → its ``.npy``, :func:`_prepare_imagefolder`) are checksummed
    and moved into place instead."""
    manifest_path = out_dir / MANIFEST
    manifest_path.unlink(missing_ok=True)  # an old manifest must not vouch for half-rewritten files
    files = {}
    for split in SPLITS:
        images, labels = prepared[split]
        name_images = f"{split}_images.npy"
        if image_files:
            files[name_images] = _file_entry(image_files[split])
            os.replace(image_files[split], out_dir / name_images)
        else:
            files[name_images] = _save_npy(out_dir / name_images, np.ascontiguousarray(images, dtype=np.uint8))
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        files[f"{split}_labels.npy"] = _save_npy(out_dir / f"{split}_labels.npy", labels)
    counts = {split: files[f"{split}_images.npy"]["shape"][0] for split in SPLITS}
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "dataset": name,
        "source": prepared["source"],
        "image_shape": files["train_images.npy"]["shape"][1:],
        "counts": counts,
        "num_classes": int(prepared["num_classes"]),
        "class_names": prepared["class_names"],
        "split": prepared["split"],
        "files": files,
    }
    for key in ("downloaded", "native_size", "image_size", "source_files", "source_files_sha256", "preprocess"):
        if key in prepared:
            manifest[key] = prepared[key]
    _atomic_write(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return manifest


def _save_npy(path: Path, array: np.ndarray) -> dict:
    """Save ``array`` atomically as .npy; returns its manifest entry (sha256 of the file and of each chunk, shape,
    dtype)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    _atomic_write(path, data)
    chunks = [hashlib.sha256(data[i:i + CHECKSUM_CHUNK]).hexdigest() for i in range(0, len(data), CHECKSUM_CHUNK)]
    return {"sha256": hashlib.sha256(data).hexdigest(), "chunk_bytes": CHECKSUM_CHUNK, "chunk_sha256": chunks,
            "shape": list(array.shape), "dtype": str(array.dtype)}


def _file_entry(path: Path) -> dict:
    """The manifest entry of a ``.npy`` file on disk, from one buffered pass over it (:func:`file_checksums`)."""
    shape, dtype, _ = _npy_header(path)
    whole, chunks = file_checksums(path)
    return {"sha256": whole, "chunk_bytes": CHECKSUM_CHUNK, "chunk_sha256": chunks, "shape": list(shape),
            "dtype": str(dtype)}


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
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


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def read_manifest(prepared_dir: str | os.PathLike) -> dict:
    """The ``manifest.json`` of a prepared folder (FileNotFoundError if absent, ValueError if unreadable)."""
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {Path(prepared_dir)}: not a prepared dataset, or preparation did not finish; run prepare")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-run prepare") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{path} is not a prepared-dataset manifest; re-run prepare")
    return manifest


def prepared_file_of(path: str | os.PathLike) -> Path | None:
    """The prepared folder whose own file ``path`` is (its manifest, or a file the manifest lists), if any."""
    path, folder = Path(path), Path(path).parent
    if not (folder / MANIFEST).is_file():
        return None
    if path.name == MANIFEST:
        return folder
    try:
        return folder if path.name in read_manifest(folder)["files"] else None
    except ValueError:  # a damaged manifest: the folder is still a prepared data set's
        return folder


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
        shape, dtype, self.offset = _npy_header(self.path)
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
        if chunks is None:  # a manifest written before chunk checksums: the whole file, once
            if "whole" not in self._verified:
                _check_sha256(self.path, self._entry["sha256"])
                self._verified.add("whole")
            return
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


def open_split(prepared_dir: str | os.PathLike, split: str) -> SplitImages:
    """The images of ``split`` ("train" or "test") of a prepared folder, on disk (:class:`SplitImages`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    filename = f"{split}_images.npy"
    entry = _checksum_entry(prepared_dir, manifest, filename)
    path = prepared_dir / filename
    if not path.is_file():
        raise FileNotFoundError(f"missing {path} (listed in {MANIFEST}); re-run prepare")
    images = SplitImages(path, entry)
    if "shape" in entry and list(images.shape) != list(entry["shape"]):
        raise ValueError(f"{path} holds images of shape {images.shape}, but {MANIFEST} says {tuple(entry['shape'])}; "
                         "re-run prepare")
    return images


def split_labels(prepared_dir: str | os.PathLike, split: str) -> np.ndarray:
    """The int64 labels (N,) of ``split``, checked against the manifest."""
    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    labels = _load_verified(prepared_dir, manifest, f"{split}_labels.npy")
    count = manifest.get("counts", {}).get(split)
    if labels.dtype != np.int64 or labels.ndim != 1 or (count is not None and len(labels) != count):
        raise ValueError(f"{prepared_dir / f'{split}_labels.npy'}: expected int64 ({count},), got {labels.dtype} "
                         f"{labels.shape}")
    return labels


def load_split(prepared_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, C, H, W) and labels int64 (N,) of ``split`` ("train" or "test") in memory, checked against
    the manifest: for small data (digits, a test's folder); the jobs read from disk with :func:`open_split`."""
    images = np.asarray(open_split(prepared_dir, split))
    labels = split_labels(prepared_dir, split)
    check_images(images, str(Path(prepared_dir) / f"{split}_images.npy"), min_count=0)  # a test split may be empty
    if labels.shape != (len(images),):
        raise ValueError(f"{Path(prepared_dir) / f'{split}_labels.npy'}: expected int64 ({len(images)},), got "
                         f"{labels.dtype} {labels.shape}")
    return images, labels


def _check_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(
            f"checksum mismatch for {path}: manifest has sha256 {expected}, file has {actual}; "
            "the file changed after preparation, re-run prepare"
        )


def _load_verified(prepared_dir: Path, manifest: dict, filename: str) -> np.ndarray:
    """Check ``filename``'s sha256 against the manifest, then load it without pickle."""
    path = prepared_dir / filename
    entry = _checksum_entry(prepared_dir, manifest, filename)
    if not path.is_file():
        raise FileNotFoundError(f"missing {path} (listed in {MANIFEST}); re-run prepare")
    _check_sha256(path, entry["sha256"])
    return np.load(path, allow_pickle=False)


def _checksum_entry(prepared_dir: Path, manifest: dict, filename: str) -> dict:
    """The manifest's entry (sha256, shape, dtype) for ``filename``."""
    entry = manifest["files"].get(filename)
    if not isinstance(entry, dict) or "sha256" not in entry:
        raise ValueError(f"{prepared_dir / MANIFEST} has no checksum for {filename}; re-run prepare")
    return entry


def split_sha256(prepared_dir: str | os.PathLike, split: str) -> str:
    """The sha256 of a prepared split's images, as its manifest records it (what a checkpoint's data is known by)."""
    prepared_dir = Path(prepared_dir)
    return _checksum_entry(prepared_dir, read_manifest(prepared_dir), f"{split}_images.npy")["sha256"]


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
