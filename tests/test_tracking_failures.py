"""Fail fast, keep the evidence: a tracking server that is down, hung or dies, and a read-only SQLite store, end the
job within ddpm.tracking's bound with one line naming the store; a training keeps its state and resumes in its run."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port, logged_step, mlflow_server, skip_unless_required
from ddpm import tracking as mlf
from ddpm.checkpoint import load_checkpoint
from ddpm.io import write_json

TRAIN = ["--T", "50", "--schedule-rescale", "true", "--batch-size", "16", "--warmup", "10", "--lr", "1e-3",
         "--threads", "1"]


def _env(**extra: str) -> dict:
    """The environment of a job: no MLflow settings of the caller's, so ddpm.tracking's defaults are the ones tested."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, **extra}


def _ddpm(*args: str, env: dict | None = None, timeout: float = 300, prefix: tuple[str, ...] = ()):
    start = time.monotonic()
    result = subprocess.run([*prefix, sys.executable, "-m", "ddpm.cli", *args], capture_output=True, text=True,
                            env=env or _env(), timeout=timeout)
    return result, time.monotonic() - start


def _assert_one_line_error(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert lines, "no error printed"
    error = lines[-1]
    assert error.startswith("ddpm ") and ": error: " in error, stderr[-3000:]
    for needle in needles:
        assert needle in error, f"{needle!r} not in {error!r}"
    assert len(error) < 600, error
    return error


def _write_tracking(tmp_path: Path, uri: str) -> Path:
    info = mlf.init_sweep(uri, "failures", "sweep", tmp_path / "artifacts", {})
    path = tmp_path / "tracking.json"
    write_json(path, info)
    return path


def test_the_bound_is_what_the_docs_say():
    defaults = dict(mlf.HTTP_DEFAULTS)
    assert mlf.http_settings(defaults) == (3, 1.0, 1.0, 10.0)
    assert mlf.call_failure_bound_s(defaults) == 4 * 10 + (2 + 1) + (4 + 1) == 48
    mlflow_defaults = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}
    assert mlf.call_failure_bound_s(mlflow_defaults) > 1000  # what a hung server cost before: 8 × 120 s + 250 s


@pytest.mark.parametrize("command", ["track init", "train"])
def test_a_closed_port_fails_in_seconds_with_one_line_naming_the_uri(tmp_path, command):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    if command == "track init":
        args = ["track", "init", "--experiment", "x", "--results", str(tmp_path), "--tracking-uri", uri,
                "--out", str(tmp_path / "tracking.json")]
    else:
        write_json(tmp_path / "tracking.json", {"tracking_uri": uri, "experiment_id": "1", "parent_run_id": "0" * 32})
        args = ["train", "--out", str(tmp_path / "run"), *TRAIN, "--steps", "20", "--tracking",
                str(tmp_path / "tracking.json")]
    result, elapsed = _ddpm(*args, timeout=150)  # MLflow's own defaults: 4 min 24 s
    assert result.returncode == 2, result.stderr[-3000:]
    error = _assert_one_line_error(result.stderr, f"at {uri} failed", "Connection refused")
    print(f"{command}: {elapsed:.1f} s: {error}")
    # refused at once: ≤ 8 s of backoff (ddpm.tracking.call_failure_bound_s) plus starting Python and torch
    assert elapsed < 60, f"{elapsed:.0f} s"


def test_a_hung_server_fails_within_the_users_own_settings(tmp_path):
    """A server that accepts connections and never answers: each try waits the timeout, and a user's settings (here
    narrower than the defaults) are the ones used."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # the kernel completes the handshakes; nobody reads the requests
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        settings = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "2", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
        result, elapsed = _ddpm("track", "init", "--experiment", "x", "--results", str(tmp_path), "--tracking-uri",
                                uri, "--out", str(tmp_path / "tracking.json"), env=_env(**settings), timeout=150)
    assert result.returncode == 2
    _assert_one_line_error(result.stderr, f"at {uri} failed", "no answer within 2 s", "2 tries")
    bound = mlf.call_failure_bound_s({**mlf.HTTP_DEFAULTS, **settings})
    assert bound == 4
    assert bound <= elapsed < bound + 45, f"{elapsed:.1f} s"


def test_a_server_that_dies_mid_training_fails_the_job_in_time_with_its_state_kept_then_resumes_in_the_same_run(
        tmp_path):
    out = tmp_path / "run"
    steps = 600
    command = [sys.executable, "-m", "ddpm.cli", "train", "--out", str(out), *TRAIN, "--steps", str(steps),
               "--log-every", "5", "--checkpoint-every", "0", "--run-name", "run", "--tracking",
               str(tmp_path / "tracking.json")]
    with mlflow_server(tmp_path / "mlflow.db") as url:
        _write_tracking(tmp_path, url)
        training = subprocess.Popen(command, stdout=(tmp_path / "stdout.txt").open("w"), stderr=subprocess.PIPE,
                                    text=True, env=_env())
        try:
            deadline = time.monotonic() + 300
            while training.poll() is None and logged_step(out) < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert training.poll() is None, f"the training ended first: {training.stderr.read()[-3000:]}"
            seen = logged_step(out)
            stopped = time.monotonic()  # the server stops now (SIGTERM, as a node's shutdown would)
        except BaseException:
            training.kill()
            raise
    try:
        _, stderr = training.communicate(timeout=mlf.TRACKING_FAILURE_BOUND_S + 90)
    except subprocess.TimeoutExpired:
        training.kill()
        pytest.fail(f"the training went on for {mlf.TRACKING_FAILURE_BOUND_S + 90:.0f} s after its server died")
    elapsed = time.monotonic() - stopped
    assert training.returncode == 2, stderr[-3000:]
    error = _assert_one_line_error(stderr, f"at {url} failed", "resume.pt", "run again")
    print(f"server died at step {seen}; the training failed {elapsed:.1f} s later: {stderr.strip()}")
    assert elapsed < mlf.TRACKING_FAILURE_BOUND_S + 30, f"{elapsed:.0f} s"  # + a step, the state, the shutdown
    state = load_checkpoint(out / "resume.pt")
    assert seen <= state["step"] < steps and f"step {state['step']} " in error
    run_id = (out / "mlflow_run_id.txt").read_text().strip()
    assert state["mlflow_run_id"] == run_id

    # The server back (on another port; the same store): the rerun continues the same run, no step lost or doubled.
    with mlflow_server(tmp_path / "mlflow.db") as url:
        info = json.loads((tmp_path / "tracking.json").read_text())
        write_json(tmp_path / "tracking.json", {**info, "tracking_uri": url})
        rerun = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert f"resuming from step {state['step']} of {steps}" in rerun.stdout
        assert not (out / "resume.pt").exists()
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=url)
        runs = [r for r in client.search_runs([info["experiment_id"]]) if r.data.tags.get("ddpm.kind") == "setting"]
        assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
        logged = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
        assert logged == list(range(5, steps + 1, 5)), "steps lost or logged twice across the server's death"


def _can_drop_file_permission_override() -> str | None:
    """None where a job can be made to obey file permissions (not root; or root able to drop CAP_DAC_OVERRIDE),
    else why not."""
    if os.geteuid() != 0:
        return None
    if not shutil.which("setpriv"):
        return "running as root, which writes read-only files, and setpriv (util-linux) is missing to drop that"
    probe = subprocess.run([*_UNPRIVILEGED, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"running as root, and cannot drop CAP_DAC_OVERRIDE: {probe.stderr.strip()}"
    return None


# Root writes read-only files (CAP_DAC_OVERRIDE). Dropping that capability from the bounding set makes a process of
# root's obey the permission bits, while it can still reach the interpreter (under /root, which `nobody` cannot).
_UNPRIVILEGED = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("read_only", ["file", "folder", "file, seen by SQLite"])
def test_a_read_only_store_is_one_line_naming_it_and_stays_untouched(tmp_path, read_only):
    reason = _can_drop_file_permission_override()
    if reason:
        skip_unless_required(reason)
    results = tmp_path / "results"
    results.mkdir()
    db = results / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracking = _write_tracking(tmp_path, uri)
    before = _sha256(db)
    train = ["train", "--out", str(tmp_path / "run"), *TRAIN, "--steps", "20", "--tracking", str(tracking)]
    locked = db if read_only.startswith("file") else results
    mode = locked.stat().st_mode
    locked.chmod(0o444 if locked == db else 0o555)
    try:
        if read_only == "file, seen by SQLite":  # past the check before the store is opened: SQLite's own error
            code = ("import sys; import ddpm.tracking as t; t.check_store_writable = lambda uri: None; "
                    "from ddpm.cli import main; sys.exit(main(sys.argv[1:]))")
            result = subprocess.run([*_UNPRIVILEGED, sys.executable, "-c", code, *train], capture_output=True,
                                    text=True, env=_env(), timeout=300)
        else:
            result, _ = _ddpm(*train, prefix=tuple(_UNPRIVILEGED))
    finally:
        locked.chmod(mode)
    assert result.returncode == 2, result.stderr[-3000:]
    error = _assert_one_line_error(result.stderr, f"the MLflow store {uri} is read-only",
                                   "make it writable or set mlflow.tracking_uri")
    assert result.stderr.strip() == error, "more than the one line"
    if read_only == "file, seen by SQLite":
        assert "(run creation: attempt to write a readonly database)" in error
    print(error)
    assert _sha256(db) == before
    assert not (tmp_path / "run" / "mlflow_run_id.txt").exists()


# ----------------------------------------------------------------------------------------------------------------
# The same through the workflow: Snakemake's retries keep every try's error, and a read-only store stops it first


def _tiny_config(tmp_path: Path, **train) -> Path:
    import yaml

    from conftest import TINY

    config = yaml.safe_load(TINY.read_text())
    config["sweep"]["schedule"] = ["linear"]
    config["train"].update(gpus=1, **train)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_training_job_whose_server_is_gone_fails_in_bounded_time_and_its_log_keeps_every_try(tmp_path):
    from conftest import snakemake

    setting = "linear-T50-eps-fixedlarge-mse-s0"
    work = tmp_path / "work"
    with mlflow_server(tmp_path / "server.db") as url:
        config = _tiny_config(tmp_path, retries=1)
        config.write_text(config.read_text() + f"mlflow:\n  tracking_uri: {url}\n")
        snakemake(work, "--cores", "1", "results/tracking/tiny.json", config=config)  # the sweep's parent run
    start = time.monotonic()  # the server is gone: the training job's two tries each fail within the bound
    result = snakemake(work, "--cores", "1", f"results/runs/tiny/{setting}/checkpoint.pt", config=config, check=False)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    logs = work / "results" / "logs" / "tiny" / "train"
    tries = (logs / f"{setting}.tries.log").read_text()  # Snakemake deletes the job's log before each try
    assert tries.count(f"== ddpm train {setting}: started") == 2, tries
    # the first call of a try: the check, before any work, that the sweep's experiment is there and not deleted
    assert tries.count(f"ddpm train: error: MLflow experiment lookup at {url} failed: cannot connect") == 2, tries
    assert "Traceback" not in tries
    log = (logs / f"{setting}.log").read_text()  # the last try's
    assert log.count("== ddpm train") == 1 and log in tries
    # Two tries of (Python + torch start-up + a refused call within 8 s), the data preparation and Snakemake's own
    # start: well inside 2 × TRACKING_FAILURE_BOUND_S; before, one try alone stalled for minutes.
    assert elapsed < 2 * mlf.TRACKING_FAILURE_BOUND_S, elapsed
    print(f"failed after {elapsed:.1f} s, both tries in the log")


@pytest.mark.parametrize("read_only", ["results_dir", "mlflow.tracking_uri"])
def test_the_workflow_stops_before_any_job_on_a_read_only_results_folder_or_store(tmp_path, read_only):
    reason = _can_drop_file_permission_override()
    if reason:
        skip_unless_required(reason)
    from conftest import ROOT, unactivated_environment

    work = tmp_path / "work"
    results = work / "results"
    results.mkdir(parents=True)
    db = results / "mlflow.db"
    mlf.init_sweep(f"sqlite:///{db}", "tiny", "tiny", results / "mlartifacts", {})
    before, listing = _sha256(db), sorted(p.name for p in results.iterdir())
    locked = results if read_only == "results_dir" else db
    mode = locked.stat().st_mode
    locked.chmod(0o555 if locked == results else 0o444)
    try:
        result = subprocess.run(
            [*_UNPRIVILEGED, sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
             "--directory", str(work), "--configfile", str(_tiny_config(tmp_path)), "--cores", "1"],
            capture_output=True, text=True, env=unactivated_environment(), timeout=300)
    finally:
        locked.chmod(mode)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"config key '{read_only}'" in output and "read-only" in output, output[-3000:]
    assert "Error in rule" not in output  # no job ran
    assert _sha256(db) == before and sorted(p.name for p in results.iterdir()) == listing
