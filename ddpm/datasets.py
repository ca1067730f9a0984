"""Datasets as uint8 arrays of shape (N, C, H, W), and their scaling to the model's [-1, 1] (Section 3.3): the data
set registry (names, native sizes, split counts) and the API the jobs use.

Two layers:

* ``load_digits`` / ``load_dataset``: scikit-learn's bundled digits, in memory, no files.
* ``prepare_dataset`` / ``open_split``: a dataset (``digits``, ``cifar10`` or an ``imagefolder``) is
  prepared once into a folder of ``.npy`` files plus ``manifest.json`` (shapes, counts, how the
  split was made, sha256 of every file and of every 64 MiB chunk of it); ``open_split`` gives one split's images
  as a :class:`~ddpm.store.SplitImages` that reads them from disk by index, each chunk checked before it is first
  used, so no job holds a data set in memory (``load_split`` reads a small split into memory).

An image folder of any size is prepared as it is read: each image goes to its split's file as soon as it is decoded
(in worker processes), and a killed preparation resumes where it stopped (``prepare-partial/``). Every finished file
gets its final name atomically and the manifest is written last, so an interrupted preparation never looks complete.

This module chooses the splits and writes and reads the manifest; the parts below it are ``ddpm.cifar10`` (CIFAR-10's
batch files, read with a restricted unpickler), ``ddpm.imagefolder`` (an image folder's files, labels and pixels, and
its resumable decoding) and ``ddpm.store`` (the ``.npy`` files: written whole or row by row, checksummed per chunk,
read by index).

torch is imported inside the few functions that use it: the workflow reads this module's tables (datasets, their
native sizes and split counts) when it parses its config, without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cifar10 import CIFAR10_CLASSES, CIFAR10_SIDE, download_cifar10, find_cifar10_folder, read_cifar10_folder
from .imagefolder import PARTIAL_DIR, PREPROCESSES, folder_labels, list_image_files, write_images
from .io import read_json
from .store import SplitImages, atomic_write, check_sha256, file_entry, save_npy

if TYPE_CHECKING:
    import torch

DATASETS = ("digits", "cifar10", "imagefolder")
SPLITS = ("train", "test")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "ddpm-prepared-dataset"
MANIFEST_VERSION = 1
#: The share of digits and of an image folder held out as the test split by default (300 of digits' 1,797 images).
TEST_FRACTION = 0.1667
#: The side of each dataset's images as published (imagefolder's is the config's ``dataset.image_size``).
NATIVE_IMAGE_SIZES = {"digits": 8, "cifar10": CIFAR10_SIDE}


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
    """Every image under ``path``, brought to ``image_size`` (:func:`~ddpm.imagefolder.load_image_file`), with folder
    labels and a seeded split, written to the split files as it is decoded (:func:`~ddpm.imagefolder.write_images`):
    memory stays that of a few images whatever the folder holds. The split files grow in ``out_dir/prepare-partial/``
    with a record of how many images are written (every few seconds, after the files are synced); run again after a
    kill, it goes on from there if the folder and the options are the same, else starts over. At the end the files get
    their checksums and final names, and the manifest is written last."""
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
    outputs = tuple(f"{split}_images.npy" for split in SPLITS)
    write_images(partial, recipe, root, files, split_of, outputs, workers=workers, progress=progress)
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
        split: partial / name for split, name in zip(SPLITS, outputs)})
    shutil.rmtree(partial)
    return manifest


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
# Image folders (read by ddpm.imagefolder).


def imagefolder_has_classes(root: str | Path) -> bool:
    """True when every image under ``root`` lies inside a top-level subfolder (one subfolder per class), i.e. every
    :func:`folder_labels` label is >= 0. False for a flat folder and for a mix of loose images and subfolders: those
    loose images get label -1, so the small classifier (``evaluate.feature_extractor: classifier``) cannot be trained
    on them. Raises like :func:`list_image_files` when ``root`` is missing or holds no images."""
    root = Path(root)
    labels, _ = folder_labels(root, list_image_files(root))
    return bool((labels >= 0).all())


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
            files[name_images] = file_entry(image_files[split])
            os.replace(image_files[split], out_dir / name_images)
        else:
            files[name_images] = save_npy(out_dir / name_images, np.ascontiguousarray(images, dtype=np.uint8))
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        files[f"{split}_labels.npy"] = save_npy(out_dir / f"{split}_labels.npy", labels)
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
    atomic_write(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return manifest


def read_manifest(prepared_dir: str | os.PathLike) -> dict:
    """The ``manifest.json`` of a prepared folder (FileNotFoundError if absent, ValueError if unreadable)."""
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {Path(prepared_dir)}: not a prepared dataset, or preparation did not finish; run prepare")
    manifest = read_json(path, hint="re-run prepare")
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
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


def open_split(prepared_dir: str | os.PathLike, split: str) -> SplitImages:
    """The images of ``split`` ("train" or "test") of a prepared folder, on disk (:class:`~ddpm.store.SplitImages`)."""
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


def _load_verified(prepared_dir: Path, manifest: dict, filename: str) -> np.ndarray:
    """Check ``filename``'s sha256 against the manifest, then load it without pickle."""
    path = prepared_dir / filename
    entry = _checksum_entry(prepared_dir, manifest, filename)
    if not path.is_file():
        raise FileNotFoundError(f"missing {path} (listed in {MANIFEST}); re-run prepare")
    check_sha256(path, entry["sha256"])
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
