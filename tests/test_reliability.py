"""Killed training resumes exactly; preemption saves and resumes; parallel writers to the MLflow store lose nothing."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import logged_step, mlflow_server
from ddpm.checkpoint import load_checkpoint, save_checkpoint
from ddpm.io import write_json
from ddpm.tracking import init_sweep
from ddpm.checkpoint import load_for_sampling

TRAIN = ["--T", "50", "--schedule-rescale", "true", "--steps", "120", "--batch-size", "16", "--log-every", "5",
         "--checkpoint-every", "10", "--warmup", "10", "--lr", "1e-3", "--dropout", "0.1", "--threads", "1"]
LOGGED_STEPS = list(range(5, 121, 5))


def _tracking(tmp_path: Path, uri: str | None = None) -> Path:
    """The pipeline's own initialisation: store, experiment and parent run created once, before any writer."""
    info = init_sweep(uri or f"sqlite:///{tmp_path / 'mlflow.db'}", "reliability", "sweep", tmp_path / "artifacts", {})
    path = tmp_path / "tracking.json"
    write_json(path, info)
    return path


def _train_command(out: Path, tracking: Path | None, extra: tuple[str, ...] = ()) -> list[str]:
    command = [sys.executable, "-m", "ddpm.cli", "train", "--out", str(out), *TRAIN, *extra]
    return command + (["--tracking", str(tracking), "--run-name", out.name] if tracking else [])


def _run_until(out: Path, tracking: Path, step: int, sig: int, extra: tuple[str, ...] = (), *,
               whole_group: bool = False) -> int:
    """Start training and send ``sig`` once it has logged ``step`` (with ``whole_group``, to every process of its
    process group, as a scheduler signals a job); returns the exit status."""
    process = subprocess.Popen(_train_command(out, tracking, extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=whole_group)
    deadline = time.monotonic() + 300
    while process.poll() is None and logged_step(out) < step and time.monotonic() < deadline:
        time.sleep(0.02)
    if process.poll() is None:
        if whole_group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
    process.wait(timeout=120)
    return process.returncode


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a), load_checkpoint(b)
    for part in ("model", "ema"):
        assert first[part].keys() == second[part].keys()
        for key in first[part]:
            assert torch.equal(first[part][key], second[part][key]), f"{part}.{key} differs"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(_train_command(out, None), check=True, capture_output=True)
    return out


def _store_runs(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reliability")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("ddpm.kind") == "setting"]
    return client, runs


def test_sigkill_at_three_random_points_then_rerun_gives_the_same_weights_and_one_mlflow_run(tmp_path, uninterrupted):
    tracking = _tracking(tmp_path)
    out = tmp_path / "killed"
    kill_points = sorted(random.Random(1234).sample(range(12, 115), 3))
    for point in kill_points:
        status = _run_until(out, tracking, point, signal.SIGKILL)
        assert status == -signal.SIGKILL, f"the run ended by itself before step {point}"
        assert (out / "resume.pt").exists() and not (out / "checkpoint.pt").exists()
    subprocess.run(_train_command(out, tracking), check=True, capture_output=True)

    _assert_same_weights(out / "checkpoint.pt", uninterrupted / "checkpoint.pt")
    assert not (out / "resume.pt").exists()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == LOGGED_STEPS
    client, runs = _store_runs(tmp_path)
    assert len(runs) == 1, "a resumed run must continue the same MLflow run"
    run = runs[0]
    assert run.info.run_id == (out / "mlflow_run_id.txt").read_text().strip() and run.info.status == "FINISHED"
    for key in ("loss", "lr", "grad_norm"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == LOGGED_STEPS, f"{key}: duplicates or gaps in {steps}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_saves_state_exits_75_and_resumes(tmp_path, uninterrupted, sig):
    tracking = _tracking(tmp_path)
    out = tmp_path / "preempted"
    assert _run_until(out, tracking, 33, sig) == 75
    state = load_checkpoint(out / "resume.pt")
    assert state["step"] >= 33
    client, runs = _store_runs(tmp_path)
    assert [r.info.status for r in runs] == ["KILLED"]
    subprocess.run(_train_command(out, tracking), check=True, capture_output=True)
    _assert_same_weights(out / "checkpoint.pt", uninterrupted / "checkpoint.pt")
    client, runs = _store_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")) == LOGGED_STEPS


def test_a_job_preempted_while_loader_processes_read_its_batches_saves_and_resumes(tmp_path, uninterrupted):
    """SIGTERM to every process of the job (as SLURM and Snakemake send it) while two loader processes read the
    batches ahead: the loaders leave it to the training, which saves its state and exits 75; the rerun ends with the
    weights of the uninterrupted run that read its batches in no loader process at all."""
    out = tmp_path / "preempted"
    workers = ("--data-workers", "2")
    assert _run_until(out, None, 33, signal.SIGTERM, workers, whole_group=True) == 75
    assert load_checkpoint(out / "resume.pt")["step"] >= 33
    subprocess.run(_train_command(out, None, workers), check=True, capture_output=True)
    _assert_same_weights(out / "checkpoint.pt", uninterrupted / "checkpoint.pt")


def test_snapshots_and_metrics_from_before_a_preemption_survive_snakemakes_clean_up_and_the_rerun(tmp_path):
    snapshots = ("--snapshot-steps", "20", "90")
    whole = tmp_path / "whole"
    subprocess.run(_train_command(whole, None, snapshots), check=True, capture_output=True)
    out = tmp_path / "preempted"
    assert _run_until(out, None, 33, signal.SIGTERM, snapshots) == 75
    assert not (out / "snapshots").exists()  # not an output yet: Snakemake's clean-up of the failed job keeps it
    (out / "metrics.jsonl").unlink()  # an output of the failed job: Snakemake deletes it before the rerun
    subprocess.run(_train_command(out, None, snapshots), check=True, capture_output=True)
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == LOGGED_STEPS
    for step in (20, 90):
        _assert_same_ema(out / "snapshots" / f"step-{step}.pt", whole / "snapshots" / f"step-{step}.pt")
    assert not (out / "snapshots-pending").exists()


def _assert_same_ema(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a)["ema"], load_checkpoint(b)["ema"]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_resume_state_of_another_config_is_set_aside_not_used(tmp_path):
    out = tmp_path / "changed"
    assert _run_until(out, None, 22, signal.SIGTERM) == 75
    assert load_checkpoint(out / "resume.pt")["config"]["lr"] == 1e-3
    changed = _train_command(out, None)
    changed[changed.index("--lr") + 1] = "5e-4"  # the setting's parameters changed: start over
    result = subprocess.run(changed, check=True, capture_output=True, text=True)
    assert "written for another config (changed: lr)" in result.stdout
    assert load_checkpoint(out / "resume-stale.pt")["config"]["lr"] == 1e-3  # kept, not deleted
    final = load_checkpoint(out / "checkpoint.pt")
    assert final["config"]["lr"] == 5e-4 and final["step"] == 120
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == LOGGED_STEPS


def test_corrupt_resume_state_is_a_clear_error_naming_the_file(tmp_path):
    out = tmp_path / "corrupt"
    out.mkdir()
    (out / "resume.pt").write_bytes(b"\x80\x04not a checkpoint")
    result = subprocess.run(_train_command(out, None), capture_output=True, text=True)
    assert result.returncode == 2
    assert "resume.pt" in result.stderr and "cannot load checkpoint" in result.stderr
    assert not (out / "checkpoint.pt").exists()


WRITER = """
import sys
from ddpm.tracking import read_tracking, start_setting_run, log_metrics, finish_run
tracking = read_tracking(sys.argv[1])
run_id = start_setting_run(tracking, f"writer-{sys.argv[2]}", {"writer": sys.argv[2]})
for step in range(1, 21):
    log_metrics(tracking["tracking_uri"], run_id, {"loss": 1.0 / step, "writer": float(sys.argv[2])}, step)
finish_run(tracking["tracking_uri"], run_id)
"""


def _parallel_writers(tmp_path: Path, tracking: Path) -> None:
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tracking), str(i)], stderr=subprocess.PIPE, text=True)
               for i in range(16)]
    failures = [(i, w.stderr.read()[-500:]) for i, w in enumerate(writers) if w.wait(timeout=600) != 0]
    assert not failures, failures
    client, runs = _store_runs(tmp_path)
    assert sorted(r.info.run_name for r in runs) == sorted(f"writer-{i}" for i in range(16))
    for run in runs:
        assert run.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(1, 21))


def test_16_parallel_writers_to_the_default_sqlite_store_lose_nothing(tmp_path):
    _parallel_writers(tmp_path, _tracking(tmp_path))


def test_16_parallel_writers_through_a_local_tracking_server_lose_nothing(tmp_path):
    with mlflow_server(tmp_path / "mlflow.db") as url:
        _parallel_writers(tmp_path, _tracking(tmp_path, url))


def test_checkpoint_of_another_architecture_is_refused_saying_which(tmp_path, uninterrupted):
    state = load_checkpoint(uninterrupted / "checkpoint.pt")
    state["config"]["preset"] = "small"  # the weights are the tiny preset's
    save_checkpoint(tmp_path / "other.pt", state)
    with pytest.raises(ValueError) as err:
        load_for_sampling(tmp_path / "other.pt")
    message = str(err.value)
    assert "other.pt does not fit the architecture" in message and "preset 'small'" in message
    assert "of another shape; e.g. temb.0.weight is (128, 32) in the file but (256, 64) in the model" in message
    assert len(message) < 600 and "\n" not in message
