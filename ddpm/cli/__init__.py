"""The ``ddpm`` command line: every pipeline step also runs by hand, without Snakemake.

    ddpm prepare | classifier | track init | track serve | train | import | sample | progressive | interpolate
    ddpm gather-samples | grid
    ddpm evaluate fid | ref-stats | nll | nll-gather | reconstruction | baseline
    ddpm report | bench | plan | claim-gpus

Each command parses its arguments, calls one function of the package and prints what it did. A setting whose
training diverged is handled here, once, for every command (:func:`passes_divergence_on`); which metrics go to
MLflow is decided by the metric code (``metrics.tracked_scores``, ``gather.tracked_bpd``).
"""

from __future__ import annotations

import argparse
import gc
import sys

from ..gpus import CLAIM_GPUS_HELP, add_claim_gpus, cmd_claim_gpus
from .common import _check_tracking, _check_writes, _set_threads
from .data import add_bench_data, add_classifier, add_prepare, cmd_bench_data, cmd_classifier, cmd_prepare
from .training import add_import, add_train, cmd_import, cmd_train
from .sampling import (
    add_gather_samples, add_grid, add_interpolate, add_progressive, add_sample, cmd_gather_samples, cmd_grid,
    cmd_interpolate, cmd_progressive, cmd_sample,
)
from .evaluation import (
    add_baseline, add_fid, add_nll, add_nll_gather, add_reconstruction, add_ref_stats, cmd_baseline, cmd_fid,
    cmd_nll, cmd_nll_gather, cmd_reconstruction, cmd_ref_stats,
)
from .reporting import (
    add_bench, add_plan, add_report, add_track_init, add_track_serve, cmd_bench, cmd_plan, cmd_report,
    cmd_track_init, cmd_track_serve,
)


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
    (None, "claim-gpus", CLAIM_GPUS_HELP, add_claim_gpus, cmd_claim_gpus),
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


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """Run one command; its exit code. ``own_process``: the process is the command's alone (:func:`console_main`),
    so the collector may skip what the command's start-up imported (torch, MLflow), which lives as long as it."""
    args = make_parser().parse_args(argv)
    if own_process:
        gc.disable()
    _set_threads(args)
    try:
        _check_writes(args)
        _check_tracking(args)
        if own_process:
            gc.freeze()
            gc.enable()  # the work itself runs with the collector on, as it would have
        args.func(args)
    except Exception as err:
        # Only a training is preempted, and only a command that trains has imported ddpm.train (and torch with it):
        # looked up, not imported, so that a command that needs no torch (prepare, gather, report) loads none.
        train = sys.modules.get("ddpm.train")
        if train is not None and isinstance(err, train.Preempted):
            print(f"ddpm {args.command}: preempted: {err}", file=sys.stderr)
            return train.PREEMPTED_EXIT_CODE
        if not isinstance(err, (ValueError, OSError, FloatingPointError, RuntimeError)):  # OSError: a full disk
            raise
        print(f"ddpm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


def console_main() -> int:
    """The ``ddpm`` executable and ``python -m ddpm.cli``: :func:`main` in a process of its own.

    Python's cycle collector walks every object it tracks in each full collection, and a job's start-up (torch with
    ``torch._dynamo``, MLflow with its SQLAlchemy store, torch-fidelity with torchvision) makes millions of them:
    the collections while they were imported and the ones at interpreter exit took 2.3 s of a 6.5 s scoring job
    (docs/benchmarks.md). So the start-up runs with the collector off and is then frozen (:func:`gc.freeze`), and
    at the end the command's own garbage is collected (finalising what it left) before the rest is frozen for the
    exit: module teardown, ``atexit`` handlers and file flushes happen as before, only without the walks over what
    dies with the process anyway."""
    code = main(own_process=True)
    gc.collect()
    gc.freeze()
    return code
