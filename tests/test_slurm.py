"""The workflow on a real SLURM (one machine, see slurm_cluster.py) through snakemake-executor-plugin-slurm and
profiles/slurm: it runs to completion, every job is in SLURM's accounting with the GPUs its rule asked for, and a
training requeued in the middle resumes from its saved state."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY, logged_step, mlflow_server, skip_unless_required, snakemake
from slurm_cluster import LocalSlurm, why_unavailable

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm"
# The profile as a user runs it; only the status polling is made quicker than a real cluster needs.
SLURM = ("--executor", "slurm", "--workflow-profile", str(PROFILE), "--slurm-init-seconds-before-status-checks", "2",
         "--slurm-keep-successful-logs")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = why_unavailable()
    if reason:
        print(f"\nSLURM tests skipped: {reason}")
        skip_unless_required(reason)
    with LocalSlurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tiny_on_slurm(slurm, tmp_path_factory):
    """The tiny config on SLURM as README's "Run on a cluster" has it: a tracking server on the submit node, its
    address in the config, the profile."""
    workdir = tmp_path_factory.mktemp("tiny-slurm")
    with mlflow_server(workdir / "server-store" / "mlflow.db") as url:
        config = yaml.safe_load(TINY.read_text())
        config["mlflow"] = {"tracking_uri": url}
        config["sweep"]["schedule"] = ["linear"]  # one setting: the two-setting sweep is test_pipeline's
        path = workdir / "tiny-cluster.yaml"
        path.write_text(yaml.safe_dump(config))
        result = snakemake(workdir, *SLURM, config=path, check=False)
        if result.returncode != 0:
            raise AssertionError(f"snakemake on SLURM failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}\n"
                                 f"{slurm.logs()}")
        yield workdir, url


def _rule(job: dict) -> str:
    """The rule of a job from the comment the executor gives it (``rule_<name>_wildcards_…``)."""
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def test_tiny_workflow_runs_to_completion_on_slurm_with_every_job_in_its_accounting(slurm, tiny_on_slurm):
    workdir, _ = tiny_on_slurm
    report = workdir / "results" / "tables" / "tiny.csv"
    assert report.exists(), sorted(p.name for p in (workdir / "results").rglob("*"))[:50]

    jobs = slurm.sacct("JobIDRaw", "JobName", "State", "ExitCode", "Comment%200", "AllocTRES%200")
    ours = [job for job in jobs if job["Comment"].startswith("rule_")]
    assert ours and all(job["State"] == "COMPLETED" and job["ExitCode"] == "0:0" for job in ours), ours
    by_rule: dict[str, list[dict]] = {}
    for job in ours:
        by_rule.setdefault(_rule(job), []).append(job)
    # One setting; two sampler points of two sample shards each, two bits/dim shards (tests/configs/tiny.yaml).
    assert len(by_rule["train"]) == 1 and len(by_rule["sample"]) == 4 and len(by_rule["nll"]) == 2, by_rule.keys()
    assert len(by_rule["fid_is"]) == 2
    for rule in ("prepare_data", "train_classifier", "fid_is", "report"):
        assert rule in by_rule, f"no {rule} job in SLURM's accounting: {sorted(by_rule)}"
    for rule in ("mlflow_init", "gather_samples", "gather_nll"):
        assert rule not in by_rule, f"{rule} is a local rule, yet it was submitted"
    # resources: gpu=N became --gpus=N: training asks train.gpus (2 here, DDP), the shards one each.
    assert all("gres/gpu=2" in job["AllocTRES"] for job in by_rule["train"]), by_rule["train"]
    assert all("gres/gpu=1" in job["AllocTRES"] for job in by_rule["sample"] + by_rule["nll"])
    assert all("gres/gpu" not in job["AllocTRES"] for job in by_rule["report"])


def test_the_slurm_jobs_trained_with_two_processes_and_logged_to_the_tracking_server(tiny_on_slurm):
    from mlflow.tracking import MlflowClient

    workdir, url = tiny_on_slurm
    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("tiny")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("ddpm.kind") == "setting"]
    assert len(runs) == 1 and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.params["processes"] == "2" and "fid_over_training" in r.data.metrics and "bpd" in r.data.metrics
               for r in runs)
    assert not (workdir / "results" / "mlflow.db").exists()  # no SQLite store beside the results: the server's


def _snakemake_in_background(workdir: Path, config: Path, *targets: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(config), *SLURM, *targets]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_a_training_requeued_by_slurm_in_the_middle_resumes_from_its_saved_state(slurm, tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["sweep"]["schedule"] = ["linear"]
    config["train"].update(steps=400, log_every=10, preview_every=0, checkpoint_every=0)
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(config))
    setting = "linear-T50-eps-fixedlarge-mse-s0"
    run = tmp_path / "results" / "runs" / "tiny" / setting
    snakemake = _snakemake_in_background(tmp_path, path, str(run.relative_to(tmp_path) / "checkpoint.pt"))
    try:
        deadline = time.monotonic() + 600
        while logged_step(run) < 100:
            assert snakemake.poll() is None, snakemake.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "training did not reach step 100"
            time.sleep(0.5)
        queue = subprocess.run(["squeue", "-h", "-o", "%i|%k|%T"], capture_output=True, text=True, check=True).stdout.splitlines()
        job = next(line.split("|")[0] for line in queue if line.split("|")[1].startswith("rule_train"))
        subprocess.run(["scontrol", "requeue", job], check=True)  # what a preemption does
        output, _ = snakemake.communicate(timeout=900)
    finally:
        if snakemake.poll() is None:
            snakemake.kill()
    assert snakemake.returncode == 0, output[-4000:]

    log = (tmp_path / "results" / "logs" / "tiny" / "train" / f"{setting}.log").read_text()
    resumed = [int(line.split()[3]) for line in log.splitlines() if line.startswith("resuming from step")]
    assert resumed and resumed[0] >= 100, log[-3000:]  # the second start went on from the first one's state
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10, 401, 10))  # each step logged once, the steps after the saved state redone
    history = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", "State"], capture_output=True,
                             text=True, check=True).stdout.split()
    assert history[0] == "REQUEUED" and history[-1] == "COMPLETED", history


def test_a_two_node_training_asks_slurm_for_a_task_and_the_gpus_on_each_node(slurm, tmp_path, monkeypatch):
    """``train.nodes: 2``: one machine cannot run it, so an ``sbatch`` in front of SLURM's records what the executor
    submits for the train job (and passes every other job on to SLURM)."""
    record, fake = tmp_path / "sbatch-calls.txt", tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(f"""#!/bin/sh
case "$*" in
  *rule_train*) printf '%s\\n' "$*" >> {record}; echo "sbatch: recorded by the test, not submitted" >&2; exit 1 ;;
esac
exec {shutil.which("sbatch")} "$@"
""")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    config = yaml.safe_load(TINY.read_text())
    config["sweep"]["schedule"] = ["linear"]
    config["train"].update(gpus=2, nodes=2)
    path = tmp_path / "two-nodes.yaml"
    path.write_text(yaml.safe_dump(config))
    target = "results/runs/tiny/linear-T50-eps-fixedlarge-mse-s0/checkpoint.pt"

    result = snakemake(tmp_path, *SLURM, target, config=path, check=False)
    assert result.returncode != 0 and record.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    call = record.read_text()
    for flag in ("--nodes=2", "--ntasks=2", "--gres=gpu:2", "--signal=TERM@180", "-t 2880"):
        assert flag in call, f"{flag} not in the submission: {call}"
    assert "--gpus=" not in call  # --gpus counts over the whole job; --gres=gpu:2 is per node

    # The job's command: srun starts one torchrun per node, and they meet at the job's first node.
    dry = snakemake(tmp_path, "-n", "-p", "--forcerun", "train", target, config=path).stdout
    command = next(line for line in dry.splitlines() if "torchrun" in line)
    assert command.split("Shell command: ")[-1].startswith("srun --ntasks-per-node=1 torchrun --nnodes 2 "
                                                           "--nproc_per_node 2 --rdzv_backend c10d")
    assert '--rdzv_id "$SLURM_JOB_ID"' in command
