"""Image folders: the images under a folder, their labels (the top-level subfolder, as torchvision's
``ImageFolder``), one image decoded to RGB uint8 (3, S, S), and a whole folder decoded into split files as it is read.

* :func:`load_image_file`: exact RGB pixels or a refusal naming the file and the mode (transparency composited on
  :data:`ALPHA_BACKGROUND`, 16-bit grey scaled), then brought to S × S as :data:`PREPROCESSES` says: ``resize-crop``
  (torchvision's Resize + CenterCrop) or ``stylegan``, the center square resized with Lanczos as StyleGAN's
  ``dataset_tool.py create_lsun`` (Karras et al., 2019) prepared LSUN (Yu et al., 2015) for DDPM (Ho et al., 2020).
* :func:`write_images`: every image of a folder decoded in worker processes and written to its split's file as soon
  as it is decoded (:class:`~ddpm.store.RowWriter`), so memory stays that of a few images whatever the folder holds;
  how far it got is saved in :data:`PARTIAL_DIR`, from which a killed preparation resumes.

``ddpm.datasets`` chooses the split and writes the manifest; PIL is imported inside the functions that decode.
"""

from __future__ import annotations

import numbers
import os
import shutil
import time
from pathlib import Path

import numpy as np

from .io import read_json, write_json
from .progress import progress as progress_lines
from .store import RowWriter

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

ALPHA_BACKGROUND = 255
"""Grey level (255 = white) that transparent and half-transparent pixels are composited onto when an image is read
(:func:`load_image_file`), for every kind of transparency: an alpha channel (``LA``, ``RGBA``, ``PA``, premultiplied
``La``/``RGBa``), a palette's transparent entries (``P`` with ``info['transparency']``) and a PNG's transparent colour
(``tRNS`` in ``1``/``L``/``RGB``/16-bit grey). White, because image folders with transparency are mostly objects cut
out on a transparent page (icons, sprites, product shots) that are meant to be seen on a white page; PIL's own
``convert("RGB")`` would instead drop the alpha and show whatever colour the transparent pixels happen to store
(usually black). Result per channel: ``round(colour * alpha / 255 + ALPHA_BACKGROUND * (1 - alpha / 255))``."""

#: How an image of a folder becomes image_size × image_size (config ``dataset.preprocess``): ``resize-crop``, the
#: shorter side resized bicubically, then the center cropped (torchvision's Resize + CenterCrop); ``stylegan``, the
#: center square cropped, then resized with Lanczos (PIL's ANTIALIAS), as StyleGAN's dataset_tool ``create_lsun``
#: prepared LSUN for DDPM (and for StyleGAN2's FID); ``ddim-celeba``, CelebA's aligned 178 × 218 faces cropped to the
#: 128² box ermongroup/ddim takes (:data:`DDIM_CELEBA_BOX`), then resized bilinearly (torchvision's Resize on PIL).
PREPROCESSES = ("resize-crop", "stylegan", "ddim-celeba")
#: ermongroup/ddim's CelebA crop (datasets/__init__.py: cx = 89, cy = 121, ±64): (left, top, right, bottom) of the
#: aligned images (img_align_celeba, 178 wide, 218 high).
DDIM_CELEBA_BOX, CELEBA_ALIGNED_SIZE = (25, 57, 153, 185), (178, 218)
#: Beside a prepared folder's outputs but not one of them (Snakemake does not delete it after a failed job): the
#: split files of an image folder being prepared and how far it got, from which a killed preparation resumes.
PARTIAL_DIR = "prepare-partial"
#: How often a preparation saves how far it got (after syncing the files): a kill loses at most this much work.
SAVE_PROGRESS_SECONDS = 5.0


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
    ⌊(H − side) / 2⌋) cropped, then resized to S with Lanczos, as StyleGAN's ``create_lsun``; ``ddim-celeba``,
    ermongroup/ddim's box of an aligned CelebA face, resized to S bilinearly (another size of image is refused).

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
    if preprocess == "ddim-celeba":
        if (width, height) != CELEBA_ALIGNED_SIZE:
            raise ValueError(f"{path} is {width} × {height}: preprocess ddim-celeba takes CelebA's aligned images "
                             f"(img_align_celeba, {CELEBA_ALIGNED_SIZE[0]} × {CELEBA_ALIGNED_SIZE[1]})")
        image = image.crop(DDIM_CELEBA_BOX).resize((image_size, image_size), Image.BILINEAR)
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


# --------------------------------------------------------------------------------------------
# Decoding a whole folder into split files, resumably.


def write_images(partial: Path, recipe: dict, root: Path, files: list[str], split_of: np.ndarray,
                 outputs: tuple[str, ...], *, workers: int, progress: bool) -> None:
    """Decode ``files`` (relative to ``root``) with :func:`load_image_file` at ``recipe``'s ``image_size`` and
    ``preprocess``, in ``workers`` processes, into one uint8 ``.npy`` file per split in ``partial``: image ``i`` goes to
    ``outputs[split_of[i]]`` as soon as it is decoded, so memory stays that of a few images. Every
    :data:`SAVE_PROGRESS_SECONDS` (and after the last image) the files are synced and ``partial/progress.json``
    records ``recipe`` and how many images are written; run again after a kill with the same ``recipe`` (which also
    names the ``source`` and its ``source_files`` count), it goes on from there, else it starts over."""
    done = _resume_point(partial, recipe, outputs)
    image_size = recipe["image_size"]
    shape = (3, image_size, image_size)
    writers = [RowWriter(partial / name, (int((split_of == i).sum()), *shape),
                         first_row=int((split_of[:done] == i).sum())) for i, name in enumerate(outputs)]
    decoded = _decoded_images(root, files, done, image_size, recipe["preprocess"], workers)
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


def _resume_point(partial: Path, recipe: dict, outputs: tuple[str, ...]) -> int:
    """How many images an earlier, killed preparation of the same ``recipe`` wrote to ``partial``'s ``outputs`` (0:
    none, or one of another folder or options, whose files are dropped)."""
    state_path = partial / "progress.json"
    if state_path.is_file():
        try:
            state = read_json(state_path)
        except ValueError:
            state = {}
        if {k: state.get(k) for k in recipe} == recipe and all((partial / name).is_file() for name in outputs):
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
