"""The chain a paper run is made of, train → sample → FID → bits/dim, through the ``ddpm`` command line on one
device at a small scale (issue 28): each job's wall time (its start-up included) and exit code as a JSON record.

Offline by design (the GPU machine reaches no network): scikit-learn's digits, and FID on torch-fidelity's
Inception-v3 with stand-in weights of the same shapes (:func:`ddpm.metrics.write_stand_in_inception_weights`): the
extractor's cost is the real one, its scores mean nothing. No MLflow and no Snakemake (the device image has
neither); the jobs are the ones the workflow's rules run.

    python3 benchmarks/device_chain.py --device cuda --out $OUT            # on the GPU machine
    python3 benchmarks/device_chain.py --device cpu --steps 20 --T 50 --samples 20 --out /tmp/chain  # a check here
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path


def job(name: str, args: list[str], log: Path, timings: dict) -> None:
    """Run ``python -m ddpm.cli ARGS``, its output to ``log``; its seconds and exit code into ``timings``."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run([sys.executable, "-m", "ddpm.cli", *args], stdout=out, stderr=subprocess.STDOUT).returncode
    timings[name] = {"seconds": round(time.perf_counter() - start, 2), "exit_code": code}
    print(f"{name}: {timings[name]}", flush=True)
    if code:
        raise SystemExit(f"{name} failed (exit {code}); its output: {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True, type=Path, help="where the record (chain.json) goes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ddpm-chain"),
                        help="where the jobs' files and logs go (default: /tmp/ddpm-chain)")
    parser.add_argument("--steps", type=int, default=500, help="training steps (default: 500)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=2000, help="samples drawn and scored (default: 2000)")
    options = parser.parse_args()
    work, timings = options.work, {}
    work.mkdir(parents=True, exist_ok=True)
    data, run = work / "data", work / "run"
    from ddpm.metrics import write_stand_in_inception_weights

    inception = write_stand_in_inception_weights(work / "stand-in-inception.pth")
    runtime = ["--device", options.device]
    job("prepare", ["prepare", "--dataset", "digits", "--image-size", "16", "--out", str(data)], work / "prepare.log",
        timings)
    job("train", ["train", "--out", str(run), "--data", str(data), "--preset", "small", "--steps", str(options.steps),
                  "--batch-size", str(options.batch_size), "--T", str(options.T), "--speed", "auto", *runtime],
        work / "train.log", timings)
    checkpoint = str(run / "checkpoint.pt")
    job("sample", ["sample", "--checkpoint", checkpoint, "--out", str(work / "samples.npz"), "--count",
                   str(options.samples), "--batch-size", "1000", "--speed", "auto", *runtime], work / "sample.log",
        timings)
    job("fid", ["evaluate", "fid", "--samples", str(work / "samples.npz"), "--data", str(data), "--feature-extractor",
                "inception-v3-compat", "--weights", str(inception), "--out", str(work / "fid.json"), *runtime],
        work / "fid.log", timings)
    job("nll", ["evaluate", "nll", "--checkpoint", checkpoint, "--data", str(data), "--batch-size", "360",
                "--out", str(work / "nll.npz"), "--speed", "auto", *runtime], work / "nll.log", timings)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": options.device, "preset": "small", "dataset": "digits 16x16", "steps": options.steps,
              "batch_size": options.batch_size, "T": options.T, "samples": options.samples,
              "fid_extractor": "inception-v3-compat, stand-in weights (no network)", "jobs": timings,
              "fid": json.loads((work / "fid.json").read_text()).get("fid")}
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "chain.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
