"""``ddpm train``, ``ddpm import`` (published weights as a run of this project) and ``ddpm claim-gpus``."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path

from ..vocabulary import IMPORT_FORMATS, ON_DIVERGENCE

from .common import ReadPath, WritePath, _add_runtime, _add_tracking, _bool, _device, _speed


def _train_choices() -> dict[str, tuple]:
    """The names each training option takes, from the registries that define them."""
    from ..datasets import DATASETS
    from ..presets import PRESETS
    from ..schedules import SCHEDULES
    from ..vocabulary import LOSS_TYPES, MEAN_TYPES, TIMESTEP_SAMPLERS, VAR_TYPES

    return {"dataset": DATASETS, "schedule": tuple(SCHEDULES), "mean_type": MEAN_TYPES, "var_type": VAR_TYPES,
            "loss_type": LOSS_TYPES, "timestep_sampler": TIMESTEP_SAMPLERS, "preset": tuple(PRESETS)}


def add_train(p):
    from ..settings import TrainConfig

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
    from ..distributed import launched_world
    from ..settings import TrainConfig
    from ..tracking import read_tracking
    from ..train import train

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
    from ..io import RUN_FILES, RUN_SNAPSHOTS

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
    from ..settings import SWEEP_AXES

    p.add_argument("source", type=ReadPath, help="a diffusers model folder (config.json + diffusion_pytorch_model.safetensors or "
                                  ".bin, and its scheduler config), pytorch-ddpm's ckpt.pt, pytorch_diffusion's "
                                  "model-N.ckpt, ermongroup/ddim's ckpt.pth, an improved-diffusion .pt, or a Hugging "
                                  "Face model id such as google/ddpm-cifar10-32 (fetched with huggingface_hub where "
                                  "there is a network)")
    p.add_argument("--out", required=True, type=WritePath, help="the checkpoint to write (e.g. results/runs/<sweep>/<setting>/"
                                                "checkpoint.pt); setting.json, metrics.jsonl beside it")
    p.add_argument("--format", choices=IMPORT_FORMATS, help="the source's layout (default: recognised by its "
                                                            "contents; given, it must be what they are)")
    p.add_argument("--revision", help="a Hugging Face model's revision (branch, tag or commit)")
    p.add_argument("--image-size", type=int, help="the image size, where the source does not say it (default: "
                                                  "--data's; pytorch-ddpm: its flagfile.txt's img_size, or 32; "
                                                  "pytorch_diffusion: its model's name)")
    p.add_argument("--flags", help="improved-diffusion: the MODEL_FLAGS and DIFFUSION_FLAGS of a file it did not "
                                   "release (its released files are known by name)")
    p.add_argument("--raw-weights", action="store_true",
                   help="sample the source's training weights in place of its EMA (pytorch-ddpm's net_model, ddim's "
                        "model entry; default: the EMA, as the papers sampled)")
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
    from .. import tracking as mlf
    from ..checkpoint import load_checkpoint
    from ..pretrained import import_checkpoint
    from ..settings import SWEEP_AXES, Setting, write_setting

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
                                   revision=args.revision, image_size=args.image_size, flags=args.flags,
                                   raw_weights=args.raw_weights)
        config = load_checkpoint(staged)["config"]
        run_id = None
        if args.tracking:
            tracking = mlf.read_tracking(args.tracking, check=False)  # checked before the work: _check_tracking
            params = {**config, "source_format": record["format"], "source": record["path"],
                      **{f"source_sha256.{name}": sha for name, sha in record["files"].items()}}
            run_id = mlf.start_setting_run(tracking, args.run_name or out.parent.name, params)
            mlf.set_tag(tracking["tracking_uri"], run_id, "ddpm.imported", record["format"])
            if record["notes"]:  # what was inferred (image size, flags, variance), as the checkpoint records it
                mlf.set_tag(tracking["tracking_uri"], run_id, "ddpm.import_notes", "\n".join(record["notes"]))
            mlf.finish_run(tracking["tracking_uri"], run_id)
        _make_room_for_run(out.parent, "import", force=args.force, staged=staged)  # all that can fail has run
        write_setting(out.parent, Setting.from_dict(config), imported=record)
        (out.parent / "metrics.jsonl").write_text("")  # no training: no loss curve
        if run_id is not None:
            (out.parent / "mlflow_run_id.txt").write_text(run_id + "\n")
        staged.replace(out)
    finally:
        staged.unlink(missing_ok=True)
    for note in record["notes"]:
        print(f"note: {note}", file=sys.stderr, flush=True)
    print(json.dumps({"checkpoint": str(out), **record, "setting": Setting.from_dict(config).name}, indent=2))


