"""``ddpm bench-data``: the peak memory of ``ddpm prepare`` and ``ddpm train`` on a folder of images, to show that
neither holds the data set (docs/benchmarks.md, "Data of any size").

Each command runs as a process of its own, as a Snakemake job runs it; its peak memory is the largest sum of the
resident memory of the process and its children (prepare's decoding workers), read every 20 ms, and the same of
their anonymous memory (without the mapped pages of torch's libraries, shared by every process that loads them). The folder is made
here (random colour blocks as JPEG files, not square: preprocessing crops them) unless one is given. Torch-free: only
the measured processes import torch.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .io import source_commit, write_json


def make_image_folder(folder: Path, count: int, side: int, seed: int = 0) -> Path:
    """``count`` JPEG images of ``side`` × 5/4·``side`` pixels of random 8×8 colour blocks, in two class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        target = folder / ("a" if i % 2 else "b") / f"{i:07d}.jpg"
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 256, (side // 8, side * 5 // 32, 3), dtype=np.uint8)
        Image.fromarray(blocks.repeat(8, 0).repeat(8, 1)).save(target, quality=90)
    return folder


def _anonymous_bytes(pid: int) -> int:
    """The process's anonymous resident memory (``RssAnon``: what it allocated, not the mapped files of its
    libraries, which every process of the machine that loads them shares)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_memory_mb(command: list[str], interval: float = 0.02) -> dict:
    """Run ``command``; return the peaks of its process tree's summed resident memory (``peak_mb``) and anonymous
    resident memory (``peak_anonymous_mb``, :func:`_anonymous_bytes`), in MB, and its ``seconds``."""
    import psutil

    began = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, anonymous, done = 0, 0, threading.Event()
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [p for p in (root, *root.children(recursive=True)) if p.is_running()]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
            anonymous = max(anonymous, sum(_anonymous_bytes(p.pid) for p in tree))
        except (psutil.Error, OSError):
            pass
        done.wait(interval)
    reader.join()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{''.join(output)[-3000:]}")
    return {"peak_mb": peak / 2**20, "peak_anonymous_mb": anonymous / 2**20, "seconds": time.monotonic() - began}


#: The images of the baseline: the same jobs on a folder this small measure what the program and the network take.
BASELINE_IMAGES = 64


def _prepare_and_train(work: Path, folder: Path, tag: str, *, side: int, workers: int, steps: int, batch_size: int,
                       speed: str, data_workers: int) -> tuple[dict, dict, dict]:
    """Peak memory and seconds of ``ddpm prepare`` of ``folder`` and of ``ddpm train`` on it; and the manifest."""
    from .datasets import read_manifest

    data, run = work / f"prepared-{tag}", work / f"run-{tag}"
    ddpm = [sys.executable, "-m", "ddpm.cli"]
    prepare = peak_memory_mb(
        ddpm + ["prepare", "--dataset", "imagefolder", "--out", str(data), "--path", str(folder), "--image-size",
                str(side), "--test-fraction", "0.02", "--preprocess", "stylegan", "--workers", str(workers)])
    train = peak_memory_mb(
        ddpm + ["train", "--out", str(run), "--data", str(data), "--dataset", "imagefolder", "--preset", "tiny",
                "--steps", str(steps), "--batch-size", str(batch_size), "--warmup", "1", "--checkpoint-every", "0",
                "--log-every", "1", "--threads", "1", "--data-workers", str(data_workers), "--speed", speed])
    return prepare, train, read_manifest(data)


def data_memory(work: Path, *, images: int, side: int = 256, workers: int = 2, steps: int = 5, batch_size: int = 1,
                speed: str = "bf16", data_workers: int = 0, folder: Path | None = None) -> dict:
    """The peak memory of preparing ``images`` images (``folder``, or a folder made under ``work``) at ``side``² and
    of training the ``tiny`` network on them for ``steps`` steps of ``batch_size`` images (at 256² the network's own
    activations are most of a training's memory on a CPU: one image, bf16), beside the same jobs on
    :data:`BASELINE_IMAGES` images (what the program and the network take without the data)."""
    work = Path(work)
    folder = folder or make_image_folder(work / f"images-{images}-{side}", images, side)
    small = make_image_folder(work / f"images-{BASELINE_IMAGES}-{side}", BASELINE_IMAGES, side, seed=1)
    options = dict(side=side, workers=workers, steps=steps, batch_size=batch_size, speed=speed,
                   data_workers=data_workers)
    prepare, train, manifest = _prepare_and_train(work, folder, f"{images}-{side}", **options)
    base_prepare, base_train, _ = _prepare_and_train(work, small, f"{BASELINE_IMAGES}-{side}", **options)
    split_bytes = {split: int(np.prod(manifest["files"][f"{split}_images.npy"]["shape"])) for split in ("train", "test")}
    return {
        "kind": "data-memory",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": source_commit(),
        "device": "cpu",
        "device_name": f"{platform.processor() or platform.machine()}",
        "images": int(manifest["counts"]["train"] + manifest["counts"]["test"]),
        "side": side,
        "prepared_gib": sum(split_bytes.values()) / 2**30,
        "train_split_gib": split_bytes["train"] / 2**30,
        "prepare": {**prepare, "workers": workers},
        "train": {**train, "steps": steps, "batch_size": batch_size, "preset": "tiny", "speed": speed,
                  "data_workers": data_workers},
        "baseline_images": BASELINE_IMAGES,
        "baseline": {"prepare": base_prepare, "train": base_train},
    }


#: In the name of every record of this benchmark (the speed records' readers pass them by).
DATA_RECORD_MARK = "-data-memory-"


def write_data_record(result: dict, folder: str | Path) -> Path:
    """``benchmarks/<date>-cpu-data-memory-<images>x<side>.json``: one file per run, never overwritten."""
    stamp = result["date"].replace(":", "").replace("+0000", "Z")
    path = Path(folder) / f"{stamp}-cpu{DATA_RECORD_MARK}{result['images']}x{result['side']}.json"
    write_json(path, result)
    return path
