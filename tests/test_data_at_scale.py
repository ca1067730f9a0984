"""Data of any size: an image folder is prepared as it is read (memory that does not grow with the folder, a killed
preparation resumed), the jobs read the prepared splits from disk (each chunk checked before its first use), and the
training's batches do not depend on how many loader processes read them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm.imagefolder as imagefolder
import ddpm.store as store
from ddpm.datasets import load_split, open_split, prepare_dataset, read_manifest
from ddpm.store import SplitImages

SIDE = 64  # the prepared images' side: big enough that the data outgrow everything else in the memory test


def _folder(root: Path, count: int, size=(80, 64), seed: int = 0) -> Path:
    """``count`` JPEG images of random colour blocks (not squares: preprocessing crops them), in two class folders."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(blocks.repeat(8, 0).repeat(8, 1)).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def _checksums(folder: Path) -> dict:
    return {name: entry["sha256"] for name, entry in read_manifest(folder)["files"].items()}


# ----------------------------------------------------------------------------------------------------------------
# Preparing


def test_a_killed_preparation_resumes_and_ends_as_an_uninterrupted_one(tmp_path):
    """SIGKILL in the middle (a process of its own, saving its progress after every image), then `ddpm prepare`
    again: it goes on from the saved image, decodes only the rest, and writes the files a run that was never
    interrupted writes, byte for byte; its partial folder is gone."""
    source = _folder(tmp_path / "images", 60)
    fresh = prepare_dataset("imagefolder", tmp_path / "fresh", path=source, image_size=SIDE, test_fraction=0.25,
                            preprocess="stylegan", progress=False)
    out = tmp_path / "out"
    slow = (f"import sys, time; sys.argv = ['ddpm', 'prepare', '--dataset', 'imagefolder', '--out', {str(out)!r}, "
            f"'--path', {str(source)!r}, '--image-size', '{SIDE}', '--test-fraction', '0.25', '--preprocess', "
            "'stylegan']\n"
            "import ddpm.imagefolder as d\n"
            "d.SAVE_PROGRESS_SECONDS = 0.0\n"
            "load = d.load_image_file\n"
            "d.load_image_file = lambda *a, **k: (time.sleep(0.05), load(*a, **k))[1]\n"
            "from ddpm.cli import main\nmain()\n")
    process = subprocess.Popen([sys.executable, "-c", slow], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / imagefolder.PARTIAL_DIR / "progress.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if json.loads(state.read_text())["done"] >= 20:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.loads(state.read_text())["done"]
    assert 20 <= done < 60 and not (out / "manifest.json").exists()

    decoded = []
    load = imagefolder.load_image_file

    def counting(path, *args, **kwargs):
        decoded.append(path)
        return load(path, *args, **kwargs)

    try:
        imagefolder.load_image_file = counting
        resumed = prepare_dataset("imagefolder", out, path=source, image_size=SIDE, test_fraction=0.25,
                                  preprocess="stylegan", progress=False)
    finally:
        imagefolder.load_image_file = load
    assert len(decoded) == 60 - done  # only what the killed run had not written
    assert _checksums(out) == _checksums(tmp_path / "fresh") and resumed["counts"] == fresh["counts"]
    assert not (out / imagefolder.PARTIAL_DIR).exists()
    assert resumed["preprocess"] == "stylegan" and resumed["class_names"] == ["cats", "dogs"]


def test_a_preparation_of_another_folder_or_size_does_not_resume_the_partial_one(tmp_path, capsys):
    source = _folder(tmp_path / "images", 12)
    partial = tmp_path / "out" / imagefolder.PARTIAL_DIR
    partial.mkdir(parents=True)
    (partial / "progress.json").write_text(json.dumps({"source": str(source.resolve()), "image_size": 32, "done": 6}))
    prepare_dataset("imagefolder", tmp_path / "out", path=source, image_size=SIDE, test_fraction=0.25, progress=False)
    assert "starting over" in capsys.readouterr().out
    fresh = prepare_dataset("imagefolder", tmp_path / "fresh", path=source, image_size=SIDE, test_fraction=0.25,
                            progress=False)
    assert _checksums(tmp_path / "out") == _checksums(tmp_path / "fresh") and fresh["counts"]["train"] == 9


def test_stylegan_preprocessing_crops_the_center_square_then_resizes_with_lanczos(tmp_path):
    """StyleGAN's create_lsun: the center square (offset ⌊(W − H) / 2⌋), then PIL's Lanczos to the size."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)  # H = 40, W = 70
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    got = imagefolder.load_image_file(tmp_path / "wide.png", 16, "stylegan")
    square = Image.fromarray(pixels[:, 15:55])
    expected = np.asarray(square.resize((16, 16), Image.LANCZOS)).transpose(2, 0, 1)
    assert np.array_equal(got, expected)
    assert not np.array_equal(imagefolder.load_image_file(tmp_path / "wide.png", 16, "resize-crop"), expected)
    with pytest.raises(ValueError, match="unknown preprocess 'crop'"):
        prepare_dataset("imagefolder", tmp_path / "out", path=tmp_path, image_size=16, preprocess="crop")


def test_ddim_celeba_preprocessing_is_ermongroup_ddims_transform(tmp_path):
    """ddim-celeba: what ermongroup/ddim's CelebA transform (datasets/__init__.py: torchvision's crop at top 57,
    left 25, 128 × 128, then Resize(64) of the PIL image) makes of an aligned 178 × 218 face, pixel for pixel."""
    from torchvision.transforms import Resize
    from torchvision.transforms.functional import crop

    pixels = np.random.default_rng(2).integers(0, 256, (218, 178, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "000001.png")
    got = imagefolder.load_image_file(tmp_path / "000001.png", 64, "ddim-celeba")
    theirs = Resize(64)(crop(Image.fromarray(pixels), 57, 25, 128, 128))
    assert np.array_equal(got, np.asarray(theirs).transpose(2, 0, 1))
    Image.fromarray(pixels[:200]).save(tmp_path / "other.png")
    with pytest.raises(ValueError, match=r"other.png is 178 × 200: preprocess ddim-celeba takes CelebA's aligned"):
        imagefolder.load_image_file(tmp_path / "other.png", 64, "ddim-celeba")


def _peak_rss_mb(code: str) -> float:
    """The peak resident memory (MB) of a fresh Python process that runs ``code``."""
    wrapped = code + "\nimport resource\nprint('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, check=True).stdout
    return int(out.split("PEAK")[-1]) / 1024


def test_memory_of_prepare_and_train_does_not_grow_with_the_data(tmp_path):
    """Four times the images (12 MB → 49 MB of uint8 at 64², 256 MB as the float32 the old code made of them) move
    the peak memory of `ddpm prepare` and of a few steps of `ddpm train` by far less than the data: nothing holds the
    data set. (docs/benchmarks.md has the same at 1.5 and 6 GiB of 256² images.)"""
    peaks = {}
    for count in (1000, 4000):
        source = _folder(tmp_path / f"images-{count}", count, size=(SIDE, SIDE), seed=count)
        data = tmp_path / f"data-{count}"
        peaks["prepare", count] = _peak_rss_mb(
            "import sys; from ddpm.cli import main; sys.argv = ['ddpm', 'prepare', '--dataset', 'imagefolder', "
            f"'--out', {str(data)!r}, '--path', {str(source)!r}, '--image-size', '{SIDE}', '--test-fraction', "
            "'0.02']; main()")
        peaks["train", count] = _peak_rss_mb(
            "import sys; from ddpm.cli import main; sys.argv = ['ddpm', 'train', '--out', "
            f"{str(tmp_path / f'run-{count}')!r}, '--data', {str(data)!r}, '--dataset', 'imagefolder', '--preset', "
            "'tiny', '--steps', '3', '--batch-size', '4', '--warmup', '1', '--threads', '1', '--data-workers', '0', "
            "'--checkpoint-every', '0']; main()")
        assert len(open_split(data, "train")) == count - round(count * 0.02)
    data_growth = 3000 * 3 * SIDE * SIDE / 2**20  # MB of uint8 the larger folder adds
    for job in ("prepare", "train"):
        growth = peaks[job, 4000] - peaks[job, 1000]
        assert growth < data_growth / 4, (job, peaks, data_growth)


# ----------------------------------------------------------------------------------------------------------------
# Reading


def test_split_images_read_like_the_array_and_check_each_chunk_before_using_it(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "CHECKSUM_CHUNK", 4096)  # many chunks in a small file
    prepare_dataset("digits", tmp_path / "data")
    array = np.load(tmp_path / "data" / "train_images.npy")
    images = open_split(tmp_path / "data", "train")
    assert isinstance(images, SplitImages) and images.shape == array.shape and len(images) == len(array)
    rows = np.array([5, 0, 5, len(array) - 1, -1])
    assert np.array_equal(images[10:30], array[10:30]) and np.array_equal(images[rows], array[rows])
    assert np.array_equal(images[7], array[7]) and np.array_equal(np.asarray(images.head(3)), array[:3])
    assert np.array_equal(load_split(tmp_path / "data", "train")[0], array)
    with pytest.raises(IndexError, match="out of range"):
        images[[len(array)]]

    # A byte changed after preparation, in the chunk of image 1000: that chunk is refused, naming the file; images in
    # other chunks still read (a job reads, and checks, only what it needs).
    offset = images.offset + 1000 * images.row_bytes
    with open(tmp_path / "data" / "train_images.npy", "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))
    again = open_split(tmp_path / "data", "train")
    assert np.array_equal(again[:10], array[:10])
    with pytest.raises(ValueError, match="checksum mismatch for .*train_images.npy"):
        again[1000]
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_split(tmp_path / "data", "train")


def test_training_batches_are_the_same_with_any_number_of_loader_workers(tmp_path):
    """Each step's images are a function of the seed and the step (ddpm.train.batch_indices): reading them in two
    worker processes ahead of the network trains the same weights, bit for bit, as reading them in this one."""
    from ddpm.settings import TrainConfig
    from ddpm.train import batch_indices, train

    prepare_dataset("digits", tmp_path / "data")
    config = TrainConfig(steps=6, batch_size=16, warmup=2, log_every=2, checkpoint_every=0, flip=True)
    weights = []
    for workers in (0, 2):
        train(config, tmp_path / f"run-{workers}", data_dir=tmp_path / "data", progress=False, data_workers=workers)
        weights.append(torch.load(tmp_path / f"run-{workers}" / "checkpoint.pt", weights_only=True)["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert np.array_equal(batch_indices(100, 8, 0, 3), batch_indices(100, 8, 0, 3))
    assert not np.array_equal(batch_indices(100, 8, 0, 3), batch_indices(100, 8, 0, 4))
    assert not np.array_equal(batch_indices(100, 8, 0, 3), batch_indices(100, 8, 1, 3))


def test_the_training_job_refuses_a_changed_train_split_before_it_starts(tmp_path):
    from ddpm.settings import TrainConfig
    from ddpm.train import train

    prepare_dataset("digits", tmp_path / "data")
    path = tmp_path / "data" / "train_images.npy"
    contents = bytearray(path.read_bytes())
    contents[-1] ^= 1
    path.write_bytes(bytes(contents))
    with pytest.raises(ValueError, match="checksum mismatch for .*train_images.npy"):
        train(TrainConfig(steps=2, batch_size=8), tmp_path / "run", data_dir=tmp_path / "data", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert os.path.getsize(path) == len(contents)  # the data are only read
