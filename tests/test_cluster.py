"""What a cluster needs besides SLURM itself: the profile's shape, a tracking server on the submit node that answers
the names the compute nodes use, and the refusal of a SQLite store on a network filesystem."""

import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import mlflow_server

from ddpm import tracking, tracking_cluster
from ddpm.tracking import init_sweep
from ddpm.tracking_cluster import filesystem_of, refuse_sqlite_on_network_filesystem

ROOT = Path(__file__).resolve().parents[1]
MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
nfs01:/export/home /home nfs4 rw,relatime,vers=4.2 0 0
lustre@o2ib:/scratch /scratch lustre rw 0 0
tmpfs /tmp tmpfs rw 0 0
/dev/sdb1 /home/me/local\\040disk xfs rw 0 0
"""


def test_profile_sets_site_values_and_the_rules_ask_only_for_what_they_need():
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["jobs"] >= 1 and profile["slurm-requeue"] is True
    assert {"runtime", "mem_mb"} <= set(profile["default-resources"])
    assert "--signal=TERM@" in profile["set-resources"]["train"]["slurm_extra"]  # training saves before the limit
    rules = "\n".join(path.read_text() for path in (ROOT / "workflow" / "rules").glob("*.smk"))
    for site_value in ("slurm_partition", "slurm_account", "runtime", "mem_mb", "qos"):
        assert f"{site_value}=" not in rules, f"{site_value} belongs in the profile, not in a rule"
    profiled = set(profile["set-resources"])
    defined = {a or b for a, b in re.findall(r"(?m)^\s*(?:rule (\w+):|use rule \w+ as (\w+) with:)", rules)}
    assert {"train", "sample", "fid_snapshot"} <= defined
    assert profiled <= defined, f"the profile sizes rules that do not exist: {profiled - defined}"


@pytest.mark.parametrize("path,kind", [
    ("/home/me/results/mlflow.db", "nfs4"),
    ("/scratch/run/mlflow.db", "lustre"),
    ("/home/me/local disk/mlflow.db", "xfs"),  # a local disk mounted under an NFS home: the deepest mount counts
    ("/tmp/mlflow.db", "tmpfs"),
    ("/opt/x/mlflow.db", "ext4"),
])
def test_the_mount_that_holds_a_path_is_the_deepest_one(path, kind):
    assert filesystem_of(path, MOUNTS)[1] == kind


def test_a_sqlite_store_on_a_network_filesystem_is_refused_with_the_way_out():
    for uri in ("sqlite:////home/me/results/mlflow.db", "sqlite:////scratch/run/mlflow.db"):
        with pytest.raises(ValueError, match=r"network filesystem \((nfs4|lustre) mounted at /(home|scratch)\).*ddpm "
                                             r"track serve"):
            refuse_sqlite_on_network_filesystem(uri, MOUNTS)
    for uri in ("sqlite:////tmp/mlflow.db", "sqlite:////home/me/local disk/mlflow.db", "http://submit01:5000",
                "postgresql://db/mlflow"):
        refuse_sqlite_on_network_filesystem(uri, MOUNTS)  # local disks and servers are fine


def test_the_sweep_refuses_such_a_store_before_writing_anything(tmp_path, monkeypatch):
    """The check is wired into the first write of every sweep (``ddpm track init``, the mlflow_init rule)."""
    monkeypatch.setattr(tracking_cluster, "filesystem_of", lambda path, mounts=None: ("/shared", "nfs"))
    with pytest.raises(ValueError, match=r"nfs mounted at /shared"):
        init_sweep(f"sqlite:///{tmp_path / 'mlflow.db'}", "x", "sweep", tmp_path / "artifacts", {})
    assert not (tmp_path / "mlflow.db").exists()


def _get(url: str, host: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture
def tracking_server(tmp_path):
    with mlflow_server(tmp_path / "mlflow.db") as url:
        yield url, int(url.rsplit(":", 1)[1])


def test_tracking_server_takes_the_jobs_runs_and_answers_only_its_own_names(tracking_server, tmp_path):
    url, port = tracking_server
    info = init_sweep(url, "cluster", "sweep", tmp_path / "mlartifacts", {"a": 1})  # what mlflow_init does
    run_id = tracking.start_setting_run(info, "setting", {"T": 50})
    tracking.log_metrics(url, run_id, {"loss": 0.5}, 1)
    tracking.finish_run(url, run_id)
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=url).get_run(run_id)
    assert run.data.metrics["loss"] == 0.5 and run.info.status == "FINISHED"
    assert (tmp_path / "mlflow.db").exists()  # the store is the server's, on the submit node's disk

    # Compute nodes reach the submit node by its host name: that Host header is answered; another is refused
    # (MLflow's guard applies to the API, not to /health).
    api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(api, host=f"{socket.gethostname()}:{port}") == 200
    assert _get(api, host=f"attacker.example:{port}") == 403


def _server_process_tree(port: int) -> list[str]:
    """The command lines of the ``ddpm track serve`` process listening on ``port`` (through its uvicorn worker: the
    ``mlflow server`` process it became) and of everything that process started."""
    import psutil

    listening = next(c.pid for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port)
    server = next(p for p in [psutil.Process(listening), *psutil.Process(listening).parents()]
                  if "mlflow" in p.cmdline() and "server" in p.cmdline())
    return [" ".join(p.cmdline()) for p in (server, *server.children(recursive=True))]


def test_track_serve_starts_the_server_without_mlflows_genai_job_workers(tracking_server):
    """MLflow 3's server starts a job runner and Huey consumers for GenAI jobs unless told not to; a sweep's tracking
    never uses them (``tracking_cluster.SERVER_ENVIRONMENT``). A user who sets the variable keeps their choice."""
    _, port = tracking_server
    processes = _server_process_tree(port)
    assert any("uvicorn" in p for p in processes), processes
    assert not any("huey" in p or "mlflow.server.jobs" in p for p in processes), processes
    assert tracking_cluster.server_environment({"PATH": "/bin"}) == {
        "PATH": "/bin", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    assert tracking_cluster.server_environment({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"}) == {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"}


def test_track_serve_refuses_a_store_on_a_network_filesystem(monkeypatch, capsys):
    from ddpm.cli import main

    monkeypatch.setattr(tracking_cluster, "filesystem_of", lambda path, mounts=None: ("/home", "nfs4"))
    assert main(["track", "serve", "--store", "/home/me/mlflow.db"]) == 2
    assert "network filesystem (nfs4 mounted at /home)" in capsys.readouterr().err
