"""What the ``ddpm`` executable's start-up and exit cost, per kind of job: each job run as the executable runs it
(``python -m ddpm.cli``: ``console_main``, the cycle collector off while the start-up imports torch and MLflow, then
frozen, and frozen again before exit) and as ``ddpm.cli.main`` called as a plain function (the collector as Python
leaves it: the code before the change), in alternating rounds (ABBA) on one small workspace.

    .venv/bin/python benchmarks/cli_startup.py [--rounds 4] [--work DIR]

Writes ``benchmarks/cli/<date>-cpu-cli-startup.json`` (one file per run; in its own folder, so that ``ddpm plan``'s
search for speed records does not meet it) and prints the medians. The CPU seconds are the job's user + system time
(its process and children); the ratios are medians of each round's ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm.io import source_commit, write_json  # noqa: E402

#: How each variant starts a job: the executable's entry point, and main() as a function.
VARIANTS = {
    "console_main": [sys.executable, "-m", "ddpm.cli"],
    "main": [sys.executable, "-c", "import sys; from ddpm.cli import main; sys.exit(main())"],
}
#: The workspace's training: the scaled-down paper runs' tiny network and step count.
TRAIN = ["--dataset", "digits", "--preset", "tiny", "--schedule", "linear", "--T", "1000", "--steps", "40",
         "--batch-size", "32", "--warmup", "5", "--checkpoint-every", "20", "--log-every", "10",
         "--preview-every", "40", "--threads", "1", "--speed", "auto", "--device", "cpu"]


def ddpm(*args: str, variant: str = "console_main") -> dict:
    """Run one ``ddpm`` command; its wall and CPU seconds. A failure stops the benchmark with its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    result = subprocess.run([*VARIANTS[variant], *args], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        raise SystemExit(f"ddpm {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def make_workspace(work: Path) -> dict[str, Path]:
    """Data, the classifier and its reference statistics, a tracking store, a trained tiny run and its samples."""
    paths = {"data": work / "data", "tracking": work / "tracking.json", "run": work / "run"}
    data = str(paths["data"])
    ddpm("prepare", "--dataset", "digits", "--out", data, "--test-fraction", "0.1667")
    ddpm("classifier", "--data", data, "--out", f"{data}/classifier.pt", "--steps", "300", "--threads", "1")
    ddpm("evaluate", "ref-stats", "--data", data, "--split", "train", "--out", f"{data}/ref-stats.npz",
         "--weights", f"{data}/classifier.pt")
    ddpm("track", "init", "--experiment", "cli-startup", "--results", str(work), "--out", str(paths["tracking"]))
    ddpm("train", "--out", str(paths["run"]), "--data", data, "--tracking", str(paths["tracking"]),
         "--run-name", "workspace", *TRAIN)
    shard = work / "shard-0.npz"
    ddpm("sample", "--checkpoint", str(paths["run"] / "checkpoint.pt"), "--data", data, "--out", str(shard),
         "--count", "50", "--batch-size", "50", "--sampler", "ddim", "--steps", "10", "--eta", "0", "--threads", "1")
    paths["shard"], paths["samples"] = shard, work / "samples.npz"
    ddpm("gather-samples", "--shards", str(shard), "--out", str(paths["samples"]),
         "--sampler-out", str(work / "sampler.json"), "--sampler", "ddim", "--steps", "10", "--eta", "0")
    return paths


def jobs(paths: dict[str, Path], out: Path) -> dict[str, list[str]]:
    """One command of each kind the workflow runs most, each writing a file of its own under ``out``."""
    data, run, tracking = str(paths["data"]), paths["run"], str(paths["tracking"])
    return {
        "train": ["train", "--out", str(out / "run"), "--data", data, "--tracking", tracking, "--run-name", out.name,
                  *TRAIN],
        "sample": ["sample", "--checkpoint", str(run / "checkpoint.pt"), "--data", data, "--out",
                   str(out / "shard.npz"), "--count", "50", "--batch-size", "50", "--sampler", "ddim", "--steps",
                   "10", "--eta", "0", "--threads", "1"],
        "evaluate fid": ["evaluate", "fid", "--samples", str(paths["samples"]), "--data", data, "--weights",
                         f"{data}/classifier.pt", "--ref-stats", f"{data}/ref-stats.npz", "--bootstrap-rounds", "10",
                         "--training-step", "40", "--out", str(out / "fid_is.json"), "--tracking", tracking,
                         "--run-id-file", str(run / "mlflow_run_id.txt"), "--threads", "1"],
        "evaluate nll": ["evaluate", "nll", "--checkpoint", str(run / "checkpoint.pt"), "--data", data, "--count",
                         "5", "--batch-size", "5", "--out", str(out / "nll.npz"), "--threads", "1"],
        "gather-samples": ["gather-samples", "--shards", str(paths["shard"]), "--out", str(out / "samples.npz"),
                           "--sampler-out", str(out / "sampler.json"), "--sampler", "ddim", "--steps", "10",
                           "--eta", "0"],
    }


def measure(work: Path, rounds: int) -> dict:
    paths = make_workspace(work)
    times = {name: {variant: [] for variant in VARIANTS} for name in jobs(paths, work)}
    for round_ in range(rounds):
        order = list(VARIANTS) if round_ % 2 == 0 else list(VARIANTS)[::-1]
        for name in times:
            for variant in order:
                out = work / f"round{round_}-{variant}-{name.replace(' ', '-')}"
                out.mkdir()
                times[name][variant].append(ddpm(*jobs(paths, out)[name], variant=variant))
    summary = {}
    for name, by_variant in times.items():
        new, old = by_variant["console_main"], by_variant["main"]
        summary[name] = {
            **{f"{variant}_{key}_median": statistics.median(t[key] for t in by_variant[variant])
               for variant in VARIANTS for key in ("wall_s", "cpu_s")},
            "cpu_ratio_median": statistics.median(n["cpu_s"] / o["cpu_s"] for n, o in zip(new, old)),
            "wall_ratio_median": statistics.median(n["wall_s"] / o["wall_s"] for n, o in zip(new, old)),
        }
    import torch

    return {"kind": "cli-startup", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": source_commit(), "device": "cpu", "device_name": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "rounds": rounds, "jobs": summary,
            "times": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default: 4)")
    parser.add_argument("--work", type=Path, default=None, help="the workspace folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "cli", help="the record's folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        result = measure(work, args.rounds)
    stamp = result["date"].replace(":", "").replace("+0000", "Z")
    path = args.out / f"{stamp}-cpu-cli-startup.json"
    write_json(path, result)
    print(json.dumps(result["jobs"], indent=1))
    print(f"record: {path}")


if __name__ == "__main__":
    main()
