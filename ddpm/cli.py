"""The ``ddpm`` command line: every pipeline step also runs by hand, without Snakemake.

    ddpm prepare | classifier | track init | track serve | train | sample | progressive | interpolate | gather-samples
    ddpm evaluate fid | nll | nll-gather | baseline
    ddpm report | bench | claim-gpus
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _device(name: str) -> str:
    """``auto``: the GPU when there is one, else the CPU."""
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _set_threads(args: argparse.Namespace) -> None:
    """``--threads`` is the job's: the processes torchrun starts on a node share them."""
    if getattr(args, "threads", None):
        import torch

        from .distributed import threads_per_process

        torch.set_num_threads(threads_per_process(args.threads))


def _add_runtime(parser: argparse.ArgumentParser, *, device: bool = True, speed: bool = False) -> None:
    if device:
        parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    if speed:
        parser.add_argument("--speed", default="auto", help="plain (fp32 eager), auto (what pays off on the device), "
                            "or a comma-separated list of bf16, channels_last, compile, cuda_graph, fused_adam, "
                            "foreach_ema, tf32 (default: auto)")


def _speed(args: argparse.Namespace):
    from .speed import Speed

    return Speed.parse(args.speed, _device(args.device))


def _add_job_expectations(parser: argparse.ArgumentParser, *, data: bool = False) -> None:
    """``--setting`` (and ``--data``): what the job is for, so that files of another setting, checkpoint or data set
    are refused (:mod:`ddpm.checkpoint`'s provenance) instead of silently scored."""
    parser.add_argument("--setting", help="the setting this job is for (e.g. linear-T1000-eps-fixedlarge-mse-s0): "
                        "a checkpoint trained as another setting, or files made from one, are refused")
    if data:
        parser.add_argument("--data", help="the prepared data folder of the sweep: a checkpoint trained on other "
                            "data is refused")


def _add_tracking(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking", help="the sweep's MLflow tracking file (written by `ddpm track init`)")
    parser.add_argument("--run-id-file", help="the setting's mlflow_run_id.txt, to attach metrics to its run")


def _log_to_run(args: argparse.Namespace, metrics: dict, artifact: str | None = None, step: int = 0) -> None:
    if not args.tracking or not args.run_id_file:
        return
    from . import tracking

    uri = tracking.read_tracking(args.tracking)["tracking_uri"]
    run_id = Path(args.run_id_file).read_text().strip()
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracking.log_metrics(uri, run_id, numeric, step)
    if artifact:
        tracking.log_artifact(uri, run_id, artifact)


# ---------------------------------------------------------------------------------------------- commands
def cmd_prepare(args):
    from .datasets import prepare_dataset

    manifest = prepare_dataset(args.dataset, args.out, path=args.path, image_size=args.image_size,
                               download=args.download, test_fraction=args.test_fraction, seed=args.seed)
    print(json.dumps({k: v for k, v in manifest.items() if k != "files"}, indent=2, default=str))


def cmd_classifier(args):
    from .datasets import load_split
    from .features import train_classifier

    images, labels = load_split(args.data, "train")
    summary = train_classifier(images, labels, args.out, steps=args.steps, seed=args.seed, device=_device(args.device))
    print(json.dumps(summary, default=str))


def cmd_track_init(args):
    from .io import write_json
    from .tracking import default_tracking_uri, init_sweep

    uri = default_tracking_uri(args.results, args.tracking_uri)
    config = json.loads(args.config_json) if args.config_json else {}
    info = init_sweep(uri, args.experiment, args.sweep_name or args.experiment, Path(args.results) / "mlartifacts", config)
    write_json(args.out, info)
    print(json.dumps(info))


def cmd_track_serve(args):
    import os

    from .tracking import serve_command

    command, uri = serve_command(args.store, host=args.host, port=args.port, allowed_hosts=args.allowed_hosts,
                                 workers=args.workers)
    print(f"MLflow tracking server for the jobs: set mlflow.tracking_uri: {uri} in the config (or export "
          f"MLFLOW_TRACKING_URI={uri}) before snakemake; the UI is at the same address", file=sys.stderr, flush=True)
    os.execvp(command[0], command)


def _train_flags(parser: argparse.ArgumentParser) -> None:
    from .settings import TrainConfig

    for f in fields(TrainConfig):
        default = f.default if f.default is not MISSING else None
        kind = {"int": int, "float": float, "bool": _bool}.get(f.type.split(" |")[0], str)  # "float | None" → float
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default,
                            help=f"default: {default}")


def cmd_train(args):
    from .distributed import launched_world
    from .settings import TrainConfig
    from .tracking import read_tracking
    from .train import train

    config = TrainConfig.from_dict({f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    if launched_world().is_main:  # each try of a retried job starts with this line (its tries log keeps them all)
        print(f"== ddpm train {args.run_name or Path(args.out).name}: started {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
              flush=True)
    tracking = read_tracking(args.tracking) if args.tracking else None
    final = train(config, args.out, data_dir=args.data, device=_device(args.device), tracking=tracking,
                  run_name=args.run_name, on_divergence=args.on_divergence, snapshot_steps=args.snapshot_steps,
                  speed=_speed(args))
    if launched_world().is_main:
        print(json.dumps(final))


def cmd_sample(args):
    import numpy as np

    from .checkpoint import Diverged, checkpoint_provenance
    from .evaluate import provenance_arrays, write_diverged
    from .io import save_npz
    from .sample import sample_checkpoint, save_grid

    provenance = checkpoint_provenance(args.checkpoint, setting=args.setting, data_dir=args.data)
    try:
        images = sample_checkpoint(args.checkpoint, start=args.start, count=args.count, batch_size=args.batch_size,
                                   seed=args.seed, steps=args.steps, device=_device(args.device), speed=_speed(args))
    except Diverged as diverged:
        return write_diverged(args.out, diverged.step)
    save_npz(args.out, images=images, indices=np.arange(args.start, args.start + args.count),
             **provenance_arrays(provenance))
    if args.grid:
        save_grid(images, args.grid)
    print(f"wrote {len(images)} samples to {args.out}" + (f" and a grid to {args.grid}" if args.grid else ""))


def cmd_progressive(args):
    from .checkpoint import Diverged, checkpoint_provenance
    from .sample import progressive_generation, save_diverged_notice, save_grid

    checkpoint_provenance(args.checkpoint, setting=args.setting, data_dir=args.data)
    try:
        images = progressive_generation(args.checkpoint, count=args.count, columns=args.columns, seed=args.seed,
                                        steps=args.steps, device=_device(args.device))
    except Diverged as diverged:
        return save_diverged_notice(diverged.step, args.out)
    save_grid(images, args.out, nrow=args.columns)
    print(f"wrote x̂₀ along the reverse process for {args.count} samples to {args.out}")


def cmd_interpolate(args):
    from .checkpoint import Diverged, checkpoint_provenance
    from .datasets import load_split
    from .sample import interpolate, save_diverged_notice, save_grid

    checkpoint_provenance(args.checkpoint, setting=args.setting, data_dir=args.data)
    test = load_split(args.data, "test")[0]
    if max(args.images) >= len(test):
        raise ValueError(f"--images {args.images}: the test split of {args.data} has {len(test)} images")
    try:
        images = interpolate(args.checkpoint, test[args.images[0]], test[args.images[1]], t_fraction=args.t_fraction,
                             seed=args.seed, steps=args.steps, device=_device(args.device))
    except Diverged as diverged:
        return save_diverged_notice(diverged.step, args.out)
    save_grid(images, args.out, nrow=len(images))
    print(f"wrote the interpolation between test images {args.images[0]} and {args.images[1]} to {args.out}")


def cmd_gather_samples(args):
    from .evaluate import agreed_provenance, diverged_step, gather_samples, provenance_arrays, write_diverged
    from .io import save_npz
    from .sample import save_diverged_notice, save_grid

    step = diverged_step(args.shards)
    if step is not None:
        if args.grid:
            save_diverged_notice(step, args.grid)
        return write_diverged(args.out, step)
    provenance = agreed_provenance(args.shards, setting=args.setting)
    images, indices = gather_samples(args.shards)
    save_npz(args.out, images=images, indices=indices, **provenance_arrays(provenance))
    print(f"gathered {len(images)} samples into {args.out}")
    if args.grid:
        save_grid(images[: args.grid_size], args.grid)
        _log_to_run(args, {}, artifact=args.grid)
        print(f"grid of {min(args.grid_size, len(images))} samples in {args.grid}")


def cmd_fid(args):
    from .checkpoint import check_provenance
    from .datasets import check_images, load_split, split_sha256
    from .evaluate import diverged_step, read_provenance, write_diverged
    from .io import load_npz, write_json
    from .metrics import fidelity_metrics

    step = diverged_step([args.samples])
    if step is not None:
        return write_diverged(args.out, step)
    provenance = read_provenance(args.samples)
    if args.setting is not None:  # samples of this setting, from a model trained on this reference's data
        check_provenance(provenance, args.samples, setting=args.setting)
        if provenance.get("data_sha256"):
            check_provenance(provenance, args.samples, data_sha256=split_sha256(args.data, "train"))
    reference = load_split(args.data, "train")[0]
    samples = load_npz(args.samples, ("images",))["images"]
    check_images(samples, f"samples in {args.samples}", shape=reference.shape[1:])  # the data set's shape, exactly
    scores = fidelity_metrics(samples, reference, extractor=args.extractor, weights_path=args.weights,
                              device=_device(args.device))
    if args.test_reference:  # DDPM Table 1 also gives FID against the test set
        test = load_split(args.data, "test")[0]
        scores["fid_test"] = fidelity_metrics(samples, test, extractor=args.extractor, weights_path=args.weights,
                                              device=_device(args.device), metrics=("fid",))["fid"]
        scores["num_test_reference"] = len(test)
    if args.training_step is not None:
        scores["training_step"] = args.training_step
    write_json(args.out, {**scores, **provenance})
    logged = {k: v for k, v in scores.items() if k in ("fid", "fid_test", "is_mean", "is_std", "kid_mean", "kid_std",
                                                      "precision", "recall")}
    if not args.snapshot:  # the plain names are the final checkpoint's
        _log_to_run(args, logged)
    if args.training_step is not None:
        _log_to_run(args, {f"{k}_over_training": v for k, v in logged.items()}, step=args.training_step)
    print(json.dumps(scores))


def cmd_nll(args):
    from .checkpoint import Diverged, checkpoint_provenance
    from .evaluate import nll_shard, provenance_arrays, write_diverged
    from .io import save_npz

    provenance = checkpoint_provenance(args.checkpoint, setting=args.setting, data_dir=args.data)
    try:
        shard = nll_shard(args.checkpoint, args.data, start=args.start, count=args.count, batch_size=args.batch_size,
                          seed=args.seed, device=_device(args.device), split=args.split, speed=_speed(args))
    except Diverged as diverged:
        return write_diverged(args.out, diverged.step)
    save_npz(args.out, **shard, **provenance_arrays(provenance))
    print(f"bits/dim of {args.split} images {shard['indices'][0]}..{shard['indices'][-1]}: {shard['total_bpd'].mean():.4f}")


def cmd_nll_gather(args):
    from .evaluate import agreed_provenance, diverged_step, gather_nll, write_diverged
    from .io import write_json

    step = diverged_step(args.shards)
    if step is not None:
        return write_diverged(args.out, step)
    provenance = agreed_provenance(args.shards, setting=args.setting)
    result = {**gather_nll(args.shards), "split": args.split, **provenance}
    write_json(args.out, result)
    metric = "bpd" if args.split == "test" else "bpd_train"
    _log_to_run(args, {metric: result["bpd"], f"{metric}_stderr": result["bpd_stderr"]})
    print(f"bits/dim {result['bpd']:.4f} ± {result['bpd_stderr']:.4f} over {result['num_images']} {args.split} images")


def cmd_baseline(args):
    from .datasets import load_split
    from .io import write_json
    from .metrics import fidelity_metrics, gaussian_baseline_samples

    train_images = load_split(args.data, "train")[0]
    if args.kind == "gaussian":
        candidates = gaussian_baseline_samples(train_images, args.num_samples, args.seed)
    else:
        candidates = load_split(args.data, "test")[0][: args.num_samples]
    scores = fidelity_metrics(candidates, train_images, extractor=args.extractor, weights_path=args.weights,
                              device=_device(args.device))
    write_json(args.out, {**scores, "baseline": args.kind})
    print(json.dumps(scores))


def cmd_report(args):
    from . import tracking
    from .paper import load_published
    from .report import (build_table, fid_over_training_table, paper_table, plot_fid_over_training, plot_loss_curves,
                         plot_rate_distortion, plot_schedules, rate_distortion_table, write_tables)

    published = load_published(args.published) if args.published else None  # read first: a bad file stops here
    args.paper_sweep = args.paper_sweep or Path(args.out_stem).name
    run_dirs = {Path(r).name: Path(r) for r in args.runs}
    table = build_table(run_dirs, {"gaussian baseline": Path(args.gaussian), "test split (floor)": Path(args.test_split)},
                        nll_train=args.nll_train)
    outputs = write_tables(table, args.out_stem)
    curve = fid_over_training_table(run_dirs, args.snapshot_steps)
    outputs += write_tables(curve, f"{args.out_stem}-fid-over-training")
    if published is not None:
        beside = paper_table(table, published, args.paper_sweep, comparable=not args.scaled_down, curve=curve)
        outputs += write_tables(beside, f"{args.out_stem}-paper")
        print(beside.to_string(index=False))
    outputs += write_tables(rate_distortion_table(run_dirs, published, args.paper_sweep), f"{args.out_stem}-rate-distortion")
    plot_loss_curves(run_dirs, args.loss_figure)
    figures = [Path(args.loss_figure)]
    if args.rate_distortion_figure:
        plot_rate_distortion(run_dirs, args.rate_distortion_figure)
        figures.append(Path(args.rate_distortion_figure))
    if args.schedules_figure:
        plot_schedules(run_dirs, args.schedules_figure, rescale=args.schedule_rescale)
        figures.append(Path(args.schedules_figure))
    if args.fid_over_training_figure:
        plot_fid_over_training(curve, args.fid_over_training_figure)
        figures.append(Path(args.fid_over_training_figure))
    if args.tracking:
        info = tracking.read_tracking(args.tracking)
        if args.config_json:
            tracking.log_config(info["tracking_uri"], info["parent_run_id"], json.loads(args.config_json))
        for path in [*outputs, *figures]:
            tracking.log_artifact(info["tracking_uri"], info["parent_run_id"], path, "report")
        tracking.finish_run(info["tracking_uri"], info["parent_run_id"], "FINISHED")
    print(table.to_string(index=False))


def cmd_bench(args):
    from .bench import log_to_mlflow, run_bench, write_record
    from .tracking import default_tracking_uri

    result = run_bench(args.preset, device=_device(args.device), speed=_speed(args), batch_size=args.batch_size,
                       sample_batch=args.sample_batch, T=args.T, steps=args.steps, warmup=args.warmup, seed=args.seed,
                       rounds=args.rounds)
    path = write_record(result, args.out)
    if args.mlflow:
        uri = default_tracking_uri(args.out, args.tracking_uri)
        result["mlflow_run_id"] = log_to_mlflow(result, uri, Path(args.out) / "mlartifacts")
    print(json.dumps({**result, "record": str(path)}, indent=2))


def cmd_claim_gpus(args):
    from .gpus import run_on_free_gpus

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    run_on_free_gpus(args.count, command)  # does not return


# ---------------------------------------------------------------------------------------------- parser
def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpm", description="Denoising diffusion probabilistic models: "
                                     "prepare data, train, sample, evaluate, report.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="dataset → uint8 train/test arrays and a manifest with checksums")
    p.add_argument("--dataset", required=True, help="digits, cifar10 or imagefolder")
    p.add_argument("--out", required=True)
    p.add_argument("--path", help="local data: a cifar-10-batches-py folder, or a folder of images")
    p.add_argument("--image-size", type=int)
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10")
    p.add_argument("--test-fraction", type=float, default=1 / 6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("classifier", help="train the small classifier used as FID / IS feature extractor")
    p.add_argument("--data", required=True, help="a prepared dataset folder")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    _add_runtime(p)
    p.set_defaults(func=cmd_classifier)

    track = sub.add_parser("track", help="MLflow bookkeeping").add_subparsers(dest="track_command", required=True)
    p = track.add_parser("init", help="create the store, the experiment and the sweep's parent run (run again: "
                         "the same parent run is found and reused)")
    p.add_argument("--experiment", required=True)
    p.add_argument("--sweep-name")
    p.add_argument("--results", default="results", help="results folder (the default SQLite store lives there)")
    p.add_argument("--tracking-uri", help="used when $MLFLOW_TRACKING_URI is unset; default sqlite:///<results>/mlflow.db")
    p.add_argument("--config-json", help="the resolved config, stored with the parent run")
    p.add_argument("--out", required=True, help="tracking file for the jobs that follow")
    p.set_defaults(func=cmd_track_init)

    p = track.add_parser("serve", help="a tracking server for a cluster's submit node (mlflow server, with the host "
                         "names the compute nodes use allowed); SQLite on a network filesystem is refused")
    p.add_argument("--store", required=True, help="a SQLite file on this machine's own disk, or a database URI")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: every interface)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--allowed-hosts", help="Host headers to answer (default: this machine's names, with and "
                   "without the port, and localhost)")
    p.add_argument("--workers", type=int, default=4)
    p.set_defaults(func=cmd_track_serve)

    p = sub.add_parser("train", help="train one setting; writes checkpoint.pt and metrics.jsonl")
    p.add_argument("--out", required=True, help="output folder of the run")
    p.add_argument("--data", help="a prepared dataset folder (default: load --dataset by name)")
    p.add_argument("--run-name", help="MLflow run name (default: the output folder's name)")
    p.add_argument("--on-divergence", choices=["fail", "record"], default="fail",
                   help="NaN / Inf loss: fail (exit 2), or record it in checkpoint.pt and exit 0 so a sweep goes on")
    p.add_argument("--snapshot-steps", type=int, nargs="*", default=[],
                   help="keep the EMA weights at these steps as snapshots/step-<N>.pt (FID over training)")
    _add_tracking(p)
    _add_runtime(p, speed=True)
    _train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("progressive", help="x̂₀ along the reverse process as a PNG grid (DDPM Figure 6)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="the PNG: one row per sample, one column per reverse-step stage")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--columns", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="respace the reverse process to this many steps")
    _add_job_expectations(p, data=True)
    _add_runtime(p)
    p.set_defaults(func=cmd_progressive)

    p = sub.add_parser("interpolate", help="interpolate two test images through a latent x_t (DDPM Figure 8)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="a prepared dataset folder (its test split)")
    p.add_argument("--out", required=True, help="the PNG: first image, λ = 0, 0.1, …, 1, second image")
    p.add_argument("--images", type=int, nargs=2, default=[0, 1], help="the two test images (indices)")
    p.add_argument("--t-fraction", type=float, default=0.5, help="encode to x_t with t = this fraction of T")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="respace the reverse process to this many steps")
    _add_job_expectations(p)
    _add_runtime(p)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("sample", help="draw samples from a checkpoint, each seeded by its index")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help=".npz file for the uint8 samples")
    p.add_argument("--grid", help="also write a PNG grid here")
    p.add_argument("--start", type=int, default=0, help="index of the first sample")
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="respace to this many sampling steps (default: all T)")
    _add_job_expectations(p, data=True)
    _add_runtime(p, speed=True)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("gather-samples", help="merge sample shards and draw the grid")
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--grid", help="also draw a grid of the first --grid-size samples here (a PNG)")
    p.add_argument("--grid-size", type=int, default=100)
    _add_job_expectations(p)
    _add_tracking(p)
    p.set_defaults(func=cmd_gather_samples)

    evaluate = sub.add_parser("evaluate", help="FID / IS / KID / PR and bits/dim").add_subparsers(
        dest="evaluate_command", required=True)
    p = evaluate.add_parser("fid", help="torch-fidelity metrics of samples against the train split")
    p.add_argument("--samples", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--extractor", default="classifier", help="classifier or inception-v3-compat")
    p.add_argument("--weights", help="extractor weights (the classifier file, or local Inception weights)")
    p.add_argument("--test-reference", action="store_true", help="also FID against the test split (fid_test)")
    p.add_argument("--training-step", type=int,
                   help="the samples come from the checkpoint of this step: also log the scores to MLflow as a curve "
                        "(fid_over_training, is_mean_over_training, … at this step)")
    p.add_argument("--snapshot", action="store_true",
                   help="a snapshot for FID over training, not the final checkpoint: log only the curve's point")
    p.add_argument("--out", required=True)
    _add_job_expectations(p)
    _add_tracking(p)
    _add_runtime(p)
    p.set_defaults(func=cmd_fid)

    p = evaluate.add_parser("nll", help="bits/dim (calc_bpd_loop) on a shard of the test (or train) split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    _add_job_expectations(p)
    _add_runtime(p, speed=True)
    p.set_defaults(func=cmd_nll)

    p = evaluate.add_parser("nll-gather", help="merge bits/dim shards")
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="the shards' split: MLflow gets bpd (test) or bpd_train (train)")
    p.add_argument("--out", required=True)
    _add_job_expectations(p)
    _add_tracking(p)
    p.set_defaults(func=cmd_nll_gather)

    p = evaluate.add_parser("baseline", help="score the test split or a fitted Gaussian the same way as samples")
    p.add_argument("--kind", choices=["gaussian", "test_split"], required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--extractor", default="classifier")
    p.add_argument("--weights")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    _add_runtime(p)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("claim-gpus", help="run a command on N GPUs no other job holds (sets CUDA_VISIBLE_DEVICES; "
                       "as it is where it is already set, or where there is no GPU)")
    p.add_argument("count", type=int, help="how many GPUs")
    p.add_argument("command_line", nargs=argparse.REMAINDER, help="-- then the command")
    p.set_defaults(func=cmd_claim_gpus)

    p = sub.add_parser("bench", help="training images/s, sampling and bits/dim image-steps/s and peak memory, "
                                      "with the speed-ups and on the plain fp32 eager path, and their ratio (JSON)")
    p.add_argument("--preset", default="cifar10", help="U-Net preset, on random data of its data set's shape")
    p.add_argument("--batch-size", type=int, default=128, help="training batch (the paper: 128)")
    p.add_argument("--sample-batch", type=int, default=None, help="sampling and bits/dim batch (default: --batch-size)")
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per phase first (compilation, autotuning)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the plain path's training against "
                   "the same U-Net written the straightforward way (the median ratio is reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks", help="folder of the JSON records (and the default MLflow store)")
    p.add_argument("--mlflow", type=_bool, default=True, help="also log the run to MLflow (default: true)")
    p.add_argument("--tracking-uri", help="used when $MLFLOW_TRACKING_URI is unset; default sqlite:///<out>/mlflow.db")
    _add_runtime(p, speed=True)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="tables (csv, md, tex) and figures of a sweep")
    p.add_argument("--runs", nargs="+", required=True, help="the settings' folders")
    p.add_argument("--gaussian", required=True, help="the Gaussian baseline's scores")
    p.add_argument("--test-split", required=True, help="the test split's scores")
    p.add_argument("--out-stem", required=True, help="tables go to <stem>.csv, .md, .tex (and <stem>-paper.*, "
                   "<stem>-rate-distortion.*, <stem>-fid-over-training.*)")
    p.add_argument("--loss-figure", required=True)
    p.add_argument("--rate-distortion-figure", help="DDPM Figure 5: rate and distortion along the reverse process")
    p.add_argument("--schedules-figure", help="ᾱ_t and L_T of the sweep's noise schedules, side by side")
    p.add_argument("--schedule-rescale", type=_bool, default=False, help="the sweep's train.schedule_rescale")
    p.add_argument("--snapshot-steps", type=int, nargs="*", default=[],
                   help="the sweep's fid_over_training.steps: read snapshots/step-<N>/fid_is.json of every run")
    p.add_argument("--nll-train", action="store_true", help="the runs have nll-train.json: bits/dim on the train set")
    p.add_argument("--fid-over-training-figure", help="FID against the training step, each setting's minimum marked")
    p.add_argument("--published", help="the papers' numbers (CSV): also write <stem>-paper.* with them beside yours")
    p.add_argument("--paper-sweep", help="the sweep name the published numbers are filed under (default: the stem's)")
    p.add_argument("--scaled-down", action="store_true", help="a scale=tiny run: no Δ columns, it is not comparable")
    p.add_argument("--tracking", help="also attach the tables to the sweep's parent run and finish it")
    p.add_argument("--config-json", help="with --tracking: the sweep's resolved config, stored with the parent run")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    _set_threads(args)
    from .train import PREEMPTED_EXIT_CODE, Preempted

    try:
        args.func(args)
    except Preempted as err:
        print(f"ddpm {args.command}: preempted: {err}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except (ValueError, OSError, FloatingPointError, RuntimeError) as err:  # OSError: e.g. a full disk
        print(f"ddpm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
