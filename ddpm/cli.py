"""The ``ddpm`` command line: every pipeline step also runs by hand, without Snakemake.

    ddpm prepare | classifier | track init | track serve | train | import | sample | progressive | interpolate
    ddpm gather-samples | grid
    ddpm evaluate fid | ref-stats | nll | nll-gather | reconstruction | baseline
    ddpm report | bench | plan | claim-gpus

Each command parses its arguments, calls one function of the package and prints what it did. A setting whose
training diverged is handled here, once, for every command (:func:`passes_divergence_on`); which metrics go to
MLflow is decided by the metric code (``metrics.tracked_scores``, ``evaluate.tracked_bpd``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import NamedTuple

from .vocabulary import BOOTSTRAP_ROUNDS, DECODERS, EXTRACTORS, IMPORT_FORMATS, ON_DIVERGENCE, SAMPLE_VARIANCES, SAMPLERS, SKIPS


class ReadPath(str):
    """A path argument the command reads (``type=ReadPath``): no output of the command may be it (:func:`_check_writes`)."""


class WritePath(str):
    """A path argument the command writes (``type=WritePath``): never one it reads, nor a run's own file."""


def _path_arguments(args: argparse.Namespace, kind: type) -> list[tuple[str, str]]:
    """The (option, path) pairs of ``args`` marked ``kind`` (lists too)."""
    pairs = []
    for dest, value in vars(args).items():
        option = "--" + dest.replace("_", "-") if dest != "source" else "SOURCE"
        pairs += [(option, v) for v in (value if isinstance(value, list) else [value]) if isinstance(v, kind)]
    return pairs


def _check_writes(args: argparse.Namespace) -> None:
    """Before any work: no output is an input, or a run's own file (:func:`ddpm.io.check_writes`; the commands that
    write runs, with ``--force``, check their run folders themselves: :func:`_make_room_for_run`)."""
    from .datasets import prepared_file_of
    from .io import check_writes, run_file_of

    name = " ".join(v for k, v in vars(args).items() if k.endswith("command") and isinstance(v, str))
    owners = (("prepared data set", prepared_file_of),) + (() if hasattr(args, "force") else (("run", run_file_of),))
    check_writes(name, _path_arguments(args, ReadPath), _path_arguments(args, WritePath), owners=owners)


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
        parser.add_argument("--data", type=ReadPath, help="the prepared data folder of the sweep: a checkpoint trained on other "
                            "data is refused")


def _add_tracking(parser: argparse.ArgumentParser, *, sampler_run: bool = False) -> None:
    parser.add_argument("--tracking", type=ReadPath, help="the sweep's MLflow tracking file (written by `ddpm track init`)")
    parser.add_argument("--run-id-file", type=ReadPath, help="the setting's mlflow_run_id.txt, to attach metrics to its run")
    if sampler_run:
        parser.add_argument("--primary", action="store_true",
                            help="the sweep's first sampler point: its scores are also the last point of the "
                                 "setting's FID over training (fid_over_training …, on the setting's run)")


def _add_sampler(parser: argparse.ArgumentParser) -> None:
    """How to sample (:class:`ddpm.settings.SamplerPoint`)."""
    parser.add_argument("--sampler", choices=SAMPLERS, default="ancestral",
                        help="ancestral (DDPM Algorithm 2) or ddim (DDIM Eq. 12) (default: ancestral)")
    parser.add_argument("--steps", type=int, default=None, help="S, the reverse steps (default: all T)")
    parser.add_argument("--skip", choices=SKIPS, default="uniform",
                        help="which S of the T steps: uniform or quadratic (DDIM Appendix D.2) (default: uniform)")
    parser.add_argument("--eta", type=float, default=None, help="ddim only: η in [0, 1] (default: 0, deterministic)")
    parser.add_argument("--variance", choices=SAMPLE_VARIANCES, default=None,
                        help="ancestral only: the model's own σ², or fixedlarge (β) / fixedsmall (β̃) of the "
                             "respaced process (default: model)")
    parser.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True,
                        help="clip x̂₀ to [-1, 1] at every step (default: clip)")


def _sampler_point(args: argparse.Namespace):
    from .settings import SamplerPoint

    return SamplerPoint(args.sampler, args.steps, args.skip, args.eta, args.variance, args.clip).check("")


class _Runs(NamedTuple):
    """The MLflow runs of a job, as (tracking URI, run id) pairs: ``scores``, the runs of the final checkpoint's scores
    (logged at ``step``), and ``curve``, those of FID over training (the setting's run)."""

    scores: list[tuple[str, str]]
    step: int
    curve: list[tuple[str, str]]


def _runs(args: argparse.Namespace, point=None) -> _Runs:
    """The MLflow runs a job logs to, where it was given them (``--tracking``, ``--run-id-file``); a score lives on one
    run (:mod:`ddpm.tracking`). Without a sampler ``point``: the setting's run for both. With one: the scores go to the
    point's run nested under the setting's (found or created, with the setting's axes and the point as params), at
    step S; the curve to the setting's run for the ``--primary`` point only."""
    if not args.tracking or not args.run_id_file:
        return _Runs([], 0, [])
    from . import tracking
    from .settings import read_setting

    info = tracking.read_tracking(args.tracking, check=False)  # checked before the work: _check_tracking
    setting_run = [(info["tracking_uri"], Path(args.run_id_file).read_text().strip())]
    if point is None:
        return _Runs(setting_run, 0, setting_run)
    setting = read_setting(Path(args.run_id_file).parent)
    params = tracking.sampler_params(point, setting.axes())
    point_run = tracking.start_sampler_run(info, setting_run[0][1], args.setting or setting.name, point.name, params)
    return _Runs([(info["tracking_uri"], point_run)], params["S"], setting_run if args.primary else [])


def _check_tracking(args: argparse.Namespace) -> None:
    """Before any work: a command given ``--tracking`` finds its store (a copied or moved project's own) and refuses a
    deleted experiment, parent run, setting run (``--run-id-file``) or sampler point's run (``--sampler-file``),
    naming the command that restores it (:func:`ddpm.tracking.check_active`). A training checks its own, after the
    line that starts each try's log (:func:`cmd_train`)."""
    if not getattr(args, "tracking", None) or args.command == "train":
        return
    from . import tracking

    info = tracking.read_tracking(args.tracking, check=False)
    run_id_file = getattr(args, "run_id_file", None)
    setting_run = Path(run_id_file).read_text().strip() if run_id_file and Path(run_id_file).is_file() else None
    tracking.check_active(info, [setting_run] if setting_run else [])
    if setting_run and getattr(args, "sampler_file", None):
        from .checkpoint import diverged_step
        from .settings import read_sampler_file

        if diverged_step([args.sampler_file]) is None:  # a diverged setting's record names no point: nothing to log
            tracking.find_sampler_run(info, setting_run, read_sampler_file(args.sampler_file).name)


def _log(runs: list[tuple[str, str]], metrics: dict, artifact: str | None = None, step: int = 0) -> None:
    """Log the numbers of ``metrics`` (and ``artifact``) to each of ``runs``."""
    from . import tracking

    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for uri, run_id in runs:
        tracking.log_metrics(uri, run_id, numeric, step)
        if artifact:
            tracking.log_artifact(uri, run_id, artifact)


def _tag(runs: list[tuple[str, str]], tags: dict[str, str]) -> None:
    from . import tracking

    for uri, run_id in runs:
        for key, value in tags.items():
            tracking.set_tag(uri, run_id, key, value)


def _log_to_run(args: argparse.Namespace, metrics: dict, artifact: str | None = None, step: int = 0) -> None:
    """Log to the setting's MLflow run, where the job was given one."""
    _log(_runs(args).scores, metrics, artifact, step)


def passes_divergence_on(*outputs: str, inputs: str | None = None):
    """A command of a setting whose training diverged writes, in place of each of its ``outputs`` (argument names),
    the record that says so (:func:`ddpm.checkpoint.record_divergence`) and succeeds, so that the sweep goes on and
    the report shows the row. The divergence reaches the command through its checkpoint (it raises
    :class:`~ddpm.checkpoint.Diverged`) or through the files of its ``inputs`` argument (records of earlier jobs)."""

    def decorate(command):
        @functools.wraps(command)
        def run(args):
            from .checkpoint import Diverged, diverged_step, record_divergence

            files = getattr(args, inputs) if inputs else []
            step = diverged_step([files] if isinstance(files, str) else files)
            if step is None:
                try:
                    return command(args)
                except Diverged as diverged:
                    step = diverged.step
            for name in outputs:
                if getattr(args, name, None):
                    record_divergence(getattr(args, name), step)
        return run

    return decorate


# ---------------------------------------------------------------------------------------------- commands
def add_prepare(p):
    from .datasets import DATASETS, PREPROCESSES, TEST_FRACTION

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
    from .datasets import prepare_dataset

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
    from .datasets import open_split, split_labels
    from .features import train_classifier

    images, labels = open_split(args.data, "train"), split_labels(args.data, "train")
    print(f"training the feature extractor on {len(images)} train images, {args.steps} steps", flush=True)
    summary = train_classifier(images, labels, args.out, steps=args.steps, seed=args.seed, device=_device(args.device),
                               progress=True)
    print(json.dumps(summary, default=str))


def add_track_init(p):
    p.add_argument("--experiment", required=True, help="the MLflow experiment (the sweep's name)")
    p.add_argument("--sweep-name", help="the parent run's name (default: the experiment's)")
    p.add_argument("--results", default="results", help="results folder (the default SQLite store lives there)")
    p.add_argument("--tracking-uri", help="used when $MLFLOW_TRACKING_URI is unset; default sqlite:///<results>/mlflow.db")
    p.add_argument("--config-json", help="the resolved config, stored with the parent run")
    p.add_argument("--out", required=True, type=WritePath, help="tracking file for the jobs that follow")


def cmd_track_init(args):
    from .tracking import ARTIFACTS_FOLDER, default_tracking_uri, given_tracking_uri, init_sweep, write_tracking

    project_store = given_tracking_uri(args.tracking_uri) is None  # found from the tracking file: write_tracking
    uri = default_tracking_uri(args.results, args.tracking_uri)
    config = json.loads(args.config_json) if args.config_json else {}
    info = init_sweep(uri, args.experiment, args.sweep_name or args.experiment, Path(args.results) / ARTIFACTS_FOLDER,
                      config, project_store=project_store)
    write_tracking(args.out, info, args.results if project_store else None)
    print(json.dumps(info))


def add_track_serve(p):
    p.add_argument("--store", required=True, help="a SQLite file on this machine's own disk, or a database URI")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: every interface)")
    p.add_argument("--port", type=int, default=5000, help="(default: 5000)")
    p.add_argument("--allowed-hosts", help="Host headers to answer (default: this machine's names, with and "
                   "without the port, and localhost)")
    p.add_argument("--workers", type=int, default=4, help="server processes (default: 4)")


def cmd_track_serve(args):
    import os

    from .tracking import serve_command

    command, uri = serve_command(args.store, host=args.host, port=args.port, allowed_hosts=args.allowed_hosts,
                                 workers=args.workers)
    print(f"MLflow tracking server for the jobs: set mlflow.tracking_uri: {uri} in the config (or export "
          f"MLFLOW_TRACKING_URI={uri}) before snakemake; the UI is at the same address", file=sys.stderr, flush=True)
    os.execvp(command[0], command)


def _train_choices() -> dict[str, tuple]:
    """The names each training option takes, from the registries that define them."""
    from .datasets import DATASETS
    from .presets import PRESETS
    from .schedules import SCHEDULES
    from .vocabulary import LOSS_TYPES, MEAN_TYPES, TIMESTEP_SAMPLERS, VAR_TYPES

    return {"dataset": DATASETS, "schedule": tuple(SCHEDULES), "mean_type": MEAN_TYPES, "var_type": VAR_TYPES,
            "loss_type": LOSS_TYPES, "timestep_sampler": TIMESTEP_SAMPLERS, "preset": tuple(PRESETS)}


def add_train(p):
    from .settings import TrainConfig

    p.add_argument("--out", required=True, type=WritePath, help="output folder of the run")
    p.add_argument("--data", type=ReadPath, help="a prepared dataset folder (default: load --dataset by name)")
    p.add_argument("--run-name", help="MLflow run name (default: the output folder's name)")
    p.add_argument("--on-divergence", choices=ON_DIVERGENCE, default="fail",
                   help="NaN / Inf loss: fail (exit 2), or record it in checkpoint.pt and exit 0 so a sweep goes on")
    p.add_argument("--snapshot-steps", type=int, nargs="*", default=[],
                   help="keep the EMA weights at these steps as snapshots/step-<N>.pt (FID over training)")
    p.add_argument("--data-workers", type=int, default=None,
                   help="loader processes reading the next batches from disk (default: 4 on a GPU, 0 on a CPU); the "
                        "batches are the same for any number")
    p.add_argument("--force", action="store_true",
                   help="--out holds a finished run (its checkpoint.pt): train it again from the start, its files "
                        "replaced (without --force such a folder is refused)")
    _add_tracking(p)
    _add_runtime(p, speed=True)
    choices = _train_choices()
    for f in fields(TrainConfig):  # one flag per field of what a checkpoint records
        default = f.default if f.default is not MISSING else None
        kind = {"int": int, "float": float, "bool": _bool}.get(f.type.split(" |")[0], str)  # "float | None" → float
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default,
                       choices=choices.get(f.name), help=f"default: {default}")


def cmd_train(args):
    from .distributed import launched_world
    from .settings import TrainConfig
    from .tracking import read_tracking
    from .train import train

    config = TrainConfig.from_dict({f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    _make_room_for_run(Path(args.out), "train", force=args.force)
    if launched_world().is_main:  # each try of a retried job starts with this line (its tries log keeps them all)
        print(f"== ddpm train {args.run_name or Path(args.out).name}: started {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
              flush=True)
    tracking = read_tracking(args.tracking) if args.tracking else None
    final = train(config, args.out, data_dir=args.data, device=_device(args.device), tracking=tracking,
                  run_name=args.run_name, on_divergence=args.on_divergence, snapshot_steps=args.snapshot_steps,
                  speed=_speed(args), data_workers=args.data_workers)
    if launched_world().is_main:
        print(json.dumps(final))


def _make_room_for_run(folder: Path, command: str, *, force: bool, staged: Path | None = None) -> None:
    """A run's files are written into ``folder`` only where it holds none (a training under way, with only its
    resume state, goes on), or with ``force``: then its own files (:data:`ddpm.io.RUN_FILES`, its snapshots and
    previews) are removed, the checkpoint first, so that the folder is never a mix of two runs that looks whole.
    Without ``force`` a folder with a checkpoint is refused, naming it."""
    from .io import RUN_FILES, RUN_SNAPSHOTS

    checkpoint = folder / RUN_FILES[0]
    if not checkpoint.is_file() and not (command == "import" and (folder / RUN_FILES[1]).is_file()):
        return
    if not force:
        raise ValueError(f"{folder} holds a run already ({checkpoint.name if checkpoint.is_file() else RUN_FILES[1]}):"
                         f" `ddpm {command}` would write over its files; give another --out, or --force to replace "
                         f"that run")
    if staged is None and command == "import":
        return  # checked before any work; the files go once the import has succeeded
    import shutil

    for name in RUN_FILES:  # the checkpoint first: from here the folder is not a finished run
        (folder / name).unlink(missing_ok=True)
    for name in (RUN_SNAPSHOTS, "snapshots-pending", "previews"):
        shutil.rmtree(folder / name, ignore_errors=True)


def add_import(p):
    from .settings import SWEEP_AXES

    p.add_argument("source", type=ReadPath, help="a diffusers model folder (config.json + diffusion_pytorch_model.safetensors or "
                                  ".bin, and its scheduler config), pytorch-ddpm's ckpt.pt, or a Hugging Face model id "
                                  "such as google/ddpm-cifar10-32 (fetched with huggingface_hub where there is a "
                                  "network)")
    p.add_argument("--out", required=True, type=WritePath, help="the checkpoint to write (e.g. results/runs/<sweep>/<setting>/"
                                                "checkpoint.pt); setting.json, metrics.jsonl beside it")
    p.add_argument("--format", choices=IMPORT_FORMATS, help="the source's layout (default: detected)")
    p.add_argument("--revision", help="a Hugging Face model's revision (branch, tag or commit)")
    p.add_argument("--image-size", type=int, help="pytorch-ddpm: the image size (default: its flagfile.txt's "
                                                  "img_size, or 32)")
    p.add_argument("--data", type=ReadPath, help="a prepared dataset folder: the source must generate its image shape")
    p.add_argument("--run-name", help="MLflow run name (default: the output folder's name)")
    p.add_argument("--tracking", type=ReadPath, help="the sweep's MLflow tracking file (written by `ddpm track init`)")
    p.add_argument("--force", action="store_true",
                   help="--out's folder holds a run: replace it (its files go only once the import has succeeded; "
                        "without --force such a folder is refused)")
    for axis in SWEEP_AXES:
        p.add_argument(f"--{axis.replace('_', '-')}", dest=axis, type=int if axis in ("T", "seed") else str,
                       help=f"the setting's {axis}: the source must agree (all six axes, or none)")


def cmd_import(args):
    from . import tracking as mlf
    from .checkpoint import load_checkpoint
    from .pretrained import import_checkpoint
    from .settings import SWEEP_AXES, Setting, write_setting

    given = {axis: getattr(args, axis) for axis in SWEEP_AXES if getattr(args, axis) is not None}
    if given and len(given) != len(SWEEP_AXES):
        raise SystemExit(f"ddpm import: give all of the setting's axes or none; missing: "
                         f"{', '.join('--' + a.replace('_', '-') for a in SWEEP_AXES if a not in given)}")
    setting = Setting.from_dict(given) if given else None
    out = Path(args.out)
    _make_room_for_run(out.parent, "import", force=args.force)
    # Imported beside the target under another name, and put in place last: a failed import leaves the folder as it
    # was, and a crash on the way leaves no checkpoint beside another run's files.
    staged = out.with_name(f".{out.name}.importing")
    try:
        record = import_checkpoint(args.source, staged, fmt=args.format, setting=setting, data_dir=args.data,
                                   revision=args.revision, image_size=args.image_size)
        config = load_checkpoint(staged)["config"]
        run_id = None
        if args.tracking:
            tracking = mlf.read_tracking(args.tracking, check=False)  # checked before the work: _check_tracking
            params = {**config, "source_format": record["format"], "source": record["path"],
                      **{f"source_sha256.{name}": sha for name, sha in record["files"].items()}}
            run_id = mlf.start_setting_run(tracking, args.run_name or out.parent.name, params)
            mlf.set_tag(tracking["tracking_uri"], run_id, "ddpm.imported", record["format"])
            mlf.finish_run(tracking["tracking_uri"], run_id)
        _make_room_for_run(out.parent, "import", force=args.force, staged=staged)  # all that can fail has run
        write_setting(out.parent, Setting.from_dict(config))
        (out.parent / "metrics.jsonl").write_text("")  # no training: no loss curve
        if run_id is not None:
            (out.parent / "mlflow_run_id.txt").write_text(run_id + "\n")
        staged.replace(out)
    finally:
        staged.unlink(missing_ok=True)
    for note in record["notes"]:
        print(f"note: {note}", file=sys.stderr, flush=True)
    print(json.dumps({"checkpoint": str(out), **record, "setting": Setting.from_dict(config).name}, indent=2))


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
    from .sample import write_progressive

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
    from .sample import write_interpolation

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
    from .sample import write_sample_shard

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
    from .evaluate import write_gathered_samples
    from .settings import write_sampler

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
    _add_tracking(p)


@passes_divergence_on("out", inputs="samples")
def cmd_grid(args):
    from .io import load_npz
    from .io import save_grid

    if args.grid_size < 1:
        raise ValueError(f"--grid-size must be at least 1, got {args.grid_size}")
    images = load_npz(args.samples, ("images",))["images"]
    save_grid(images[: args.grid_size], args.out)
    print(f"grid of the first {min(args.grid_size, len(images))} of {len(images)} samples in {args.out}")
    if args.tracking and args.run_id_file and args.sampler_file:
        from . import tracking
        from .settings import read_sampler_file

        info = tracking.read_tracking(args.tracking, check=False)  # checked before the work: _check_tracking
        setting_run = Path(args.run_id_file).read_text().strip()
        run = tracking.find_sampler_run(info, setting_run, read_sampler_file(args.sampler_file).name)
        if run is not None:  # a grid drawn again (another sample.grid_size): the point's run gets the new one
            tracking.log_artifact(info["tracking_uri"], run.info.run_id, args.out)
            print(f"the grid replaces the one of MLflow run {run.info.run_id}")


def _add_reference_images(p):
    p.add_argument("--ref-images", type=int, default=None,
                   help="the reference: the first N train images (default: all; DDPM's LSUN FIDs took 50,000)")


def _add_bootstrap(p):
    p.add_argument("--bootstrap-rounds", type=int, default=BOOTSTRAP_ROUNDS,
                   help="rounds of the bootstrap over the samples behind the standard errors of FID, IS and KID "
                        f"(fid_se, is_se, kid_se; 0: none; default: {BOOTSTRAP_ROUNDS})")


def add_fid(p):
    p.add_argument("--samples", required=True, type=ReadPath, help="the gathered samples.npz")
    p.add_argument("--data", required=True, type=ReadPath, help="the prepared data folder: its train split is the reference")
    p.add_argument("--extractor", default="classifier", choices=EXTRACTORS, help="(default: classifier)")
    p.add_argument("--weights", type=ReadPath, help="extractor weights (the classifier file, or local Inception weights)")
    p.add_argument("--test-reference", action="store_true", help="also FID against the test split (fid_test)")
    p.add_argument("--training-step", type=int,
                   help="the samples come from the checkpoint of this step: also log the scores to MLflow as a curve "
                        "(fid_over_training, is_mean_over_training, … at this step)")
    p.add_argument("--snapshot", action="store_true",
                   help="a snapshot for FID over training, not the final checkpoint: log only the curve's point")
    p.add_argument("--sampler-file", type=ReadPath, help="the samples' sampler.json: log to the sampler point's run")
    p.add_argument("--grid", type=ReadPath, help="the samples' grid (a PNG), attached to the runs the scores go to")
    p.add_argument("--ref-stats", type=ReadPath, help="FID against this statistics file of the train split (`ddpm evaluate "
                   "ref-stats`, checked against --extractor, --weights and --data) instead of the train images' "
                   "features; KID and precision/recall still use the train images")
    p.add_argument("--foreign-ref-stats", action="store_true",
                   help="--ref-stats is a file from elsewhere (pytorch-fid / clean-fid layout: mu and sigma, no .json "
                        "record beside it): use it, checking only its feature dimension")
    _add_reference_images(p)
    _add_bootstrap(p)
    p.add_argument("--out", required=True, type=WritePath, help="the scores, fid_is.json")
    _add_job_expectations(p)
    _add_tracking(p, sampler_run=True)
    _add_runtime(p)


@passes_divergence_on("out", inputs="samples")
def cmd_fid(args):
    from .evaluate import write_scores
    from .metrics import fid_tags, tracked_scores
    from .settings import read_sampler_file
    from .tracking import finish_run

    scores = write_scores(args.samples, args.data, args.out, extractor=args.extractor, weights=args.weights,
                          device=_device(args.device), test_reference=args.test_reference,
                          training_step=args.training_step, setting=args.setting, ref_stats=args.ref_stats,
                          ref_stats_foreign=args.foreign_ref_stats, bootstrap_rounds=args.bootstrap_rounds,
                          reference_images=args.ref_images)
    point = read_sampler_file(args.sampler_file) if args.sampler_file else None
    runs = _runs(args, point)
    for index, (metrics, step) in enumerate(tracked_scores(scores, snapshot=args.snapshot)):
        if index == 0 and not args.snapshot:  # the final checkpoint's scores and what sampling cost (listed first)
            _log(runs.scores, metrics, step=runs.step)
        else:  # a point of FID over training
            _log(runs.curve, metrics, step=step)
    if args.grid:
        _log(runs.scores, {}, artifact=args.grid)
    if not args.snapshot:  # how the final scores were computed: sample count, extractor, reference, weights, seed
        _tag(runs.scores, fid_tags(scores))
    if point is not None:  # the point's last job
        for uri, run_id in runs.scores:
            finish_run(uri, run_id)
    print(json.dumps(scores))


def add_ref_stats(p):
    p.add_argument("--data", required=True, type=ReadPath, help="the prepared data folder (`ddpm prepare`)")
    p.add_argument("--split", choices=["train", "test"], default="train",
                   help="the split whose images the statistics are of (default: train, FID's reference)")
    p.add_argument("--out", required=True, type=WritePath, help="the statistics file, .npz (mu, sigma: pytorch-fid's layout); its "
                   "record goes beside it (same stem, .json)")
    p.add_argument("--extractor", default="classifier", choices=EXTRACTORS,
                   help="the feature extractor FID will be computed with (default: classifier)")
    p.add_argument("--weights", type=ReadPath, help="extractor weights (the classifier file, or local Inception weights)")
    p.add_argument("--num-images", type=int, default=None, help="the split's first N images (default: all)")
    p.add_argument("--batch-size", type=int, default=200, help="images per batch of features (default: 200)")
    _add_runtime(p)


def cmd_ref_stats(args):
    from .refstats import write_ref_stats

    record = write_ref_stats(args.data, args.out, split=args.split, extractor=args.extractor, weights=args.weights,
                             device=_device(args.device), num_images=args.num_images, batch_size=args.batch_size)
    print(f"FID statistics of {record['num_images']} {args.split} images ({record['feature_dim']} "
          f"{args.extractor} features) in {args.out}")


def add_nll(p):
    p.add_argument("--checkpoint", required=True, type=ReadPath, help="a checkpoint.pt (trained or imported)")
    p.add_argument("--data", required=True, type=ReadPath, help="the prepared data folder")
    p.add_argument("--split", choices=["test", "train"], default="test", help="whose images (default: test)")
    p.add_argument("--start", type=int, default=0, help="index of the first image")
    p.add_argument("--count", type=int, default=None, help="how many images (default: the rest of the split)")
    p.add_argument("--batch-size", type=int, default=200, help="images per batch (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="with the index, seeds each image's noise (default: 0)")
    p.add_argument("--decoder", choices=DECODERS, default="exact",
                   help="L_0's decoder likelihood: exact (normal CDF), or official (the papers' code: tanh "
                        "approximation, every bin floored at 1e-12) for parity with published NLLs (default: exact)")
    p.add_argument("--out", required=True, type=WritePath, help="the shard's per-image terms (.npz)")
    _add_job_expectations(p)
    _add_runtime(p, speed=True)


@passes_divergence_on("out")
def cmd_nll(args):
    from .evaluate import write_nll_shard

    shard = write_nll_shard(args.checkpoint, args.data, args.out, setting=args.setting, start=args.start,
                            count=args.count, batch_size=args.batch_size, seed=args.seed, device=_device(args.device),
                            split=args.split, speed=_speed(args), decoder=args.decoder)
    print(f"bits/dim of {args.split} images {shard['indices'][0]}..{shard['indices'][-1]}: {shard['total_bpd'].mean():.4f}")


def add_nll_gather(p):
    p.add_argument("--shards", nargs="+", required=True, type=ReadPath, help="the bits/dim shards (.npz) of one setting")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="the shards' split: MLflow gets bpd (test) or bpd_train (train)")
    p.add_argument("--out", required=True, type=WritePath, help="nll.json: bits/dim and its standard error")
    _add_job_expectations(p)
    _add_tracking(p)


@passes_divergence_on("out", inputs="shards")
def cmd_nll_gather(args):
    from .evaluate import tracked_bpd, write_gathered_nll

    result = write_gathered_nll(args.shards, args.out, split=args.split, setting=args.setting)
    _log_to_run(args, tracked_bpd(result))
    print(f"bits/dim {result['bpd']:.4f} ± {result['bpd_stderr']:.4f} over {result['num_images']} {args.split} images")


def add_reconstruction(p):
    p.add_argument("--checkpoint", required=True, type=ReadPath, help="a checkpoint.pt (trained or imported)")
    p.add_argument("--data", required=True, type=ReadPath, help="the prepared data folder: its test split is encoded and decoded")
    p.add_argument("--steps", type=int, required=True, help="S, the steps of the encoding and of the decoding")
    p.add_argument("--skip", choices=SKIPS, default="uniform",
                   help="which S of the T steps: uniform or quadratic (DDIM Appendix D.2) (default: uniform)")
    p.add_argument("--count", type=int, default=None, help="test images 0..N-1 (default: the whole test split)")
    p.add_argument("--batch-size", type=int, default=250, help="images per batch (default: 250)")
    p.add_argument("--out", required=True, type=WritePath, help="the result (.json): the error, its standard error, S, the network "
                   "evaluations, the checkpoint's provenance")
    _add_job_expectations(p)
    _add_tracking(p)
    _add_runtime(p, speed=True)


@passes_divergence_on("out")
def cmd_reconstruction(args):
    from .reconstruction import METRIC, tracked_reconstruction, write_reconstruction

    result = write_reconstruction(args.checkpoint, args.data, args.out, setting=args.setting, steps=args.steps,
                                  skip=args.skip, count=args.count, batch_size=args.batch_size,
                                  device=_device(args.device), speed=_speed(args))
    metrics, step = tracked_reconstruction(result)
    _log_to_run(args, metrics, step=step)
    print(f"reconstruction error (per-dimension MSE on [0, 1]) on S = {args.steps} steps each way, "
          f"{result['num_images']} test images: {result[METRIC]:.4g} ± {result[METRIC + '_stderr']:.2g}")


def add_baseline(p):
    p.add_argument("--kind", choices=["gaussian", "test_split"], required=True,
                   help="a Gaussian fitted to the train pixels, or the test split itself")
    p.add_argument("--data", required=True, type=ReadPath, help="the prepared data folder")
    p.add_argument("--extractor", default="classifier", choices=EXTRACTORS, help="(default: classifier)")
    p.add_argument("--weights", type=ReadPath, help="extractor weights (the classifier file, or local Inception weights)")
    p.add_argument("--num-samples", type=int, default=1000, help="images to score (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Gaussian's draws (default: 0)")
    _add_reference_images(p)
    _add_bootstrap(p)
    p.add_argument("--out", required=True, type=WritePath, help="the scores (.json)")
    _add_runtime(p)


def cmd_baseline(args):
    from .metrics import write_baseline_scores

    scores = write_baseline_scores(args.kind, args.data, args.out, num_samples=args.num_samples, seed=args.seed,
                                   extractor=args.extractor, weights=args.weights, device=_device(args.device),
                                   bootstrap_rounds=args.bootstrap_rounds, reference_images=args.ref_images)
    print(json.dumps(scores))


def add_report(p):
    p.add_argument("--runs", nargs="+", required=True, type=ReadPath, help="the settings' folders")
    p.add_argument("--gaussian", required=True, type=ReadPath, help="the Gaussian baseline's scores")
    p.add_argument("--test-split", required=True, type=ReadPath, help="the test split's scores")
    p.add_argument("--out-stem", required=True, help="tables go to <stem>.csv, .md, .tex (and <stem>-paper.*, "
                   "<stem>-rate-distortion.*, <stem>-fid-over-training.*, <stem>-samplers.*, "
                   "<stem>-reconstruction.*)")
    p.add_argument("--loss-figure", required=True, type=WritePath, help="the training loss figure (.png)")
    p.add_argument("--rate-distortion-figure", type=WritePath, help="DDPM Figure 5: rate and distortion along the reverse process")
    p.add_argument("--schedules-figure", type=WritePath, help="ᾱ_t and L_T of the sweep's noise schedules, side by side")
    p.add_argument("--schedule-rescale", type=_bool, default=False, help="the sweep's train.schedule_rescale")
    p.add_argument("--snapshot-steps", type=int, nargs="*", default=[],
                   help="the sweep's fid_over_training.steps: read snapshots/step-<N>/fid_is.json of every run")
    p.add_argument("--nll-train", action="store_true", help="the runs have nll-train.json: bits/dim on the train set")
    p.add_argument("--fid-over-training-figure", type=WritePath, help="FID against the training step, each setting's minimum marked")
    p.add_argument("--samplers", nargs="+", default=["ancestral"],
                   help="the sweep's sampler points in order (read samplers/<point>/ of every run); the first is each "
                        "setting's own (default: ancestral)")
    p.add_argument("--samplers-figure", type=WritePath, help="FID against S, one line per sampler (η, σ̂)")
    p.add_argument("--reconstruction-steps", type=int, nargs="*", default=[],
                   help="the sweep's reconstruction.steps: read reconstruction/S<S>.json of every run (DDIM Table 2)")
    p.add_argument("--html-tables", nargs=6, metavar="HTML", type=WritePath,
                   help="also write the tables as HTML pages, to these six paths: the main table, then the paper, "
                        "samplers, FID-over-training, rate-distortion and reconstruction tables (the Snakemake report "
                        "shows them)")
    p.add_argument("--published", type=ReadPath, help="the papers' numbers (CSV): also write <stem>-paper.* with them beside yours")
    p.add_argument("--paper-sweep", help="the sweep name the published numbers are filed under (default: the stem's)")
    p.add_argument("--scaled-down", action="store_true",
                   help="a scale=tiny run: no Δ, every published number is marked not comparable")
    p.add_argument("--tracking", type=ReadPath, help="also attach the tables to the sweep's parent run and finish it")
    p.add_argument("--config-json", help="with --tracking: the sweep's resolved config, stored with the parent run")


def cmd_report(args):
    from .report import write_report

    table = write_report(args.runs, out_stem=args.out_stem, gaussian=args.gaussian, test_split=args.test_split,
                         loss_figure=args.loss_figure, published=args.published, paper_sweep=args.paper_sweep,
                         scaled_down=args.scaled_down, nll_train=args.nll_train, snapshot_steps=args.snapshot_steps,
                         rate_distortion_figure=args.rate_distortion_figure, schedules_figure=args.schedules_figure,
                         schedule_rescale=args.schedule_rescale,
                         fid_over_training_figure=args.fid_over_training_figure, samplers=args.samplers,
                         samplers_figure=args.samplers_figure, tracking=args.tracking,
                         config=json.loads(args.config_json) if args.config_json else None,
                         html_tables=args.html_tables, reconstruction_steps=args.reconstruction_steps)
    print(table.to_string(index=False))


def add_bench(p):
    from .presets import PRESETS

    p.add_argument("--preset", default="cifar10", choices=tuple(PRESETS),
                   help="U-Net preset, on random data of its own image shape (default: cifar10)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch (the paper: 128)")
    p.add_argument("--sample-batch", type=int, default=None, help="sampling and bits/dim batch (default: --batch-size)")
    p.add_argument("--T", type=int, default=1000, help="diffusion steps (default: 1000)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per phase first (compilation, autotuning)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the plain path's training against "
                   "the same U-Net written the straightforward way (the median ratio is reported)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: 0)")
    p.add_argument("--out", default="benchmarks", type=WritePath, help="folder of the JSON records (and the default MLflow store)")
    p.add_argument("--mlflow", type=_bool, default=True, help="also log the run to MLflow (default: true)")
    p.add_argument("--tracking-uri", help="used when $MLFLOW_TRACKING_URI is unset; default sqlite:///<out>/mlflow.db")
    _add_runtime(p, speed=True)


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


def add_plan(p):
    p.add_argument("--configfile", nargs="+", default=[], metavar="FILE",
                   help="the config files, merged in order as Snakemake merges them (default: the demo, config/config.yaml)")
    p.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides as Snakemake's --config takes them, e.g. scale=tiny or 'train={steps: 60}'")
    p.add_argument("--bench", metavar="RECORD", help="the `ddpm bench` record (JSON) whose rates give the hours "
                   "(default: the newest GPU record in benchmarks/, else the newest CPU one, said so)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON, for programs")


def cmd_plan(args):
    from .plan import run

    print(run(args.configfile, args.config, bench=args.bench, as_json=args.json))


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
    from .databench import data_memory, write_data_record

    result = data_memory(Path(args.work), images=args.images, side=args.side, workers=args.workers, steps=args.steps,
                         batch_size=args.batch_size, speed=args.speed, data_workers=args.data_workers,
                         folder=Path(args.folder) if args.folder else None)
    path = write_data_record(result, args.out)
    print(json.dumps({**result, "record": str(path)}, indent=2))


def add_claim_gpus(p):
    p.add_argument("count", type=int, help="how many GPUs")
    p.add_argument("command_line", nargs=argparse.REMAINDER, help="-- then the command")


def cmd_claim_gpus(args):
    from .gpus import run_on_free_gpus

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    run_on_free_gpus(args.count, command)  # does not return


# ---------------------------------------------------------------------------------------------- parser
#: (group, command, help, its arguments, what it runs); group None is a top-level command.
COMMANDS = [
    (None, "prepare", "dataset → uint8 train/test arrays and a manifest with checksums", add_prepare, cmd_prepare),
    (None, "classifier", "train the small classifier used as FID / IS feature extractor", add_classifier,
     cmd_classifier),
    ("track", "init", "create the store, the experiment and the sweep's parent run (run again: the same parent run "
     "is found and reused)", add_track_init, cmd_track_init),
    ("track", "serve", "a tracking server for a cluster's submit node (mlflow server, with the host names the compute "
     "nodes use allowed); SQLite on a network filesystem is refused", add_track_serve, cmd_track_serve),
    (None, "train", "train one setting; writes checkpoint.pt and metrics.jsonl", add_train, cmd_train),
    (None, "import", "published weights (diffusers' DDPM folders, pytorch-ddpm's ckpt.pt) as a checkpoint of this "
     "project, for sampling and scoring like a trained one", add_import, cmd_import),
    (None, "progressive", "x̂₀ along the reverse process as a PNG grid (DDPM Figure 6)", add_progressive,
     cmd_progressive),
    (None, "interpolate", "interpolate two test images through a latent x_t (DDPM Figure 8)", add_interpolate,
     cmd_interpolate),
    (None, "sample", "draw samples from a checkpoint, each seeded by its index", add_sample, cmd_sample),
    (None, "gather-samples", "merge sample shards", add_gather_samples, cmd_gather_samples),
    (None, "grid", "the first samples of a samples file as a PNG grid", add_grid, cmd_grid),
    ("evaluate", "fid", "torch-fidelity metrics of samples against the train split", add_fid, cmd_fid),
    ("evaluate", "ref-stats", "FID's reference statistics of a split (feature mean and covariance) as a file, "
     "computed once for every `evaluate fid --ref-stats`", add_ref_stats, cmd_ref_stats),
    ("evaluate", "nll", "bits/dim (calc_bpd_loop) on a shard of the test (or train) split", add_nll, cmd_nll),
    ("evaluate", "nll-gather", "merge bits/dim shards", add_nll_gather, cmd_nll_gather),
    ("evaluate", "reconstruction", "test images encoded to x_T by DDIM (η = 0) and decoded back on S steps: the "
     "per-dimension MSE on [0, 1] (DDIM Table 2)", add_reconstruction, cmd_reconstruction),
    ("evaluate", "baseline", "score the test split or a fitted Gaussian the same way as samples", add_baseline,
     cmd_baseline),
    (None, "claim-gpus", "run a command on N GPUs no other job holds (sets CUDA_VISIBLE_DEVICES; as it is where it "
     "is already set, or where there is no GPU)", add_claim_gpus, cmd_claim_gpus),
    (None, "bench", "training images/s, sampling and bits/dim image-steps/s and peak memory, with the speed-ups and "
     "on the plain fp32 eager path, and their ratio (JSON)", add_bench, cmd_bench),
    (None, "bench-data", "the peak memory of prepare and train on a folder of images (made here, or given): that "
     "neither holds the data set (JSON record)", add_bench_data, cmd_bench_data),
    (None, "report", "tables (csv, md, tex) and figures of a sweep", add_report, cmd_report),
    (None, "plan", "what a config will cost before it runs: its jobs by kind and their work, hours from a bench "
     "record, the disk its results take", add_plan, cmd_plan),
]
GROUPS = {"track": "MLflow bookkeeping", "evaluate": "FID / IS / KID / PR, bits/dim and the reconstruction error"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ddpm-repro")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "(not installed)"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpm", description="Denoising diffusion probabilistic models: "
                                     "prepare data, train, sample, evaluate, report.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="the installed version of ddpm-repro, and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    groups = {}
    for group, name, help_text, add_arguments, command in COMMANDS:
        if group is not None and group not in groups:
            groups[group] = sub.add_parser(group, help=GROUPS[group]).add_subparsers(
                dest=f"{group}_command", required=True)
        p = (groups[group] if group else sub).add_parser(name, help=help_text)
        add_arguments(p)
        p.set_defaults(func=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    _set_threads(args)
    try:
        _check_writes(args)
        _check_tracking(args)
        args.func(args)
    except Exception as err:
        # Only a training is preempted, and only a command that trains has imported ddpm.train (and torch with it):
        # looked up, not imported, so that a command that needs no torch (prepare, gather, report) loads none.
        train = sys.modules.get(f"{__package__}.train")
        if train is not None and isinstance(err, train.Preempted):
            print(f"ddpm {args.command}: preempted: {err}", file=sys.stderr)
            return train.PREEMPTED_EXIT_CODE
        if not isinstance(err, (ValueError, OSError, FloatingPointError, RuntimeError)):  # OSError: a full disk
            raise
        print(f"ddpm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
