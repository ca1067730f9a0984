"""``ddpm sample``, ``gather-samples``, ``grid``, ``progressive`` and ``interpolate``: drawing from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from .common import (
    ReadPath, WritePath, _add_job_expectations, _add_runtime, _add_sampler, _add_tracking, _device, _sampler_point,
    _speed, passes_divergence_on, tracking_needed,
)


def add_progressive(p):
    p.add_argument("--checkpoint", required=True, type=ReadPath, help="a checkpoint.pt (trained or imported)")
    p.add_argument("--out", required=True, type=WritePath, help="the PNG: one row per sample, one column per reverse-step stage")
    p.add_argument("--count", type=int, default=8, help="samples, one per row (default: 8)")
    p.add_argument("--columns", type=int, default=10, help="stages of the reverse process (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="the sample set's seed: row i is sample i of it (default: 0)")
    _add_sampler(p)
    _add_job_expectations(p, data=True)
    _add_runtime(p)


@passes_divergence_on("out")
def cmd_progressive(args):
    from ..sample import write_progressive

    write_progressive(args.checkpoint, args.out, count=args.count, columns=args.columns, seed=args.seed,
                      point=_sampler_point(args), device=_device(args.device), setting=args.setting,
                      data_dir=args.data)
    print(f"wrote x̂₀ along the reverse process for {args.count} samples to {args.out}")


def add_interpolate(p):
    p.add_argument("--checkpoint", required=True, type=ReadPath, help="a checkpoint.pt (trained or imported)")
    p.add_argument("--data", required=True, type=ReadPath, help="a prepared dataset folder (its test split)")
    p.add_argument("--out", required=True, type=WritePath, help="the PNG: first image, λ = 0, 0.1, …, 1, second image")
    p.add_argument("--images", type=int, nargs=2, default=[0, 1], help="the two test images (indices)")
    p.add_argument("--t-fraction", type=float, default=0.5, help="encode to x_t with t = this fraction of T")
    p.add_argument("--seed", type=int, default=0, help="seed of the encoding noise and the decoding (default: 0)")
    _add_sampler(p)
    _add_job_expectations(p)
    _add_runtime(p)


@passes_divergence_on("out")
def cmd_interpolate(args):
    from ..sample import write_interpolation

    write_interpolation(args.checkpoint, args.data, args.out, images=args.images, t_fraction=args.t_fraction,
                        seed=args.seed, point=_sampler_point(args), device=_device(args.device),
                        setting=args.setting)
    print(f"wrote the interpolation between test images {args.images[0]} and {args.images[1]} to {args.out}")


def add_sample(p):
    p.add_argument("--checkpoint", required=True, type=ReadPath, help="a checkpoint.pt (trained or imported)")
    p.add_argument("--out", required=True, type=WritePath, help=".npz file for the uint8 samples")
    p.add_argument("--grid", type=WritePath, help="also write a PNG grid here")
    p.add_argument("--start", type=int, default=0, help="index of the first sample")
    p.add_argument("--count", type=int, default=64, help="how many samples (default: 64)")
    p.add_argument("--batch-size", type=int, default=500, help="samples per batch (default: 500)")
    p.add_argument("--seed", type=int, default=0, help="with the index, seeds each sample (default: 0)")
    _add_sampler(p)
    _add_job_expectations(p, data=True)
    _add_runtime(p, speed=True)


@passes_divergence_on("out")
def cmd_sample(args):
    from ..sample import write_sample_shard

    images = write_sample_shard(args.checkpoint, args.out, start=args.start, count=args.count, grid=args.grid,
                                setting=args.setting, data_dir=args.data, batch_size=args.batch_size, seed=args.seed,
                                point=_sampler_point(args), device=_device(args.device), speed=_speed(args))
    print(f"wrote {len(images)} samples to {args.out}" + (f" and a grid to {args.grid}" if args.grid else ""))


def add_gather_samples(p):
    p.add_argument("--shards", nargs="+", required=True, type=ReadPath,
                   help="the sample shards (.npz) of one setting and sampler point")
    p.add_argument("--out", required=True, type=WritePath, help="the merged samples.npz")
    p.add_argument("--sampler-out", type=WritePath, help="write the sampler point and what sampling cost (sampler.json) here; the "
                   "shards must have been drawn by the point of the sampler flags")
    _add_sampler(p)
    _add_job_expectations(p)


@passes_divergence_on("out", "sampler_out", inputs="shards")
def cmd_gather_samples(args):
    from ..gather import write_gathered_samples
    from ..samplers.point import write_sampler

    point = _sampler_point(args) if args.sampler_out else None
    images, cost = write_gathered_samples(args.shards, args.out, setting=args.setting,
                                          sampler=point.name if point else None)
    print(f"gathered {len(images)} samples into {args.out}" + (f" ({json.dumps(cost)})" if cost else ""))
    if point is not None:
        write_sampler(Path(args.sampler_out).parent, point, cost, Path(args.sampler_out).name)


def add_grid(p):
    p.add_argument("--samples", required=True, type=ReadPath, help="a samples file (.npz: gathered, or a shard)")
    p.add_argument("--out", required=True, type=WritePath, help="the PNG")
    p.add_argument("--grid-size", type=int, default=100, help="how many of the first samples (default: 100)")
    p.add_argument("--sampler-file", type=ReadPath,
                   help="the samples' sampler.json: where the point's MLflow run has been made (by its FID job), the "
                        "grid replaces the one it holds")
    p.add_argument("--scores", help="the point's fid_is.json (need not exist): until its FID job has written it, the "
                   "point has no MLflow run to replace a grid in (that job logs the grid), and MLflow is not opened")
    _add_tracking(p)


@passes_divergence_on("out", inputs="samples")
def cmd_grid(args):
    from ..io import load_npz
    from ..io import save_grid

    if args.grid_size < 1:
        raise ValueError(f"--grid-size must be at least 1, got {args.grid_size}")
    images = load_npz(args.samples, ("images",))["images"]
    save_grid(images[: args.grid_size], args.out)
    print(f"grid of the first {min(args.grid_size, len(images))} of {len(images)} samples in {args.out}")
    if tracking_needed(args) and args.run_id_file and args.sampler_file:
        from .. import tracking
        from ..samplers.point import read_sampler_file

        info = tracking.read_tracking(args.tracking, check=False)  # checked before the work: _check_tracking
        setting_run = Path(args.run_id_file).read_text().strip()
        run = tracking.find_sampler_run(info, setting_run, read_sampler_file(args.sampler_file).name)
        if run is not None:  # a grid drawn again (another sample.grid_size): the point's run gets the new one
            tracking.log_artifact(info["tracking_uri"], run.info.run_id, args.out)
            print(f"the grid replaces the one of MLflow run {run.info.run_id}")
