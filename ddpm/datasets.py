"""Datasets as uint8 arrays of shape (N, C, H, W), and their scaling to the model's [-1, 1] (Section 3.3).

Two layers:

* ``load_digits`` / ``load_dataset``: scikit-learn's bundled digits, in memory, no files.
* ``prepare_dataset`` / ``load_split``: a dataset (``digits``, ``cifar10`` or an ``imagefolder``) is
  prepared once into a folder of ``.npy`` files plus ``manifest.json`` (shapes, counts, how the
  split was made, sha256 of every file); ``load_split`` reads one split back and verifies it.

Every prepared file is written atomically (temporary file in the same folder, then ``os.replace``)
and the manifest is written last, so an interrupted preparation never looks complete.

torch is imported inside the few functions that use it: the workflow reads this module's tables (datasets, their
native sizes and split counts) when it parses its config, without importing torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import numbers
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .io import atomic_open

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
    if not isinstance(images, np.ndarray):
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
) -> dict:
    """Write ``{train,test}_{images,labels}.npy`` and ``manifest.json`` for dataset ``name`` into ``out_dir``.

    * ``digits``: scikit-learn's digits, a seeded split (``test_fraction``, ``seed``); 8×8 unless ``image_size``.
    * ``cifar10``: the official train/test split, read from ``path`` (a ``cifar-10-batches-py`` folder or
      its parent) or, with ``download=True``, fetched by torchvision into ``out_dir/download``.
    * ``imagefolder``: every image under ``path`` (recursively); labels from the top-level subfolder;
      shorter side resized to ``image_size`` (required) and center-cropped; a seeded split.

    Images are uint8 (N, C, H, W); labels int64, -1 where there are none. Returns the manifest."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    _check_options(image_size, test_fraction)
    image_size = None if image_size is None else int(image_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    if name == "digits":
        prepared = _prepare_digits(image_size, test_fraction, seed)
    elif name == "cifar10":
        prepared = _prepare_cifar10(out_dir, path, image_size, download)
    else:
        prepared = _prepare_imagefolder(path, image_size, test_fraction, seed)
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


def _prepare_imagefolder(path, image_size: int | None, test_fraction: float, seed: int) -> dict:
    """Every image under ``path``, resized and center-cropped, with folder labels and a seeded split."""
    if path is None:
        raise ValueError("imagefolder needs path= a folder of images")
    if image_size is None:
        raise ValueError("imagefolder needs image_size= (images are resized and center-cropped to it)")
    root = Path(path)
    files = list_image_files(root)
    labels, class_names = folder_labels(root, files)
    images = np.stack([load_image_file(f, image_size) for f in files])
    train_idx, test_idx = seeded_split(len(files), test_fraction, seed)
    relative = "\n".join(f.relative_to(root).as_posix() for f in files)
    return {
        "source": str(root.resolve()),
        "train": (images[train_idx], labels[train_idx]),
        "test": (images[test_idx], labels[test_idx]),
        "num_classes": len(class_names),
        "class_names": class_names,
        "split": _seeded_split_record(test_fraction, seed, test_idx, basis="sorted relative image paths"),
        "source_files": len(files),
        "source_files_sha256": hashlib.sha256(relative.encode("utf-8")).hexdigest(),
        "image_size": image_size,
    }


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


def list_image_files(root: Path) -> list[Path]:
    """Sorted image files under ``root`` (recursively), skipping hidden files and folders (e.g. macOS ``._x.jpg``)."""
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"image folder {root} is not a folder")
    files = sorted(
        (
            p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return files


def folder_labels(root: Path, files: list[Path]) -> tuple[np.ndarray, list[str]]:
    """Label = index of an image's top-level subfolder among the sorted subfolder names; -1 for images directly in ``root``."""
    tops = [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else None for f in files]
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


def load_image_file(path: Path, image_size: int) -> np.ndarray:
    """One image → RGB uint8 (3, S, S): shorter side resized to S (bicubic), then center-cropped.

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
    scale = image_size / min(width, height)
    new_width, new_height = max(image_size, round(width * scale)), max(image_size, round(height * scale))
    image = image.resize((new_width, new_height), Image.BICUBIC)
    left, top = (new_width - image_size) // 2, (new_height - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


# --------------------------------------------------------------------------------------------
# Writing and reading prepared folders.


def _write_prepared(out_dir: Path, name: str, prepared: dict) -> dict:
    """Write the four arrays atomically, then the manifest (last, so partial output never looks complete)."""
    manifest_path = out_dir / MANIFEST
    manifest_path.unlink(missing_ok=True)  # an old manifest must not vouch for half-rewritten files
    files = {}
    for split in SPLITS:
        images, labels = prepared[split]
        images = np.ascontiguousarray(images, dtype=np.uint8)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        files[f"{split}_images.npy"] = _save_npy(out_dir / f"{split}_images.npy", images)
        files[f"{split}_labels.npy"] = _save_npy(out_dir / f"{split}_labels.npy", labels)
    train_images = prepared["train"][0]
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "dataset": name,
        "source": prepared["source"],
        "image_shape": [int(s) for s in train_images.shape[1:]],
        "counts": {split: int(len(prepared[split][0])) for split in SPLITS},
        "num_classes": int(prepared["num_classes"]),
        "class_names": prepared["class_names"],
        "split": prepared["split"],
        "files": files,
    }
    for key in ("downloaded", "native_size", "image_size", "source_files", "source_files_sha256"):
        if key in prepared:
            manifest[key] = prepared[key]
    _atomic_write(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return manifest


def _save_npy(path: Path, array: np.ndarray) -> dict:
    """Save ``array`` atomically as .npy; returns its manifest entry (sha256, shape, dtype)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    _atomic_write(path, data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "shape": list(array.shape), "dtype": str(array.dtype)}


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


def load_split(prepared_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, C, H, W) and labels int64 (N,) of ``split`` ("train" or "test"), checked against the manifest."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    images = _load_verified(prepared_dir, manifest, f"{split}_images.npy")
    labels = _load_verified(prepared_dir, manifest, f"{split}_labels.npy")
    check_images(images, str(prepared_dir / f"{split}_images.npy"), min_count=0)  # a test split may be empty
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise ValueError(f"{prepared_dir / f'{split}_labels.npy'}: expected int64 ({len(images)},), got {labels.dtype} {labels.shape}")
    return images, labels


def _load_verified(prepared_dir: Path, manifest: dict, filename: str) -> np.ndarray:
    """Check ``filename``'s sha256 against the manifest, then load it without pickle."""
    path = prepared_dir / filename
    entry = _checksum_entry(prepared_dir, manifest, filename)
    if not path.is_file():
        raise FileNotFoundError(f"missing {path} (listed in {MANIFEST}); re-run prepare")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ValueError(
            f"checksum mismatch for {path}: manifest has sha256 {entry['sha256']}, file has {actual}; "
            "the file changed after preparation, re-run prepare"
        )
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
