"""``ddpm track init | serve``, ``ddpm report``, ``ddpm bench`` and ``ddpm plan``: bookkeeping and what a sweep
costs and gives."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import ReadPath, WritePath, _add_runtime, _bool, _device, _speed


def add_track_init(p):
    p.add_argument("--experiment", required=True, help="the MLflow experiment (the sweep's name)")
    p.add_argument("--sweep-name", help="the parent run's name (default: the experiment's)")
    p.add_argument("--results", default="results", help="results folder (the default SQLite store lives there)")
    p.add_argument("--tracking-uri", help="used when $MLFLOW_TRACKING_URI is unset; default sqlite:///<results>/mlflow.db")
    p.add_argument("--config-json", help="the resolved config, stored with the parent run")
    p.add_argument("--out", required=True, type=WritePath, help="tracking file for the jobs that follow")


def cmd_track_init(args):
    from ..tracking import ARTIFACTS_FOLDER, default_tracking_uri, given_tracking_uri, init_sweep, write_tracking

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

    from ..tracking_cluster import serve_command, server_environment

    command, uri = serve_command(args.store, host=args.host, port=args.port, allowed_hosts=args.allowed_hosts,
                                 workers=args.workers)
    print(f"MLflow tracking server for the jobs: set mlflow.tracking_uri: {uri} in the config (or export "
          f"MLFLOW_TRACKING_URI={uri}) before snakemake; the UI is at the same address", file=sys.stderr, flush=True)
    os.execvpe(command[0], command, server_environment(dict(os.environ)))


def add_report(p):
    from ..report import OUTPUTS

    tables = ", ".join(o.suffix for o in OUTPUTS if o.medium == "table" and o.suffix)
    figures = ", ".join(f"<name>{o.suffix}.png" for o in OUTPUTS if o.medium == "figure")
    p.add_argument("--runs", nargs="+", required=True, type=ReadPath, help="the settings' folders")
    p.add_argument("--gaussian", required=True, type=ReadPath, help="the Gaussian baseline's scores")
    p.add_argument("--test-split", required=True, type=ReadPath, help="the test split's scores")
    p.add_argument("--out-stem", required=True, help="<tables folder>/<the sweep's name>: each table goes to "
                   "<stem><suffix>.csv, .md, .tex and <tables folder>/html/<n>-<name><suffix>.html (the main table: "
                   f"no suffix; then {tables})")
    p.add_argument("--figures", required=True, type=WritePath, help=f"the figures' folder: {figures}")
    p.add_argument("--config-json", required=True, help="the sweep's resolved config (JSON): its sampler points, FID "
                   "snapshots, reconstruction steps, train-split bits/dim, paper_sweep, scale and schedule_rescale; "
                   "with --tracking also stored with the parent run")
    p.add_argument("--published", type=ReadPath, help="the papers' numbers (CSV): put beside the sweep's, in "
                   "<stem>-paper.* and the others")
    p.add_argument("--tracking", type=ReadPath, help="also attach the tables and figures to the sweep's parent run "
                   "and finish it")


def cmd_report(args):
    from ..report import write_report

    table = write_report(args.runs, out_stem=args.out_stem, figures=args.figures, gaussian=args.gaussian,
                         test_split=args.test_split, config=json.loads(args.config_json), published=args.published,
                         tracking=args.tracking)
    print(table.to_string(index=False))


def add_bench(p):
    from ..presets import PRESETS

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
    p.add_argument("--against", choices=("diffusers",), help="instead: our training step and DDIM sampling against "
                   "diffusers' (UNet2DModel as google/ddpm-cifar10-32, its training example's step, DDIMPipeline) on "
                   "the same network, in alternating rounds; --steps timed training steps per round, --rounds rounds; "
                   "the record goes to <out>/diffusers/")
    p.add_argument("--sample-steps", type=int, default=10, help="with --against: DDIM's steps (default: 10)")
    p.add_argument("--fid-images", type=int, default=0, help="also a FID job's scoring rate: torch-fidelity's "
                   "Inception features of this many samples and as many reference images, then FID, IS and KID "
                   "(the papers: 50000; default: 0, none)")
    p.add_argument("--inception-weights", type=ReadPath, help="torch-fidelity's Inception-v3 weights file for "
                   "--fid-images (default: torch.hub's cache, else a stand-in of the same shapes, said so)")
    p.add_argument("--out", default="benchmarks", type=WritePath, help="folder of the JSON records (and the default MLflow store)")
    p.add_argument("--mlflow", type=_bool, default=True, help="also log the run to MLflow (default: true)")
    p.add_argument("--tracking-uri", help="used when $MLFLOW_TRACKING_URI is unset; default sqlite:///<out>/mlflow.db")
    _add_runtime(p, speed=True)


def cmd_bench(args):
    from ..bench import log_to_mlflow, run_bench, write_record
    from ..tracking import default_tracking_uri

    if args.against:
        return _bench_against(args)
    result = run_bench(args.preset, device=_device(args.device), speed=_speed(args), batch_size=args.batch_size,
                       sample_batch=args.sample_batch, T=args.T, steps=args.steps, warmup=args.warmup, seed=args.seed,
                       rounds=args.rounds, fid_images=args.fid_images, inception_weights=args.inception_weights)
    path = write_record(result, args.out)
    if args.mlflow:
        uri = default_tracking_uri(args.out, args.tracking_uri)
        result["mlflow_run_id"] = log_to_mlflow(result, uri, Path(args.out) / "mlartifacts")
    print(json.dumps({**result, "record": str(path)}, indent=2))


def _bench_against(args):
    from .. import bench_diffusers
    from ..io import write_json
    from ..tracking import default_tracking_uri

    if min(args.batch_size, args.sample_batch or 1, args.steps, args.rounds, args.sample_steps) < 1 or args.warmup < 0:
        raise ValueError("need --batch-size, --sample-batch, --steps, --rounds, --sample-steps >= 1 and --warmup >= 0")
    result = bench_diffusers.run_against_diffusers(
        _device(args.device), speed=_speed(args), batch_size=args.batch_size, sample_batch=args.sample_batch or
        args.batch_size, sample_steps=args.sample_steps, train_calls=args.steps, warmup=args.warmup,
        rounds=args.rounds, seed=args.seed)
    path = bench_diffusers.record_path(result, args.out)
    write_json(path, result)
    if args.mlflow:
        uri = default_tracking_uri(args.out, args.tracking_uri)
        result["mlflow_run_id"] = bench_diffusers.log_to_mlflow(result, uri, Path(args.out) / "mlartifacts")
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
    from ..plan import run

    print(run(args.configfile, args.config, bench=args.bench, as_json=args.json))
