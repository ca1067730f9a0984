"""Data-parallel training through torchrun: two Gloo processes on the CPU train like one process on the global batch,
write their files once, and resume from a preemption bit for bit."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import logged_step

from ddpm.checkpoint import load_checkpoint
from ddpm.distributed import World
from ddpm.io import write_json
from ddpm.tracking import init_sweep

# T = 10 warms the loss-aware timestep sampler up within the first steps, so its draws depend on the losses it was
# given: a process that saw only its own slice's losses would draw other timesteps than a one-process run.
TRAIN = ["--T", "10", "--timestep-sampler", "loss-second-moment", "--batch-size", "64", "--flip", "true",
         "--warmup", "0", "--lr", "1e-3", "--speed", "plain", "--threads", "2"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]


def _train(out: Path, *args: str, processes: int = 1) -> list[str]:
    launcher = TORCHRUN if processes > 1 else [sys.executable]
    return [*launcher, "-m", "ddpm.cli", "train", "--out", str(out), *TRAIN, *args]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _tracking(tmp_path: Path) -> Path:
    info = init_sweep(f"sqlite:///{tmp_path / 'mlflow.db'}", "ddp", "sweep", tmp_path / "artifacts", {})
    write_json(tmp_path / "tracking.json", info)
    return tmp_path / "tracking.json"


def test_two_processes_train_like_one_on_the_global_batch_and_rank_0_alone_writes(tmp_path):
    steps = ["--steps", "6", "--log-every", "1", "--dropout", "0"]  # no dropout: the same function on both sides
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_train(one, *steps), check=True, capture_output=True)
    tracking = _tracking(tmp_path)
    result = subprocess.run(_train(two, *steps, "--tracking", str(tracking), "--run-name", "two", processes=2),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    # The same global batches, timesteps and noise: each step's loss and gradient norm are the one-process run's,
    # up to the order in which the slices' sums are added.
    first, second = _metrics(one), _metrics(two)
    assert [m["step"] for m in second] == [1, 2, 3, 4, 5, 6]  # one writer: no line twice
    for a, b in zip(first, second):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), a["step"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), a["step"]
    weights_one, weights_two = load_checkpoint(one / "checkpoint.pt")["model"], load_checkpoint(two / "checkpoint.pt")["model"]
    moved = sum((weights_one[k].float() - weights_two[k].float()).abs().max().item() > 1e-3 for k in weights_one)
    assert moved == 0, f"{moved} tensors differ by more than 1e-3 after 6 steps at lr 1e-3"

    assert sum(line.startswith("{") for line in result.stdout.splitlines()) == 1  # rank 0 alone prints the summary
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddp")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("ddpm.kind") == "setting"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["processes"] == "2" and runs[0].data.params["batch_size"] == "64"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [1, 2, 3, 4, 5, 6]


def test_preempted_data_parallel_run_resumes_bit_for_bit(tmp_path):
    steps = ["--steps", "60", "--log-every", "5"]  # dropout on: each process's own random stream must resume too
    whole, preempted = tmp_path / "whole", tmp_path / "preempted"
    subprocess.run(_train(whole, *steps, processes=2), check=True, capture_output=True)

    process = subprocess.Popen(_train(preempted, *steps, processes=2), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while process.poll() is None and logged_step(preempted) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be preempted"
    process.send_signal(signal.SIGTERM)  # to torchrun, which passes it on to both processes
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert stderr.count("preempted: signal 15") == 2, stderr[-3000:]  # both stopped, at the same step
    state = load_checkpoint(preempted / "resume.pt")
    assert 10 <= state["step"] < 60 and len(state["rng_per_process"]) == 2
    assert not (preempted / "checkpoint.pt").exists()

    subprocess.run(_train(preempted, *steps, processes=2), check=True, capture_output=True)
    done, reference = load_checkpoint(preempted / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    for part in ("model", "ema"):
        for key in reference[part]:
            assert torch.equal(done[part][key], reference[part][key]), f"{part}.{key} differs"
    assert [m["step"] for m in _metrics(preempted)] == list(range(5, 61, 5))
    assert not (preempted / "resume.pt").exists()


def test_a_batch_that_does_not_split_over_the_processes_is_refused_naming_both():
    assert World(rank=1, size=4).local_batch(128) == slice(32, 64)
    with pytest.raises(ValueError, match=r"batch size 130 does not split evenly over 4 processes \(train.gpus × train.nodes\)"):
        World(rank=0, size=4).local_batch(130)
