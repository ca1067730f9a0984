"""``ddpm prepare``, ``ddpm classifier`` and ``ddpm bench-data``: the data sets and what reads them."""

from __future__ import annotations

import json
from pathlib import Path

from .common import ReadPath, WritePath, _add_runtime, _device


def add_prepare(p):
    from ..datasets import DATASETS, PREPROCESSES, TEST_FRACTION

    p.add_argument("--dataset", required=True, choices=DATASETS, help="which data set to prepare")
    p.add_argument("--out", required=True, type=WritePath, help="the prepared folder: train/test arrays and manifest.json")
    p.add_argument("--path", type=ReadPath, help="local data: a cifar-10-batches-py folder, or a folder of images")
    p.add_argument("--image-size", type=int, help="resize (and center-crop) to this side (default: the native size)")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10")
    p.add_argument("--test-fraction", type=float, default=TEST_FRACTION,
                   help=f"digits and imagefolder: the share held out as the test split (default: {TEST_FRACTION})")
    p.add_argument("--seed", type=int, default=0, help="the seed of the split (default: 0)")
    p.add_argument("--preprocess", choices=PREPROCESSES, default=PREPROCESSES[0],
                   help="imagefolder: resize-crop (shorter side resized bicubically, center cropped) or stylegan "
                        f"(center square cropped, Lanczos resize: StyleGAN's create_lsun) (default: {PREPROCESSES[0]})")
    p.add_argument("--workers", type=int, default=1,
                   help="imagefolder: processes that decode the images (default: 1, this one)")


def cmd_prepare(args):
    from ..datasets import prepare_dataset

    if args.workers < 1:
        raise SystemExit(f"ddpm prepare: --workers must be at least 1, got {args.workers}")
    manifest = prepare_dataset(args.dataset, args.out, path=args.path, image_size=args.image_size,
                               download=args.download, test_fraction=args.test_fraction, seed=args.seed,
                               preprocess=args.preprocess, workers=args.workers)
    print(json.dumps({k: v for k, v in manifest.items() if k != "files"}, indent=2, default=str))


def add_classifier(p):
    p.add_argument("--data", required=True, type=ReadPath, help="a prepared dataset folder")
    p.add_argument("--out", required=True, type=WritePath, help="the classifier's weights file")
    p.add_argument("--steps", type=int, default=1500, help="training steps (default: 1500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batches (default: 0)")
    _add_runtime(p)


def cmd_classifier(args):
    from ..datasets import open_split, split_labels
    from ..features import train_classifier

    images, labels = open_split(args.data, "train"), split_labels(args.data, "train")
    print(f"training the feature extractor on {len(images)} train images, {args.steps} steps", flush=True)
    summary = train_classifier(images, labels, args.out, steps=args.steps, seed=args.seed, device=_device(args.device),
                               progress=True)
    print(json.dumps(summary, default=str))


def add_bench_data(p):
    p.add_argument("--images", type=int, required=True, help="images in the folder (made under --work unless "
                   "--folder is given)")
    p.add_argument("--side", type=int, default=256, help="the prepared images' side (default: 256, LSUN's)")
    p.add_argument("--folder", help="a folder of images to prepare instead of a made one")
    p.add_argument("--work", required=True, help="where the folder, the prepared data and the run go")
    p.add_argument("--workers", type=int, default=2, help="prepare's decoding processes (default: 2)")
    p.add_argument("--steps", type=int, default=5, help="training steps of the tiny network (default: 5)")
    p.add_argument("--batch-size", type=int, default=1, help="its batch (default: 1)")
    p.add_argument("--speed", default="bf16", help="its speed-ups (default: bf16: the network's activations at 256² "
                   "are most of a training's memory on a CPU)")
    p.add_argument("--data-workers", type=int, default=0, help="its loader processes (default: 0)")
    p.add_argument("--out", default="benchmarks", type=WritePath, help="folder of the JSON record (default: benchmarks)")


def cmd_bench_data(args):
    from ..databench import data_memory, write_data_record

    result = data_memory(Path(args.work), images=args.images, side=args.side, workers=args.workers, steps=args.steps,
                         batch_size=args.batch_size, speed=args.speed, data_workers=args.data_workers,
                         folder=Path(args.folder) if args.folder else None)
    path = write_data_record(result, args.out)
    print(json.dumps({**result, "record": str(path)}, indent=2))
