"""What the commands share: path options that are checked before any work (:class:`ReadPath`, :class:`WritePath`),
the runtime and tracking options, the sampler point's flags, the MLflow runs a command logs to, and the one place a
diverged setting is handled (:func:`passes_divergence_on`)."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import NamedTuple

from ..samplers.registry import FAMILIES, SAMPLERS, SKIPS


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
    from ..datasets import prepared_file_of
    from ..io import check_writes, run_file_of

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

        from ..distributed import threads_per_process

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
    from ..speed import Speed

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
    """How to sample (:class:`ddpm.settings.SamplerPoint`): each family's flags (:mod:`ddpm.samplers`)."""
    parser.add_argument("--sampler", choices=SAMPLERS, default=SAMPLERS[0],
                        help="; ".join(f"{name}: {family.summary}" for name, family in FAMILIES.items())
                        + f" (default: {SAMPLERS[0]})")
    parser.add_argument("--steps", type=int, default=None, help="S, the reverse steps (default: all T)")
    parser.add_argument("--skip", choices=SKIPS, default=None,
                        help="which S of the T steps: uniform, quadratic (DDIM Appendix D.2), strided (Improved DDPM §4) "
                             "or linspace (diffusers) "
                             "(default: the sampler's: "
                             + ", ".join(f"{name} {family.skips[0]}" for name, family in FAMILIES.items()) + ")")
    for family in FAMILIES.values():
        family.add_arguments(parser)
    parser.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                        help="clip x̂₀ to [-1, 1] at every step (default: the sampler's: "
                             + ", ".join(f"{name} {'clip' if family.clip else 'no clip'}"
                                         for name, family in FAMILIES.items()) + ")")


def _sampler_point(args: argparse.Namespace):
    from ..samplers.point import SAMPLER_KEYS, SamplerPoint

    return SamplerPoint(**{key: getattr(args, key) for key in SAMPLER_KEYS}).check("")


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
    from .. import tracking
    from ..settings import read_setting

    info = tracking.read_tracking(args.tracking, check=False)  # checked before the work: _check_tracking
    setting_run = [(info["tracking_uri"], Path(args.run_id_file).read_text().strip())]
    if point is None:
        return _Runs(setting_run, 0, setting_run)
    setting = read_setting(Path(args.run_id_file).parent)
    params = tracking.sampler_params(point, setting.axes())
    point_run = tracking.start_sampler_run(info, setting_run[0][1], args.setting or setting.name, point.name, params)
    return _Runs([(info["tracking_uri"], point_run)], params["S"], setting_run if args.primary else [])


def tracking_needed(args: argparse.Namespace) -> bool:
    """Whether the command will log to MLflow: it was given ``--tracking``, and (``ddpm grid``) the scores whose run
    its output would go to exist (``--scores``)."""
    scores = getattr(args, "scores", None)
    return bool(getattr(args, "tracking", None)) and (scores is None or Path(scores).exists())


def _check_tracking(args: argparse.Namespace) -> None:
    """Before any work: a command given ``--tracking`` finds its store (a copied or moved project's own) and refuses a
    deleted experiment, parent run, setting run (``--run-id-file``) or sampler point's run (``--sampler-file``),
    naming the command that restores it (:func:`ddpm.tracking.check_active`). A training checks its own, after the
    line that starts each try's log (:func:`cmd_train`)."""
    if not tracking_needed(args) or args.command == "train":
        return
    from .. import tracking

    info = tracking.read_tracking(args.tracking, check=False)
    run_id_file = getattr(args, "run_id_file", None)
    setting_run = Path(run_id_file).read_text().strip() if run_id_file and Path(run_id_file).is_file() else None
    tracking.check_active(info, [setting_run] if setting_run else [])
    if setting_run and getattr(args, "sampler_file", None):
        from ..provenance import diverged_step
        from ..samplers.point import read_sampler_file

        if diverged_step([args.sampler_file]) is None:  # a diverged setting's record names no point: nothing to log
            tracking.find_sampler_run(info, setting_run, read_sampler_file(args.sampler_file).name)


def _log(runs: list[tuple[str, str]], metrics: dict, artifact: str | None = None, step: int = 0) -> None:
    """Log the numbers of ``metrics`` (and ``artifact``) to each of ``runs``."""
    from .. import tracking

    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for uri, run_id in runs:
        tracking.log_metrics(uri, run_id, numeric, step)
        if artifact:
            tracking.log_artifact(uri, run_id, artifact)


def _tag(runs: list[tuple[str, str]], tags: dict[str, str]) -> None:
    from .. import tracking

    for uri, run_id in runs:
        for key, value in tags.items():
            tracking.set_tag(uri, run_id, key, value)


def _log_to_run(args: argparse.Namespace, metrics: dict, artifact: str | None = None, step: int = 0) -> None:
    """Log to the setting's MLflow run, where the job was given one."""
    _log(_runs(args).scores, metrics, artifact, step)


def passes_divergence_on(*outputs: str, inputs: str | None = None):
    """A command of a setting whose training diverged writes, in place of each of its ``outputs`` (argument names),
    the record that says so (:func:`ddpm.provenance.record_divergence`) and succeeds, so that the sweep goes on and
    the report shows the row. The divergence reaches the command through its checkpoint (it raises
    :class:`~ddpm.provenance.Diverged`) or through the files of its ``inputs`` argument (records of earlier jobs)."""

    def decorate(command):
        @functools.wraps(command)
        def run(args):
            from ..provenance import Diverged, diverged_step, record_divergence

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
