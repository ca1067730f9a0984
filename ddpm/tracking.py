"""MLflow tracking: one experiment per config, one parent run per sweep, one child run per setting.

Every job talks to the store through an explicit ``MlflowClient`` and a run id kept on disk (the sweep's
``tracking.json``, each setting's ``mlflow_run_id.txt``), so sampling and evaluation jobs attach to the run the
training job created. The default store is SQLite at ``results/mlflow.db`` (absolute path); it and the experiment
are created once, by the first job, before any parallel writer starts. ``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

R = TypeVar("R")

#: SQLite answers "database is locked" while another process writes; retry with backoff for this long.
LOCK_RETRY_SECONDS = 120.0


def default_tracking_uri(results_dir: str | Path, configured: str | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``configured`` (the config's ``mlflow.tracking_uri``), else SQLite at
    ``<results_dir>/mlflow.db`` by absolute path."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    return f"sqlite:///{(Path(results_dir).resolve() / 'mlflow.db').as_posix()}"


#: Filesystem types (as /proc/mounts names them) that are shared over a network: SQLite's file locking is unreliable
#: on them (the SQLite documentation's "How To Corrupt An SQLite Database File", section 2).
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
                       "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "afs", "9p", "ocfs2", "gfs2")


def filesystem_of(path: str | Path, mounts: str | None = None) -> tuple[str, str]:
    """``(mount point, filesystem type)`` of the mount that holds ``path`` (Linux ``/proc/mounts``; ``("", "")``
    where there is none to read)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return "", ""
    path = Path(path).resolve()
    best = ("", "")
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (path == Path(point) or Path(point) in path.parents) and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best


def refuse_sqlite_on_network_filesystem(tracking_uri: str, mounts: str | None = None) -> None:
    """Raise ValueError if ``tracking_uri`` is a SQLite file on a network filesystem: jobs on several nodes writing
    to it through NFS or Lustre locks can corrupt it or fail at random. A tracking server on the submit node is the
    way there (``ddpm track serve``; README, "Run on a cluster")."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    database = Path(tracking_uri.removeprefix("sqlite:///").split("?")[0]).resolve()  # relative: to the cwd
    point, kind = filesystem_of(database.parent, mounts)
    if kind in NETWORK_FILESYSTEMS or kind.startswith(("nfs", "fuse.nfs")):
        raise ValueError(
            f"the MLflow store {database} is a SQLite file on a network filesystem ({kind} mounted at {point}): "
            f"SQLite's locking is unreliable there, and jobs on several nodes would corrupt it or fail. Start a "
            f"tracking server on the submit node (`ddpm track serve --store /local/disk/mlflow.db ...`) and set "
            f"mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to its http:// address")


def serve_command(store: str | Path, *, host: str = "0.0.0.0", port: int = 5000, allowed_hosts: str | None = None,
                  workers: int = 4) -> tuple[list[str], str]:
    """The ``mlflow server`` command for a cluster's submit node, and the URI to give the jobs.

    ``store``: a SQLite file on the submit node's own disk (refused on a network filesystem), or any SQLAlchemy URI
    (``postgresql://…``). ``allowed_hosts``: the Host headers the server answers (MLflow's guard against DNS
    rebinding; by default it answers only localhost and private IPs, not the names compute nodes use). The default
    here is this machine's names: its host name and fully qualified name, with and without the port."""
    import socket

    uri = str(store) if "://" in str(store) else f"sqlite:///{Path(store).resolve().as_posix()}"
    refuse_sqlite_on_network_filesystem(uri)
    name = socket.getfqdn()
    name = name if "." in name and not name.startswith("localhost") else socket.gethostname()
    if allowed_hosts is None:
        names = sorted({socket.gethostname(), name, "localhost", "127.0.0.1"} | ({host} - {"0.0.0.0", "::"}))
        allowed_hosts = ",".join(f"{n},{n}:{port}" for n in names)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port",
               str(port), "--allowed-hosts", allowed_hosts, "--workers", str(workers)]
    advertised = name if host in ("0.0.0.0", "::") else host
    return command, f"http://{advertised}:{port}"


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def with_retry(call: Callable[[], R], *, what: str) -> R:
    """Run ``call``, retrying with jittered exponential backoff while SQLite reports the database locked."""
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    delay = 0.1
    while True:
        try:
            return call()
        except Exception as err:  # MlflowException wraps sqlalchemy's OperationalError
            if "database is locked" not in str(err) or time.monotonic() > deadline:
                raise RuntimeError(f"MLflow {what} failed: {err}") from err
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 5.0)


def init_sweep(tracking_uri: str, experiment: str, sweep_name: str, artifact_root: str | Path, config: dict,
               *, kind: str = "sweep") -> dict:
    """Create (or reuse) the experiment and start the sweep's parent run (tagged ``ddpm.kind``); returns what jobs
    need to attach."""
    refuse_sqlite_on_network_filesystem(tracking_uri)
    client = _client(tracking_uri)
    found = with_retry(lambda: client.get_experiment_by_name(experiment), what="experiment lookup")
    if found is None:
        artifact_location = Path(artifact_root).resolve().as_uri()
        experiment_id = with_retry(lambda: client.create_experiment(experiment, artifact_location=artifact_location),
                                   what="experiment creation")
    else:
        experiment_id = found.experiment_id
    parent = with_retry(lambda: client.create_run(experiment_id, run_name=sweep_name, tags={"ddpm.kind": kind}),
                        what="parent run creation")
    with_retry(lambda: client.log_dict(parent.info.run_id, config, "config.json"), what="config upload")
    return {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "parent_run_id": parent.info.run_id}


def read_tracking(path: str | Path) -> dict:
    path = Path(path)
    try:
        tracking = json.loads(path.read_text())
        return {k: tracking[k] for k in ("tracking_uri", "experiment_id", "parent_run_id")}
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot read MLflow tracking file {path}: {err}") from err


def start_setting_run(tracking: dict, name: str, params: dict) -> str:
    """A child run of the sweep for setting ``name`` with ``params`` (the full resolved setting)."""
    client = _client(tracking["tracking_uri"])
    run = with_retry(lambda: client.create_run(
        tracking["experiment_id"], run_name=name,
        tags={"mlflow.parentRunId": tracking["parent_run_id"], "ddpm.kind": "setting", "ddpm.setting": name},
    ), what="run creation")
    log_params(tracking["tracking_uri"], run.info.run_id, params)
    return run.info.run_id


def log_params(tracking_uri: str, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    batch = [Param(k, str(v)) for k, v in sorted(params.items())]
    _retrying_client_call(tracking_uri, "parameter logging", lambda c: c.log_batch(run_id, params=batch))


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
    _retrying_client_call(tracking_uri, "metric logging", lambda c: c.log_batch(run_id, metrics=batch))


def log_artifact(tracking_uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    _retrying_client_call(tracking_uri, "artifact upload", lambda c: c.log_artifact(run_id, str(path), artifact_path))


def set_tag(tracking_uri: str, run_id: str, key: str, value: str) -> None:
    _retrying_client_call(tracking_uri, "tag", lambda c: c.set_tag(run_id, key, value))


def mark_running(tracking_uri: str, run_id: str) -> None:
    """Set a resumed run's status back to RUNNING."""
    _retrying_client_call(tracking_uri, "run status update", lambda c: c.update_run(run_id, status="RUNNING"))


def last_logged_step(tracking_uri: str, run_id: str, key: str) -> int:
    """The highest step at which ``key`` was logged to the run (0 if never)."""
    client = _client(tracking_uri)
    history = with_retry(lambda: client.get_metric_history(run_id, key), what="metric history")
    return max((m.step for m in history), default=0)


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _retrying_client_call(tracking_uri, "run status update", lambda c: c.set_terminated(run_id, status=status))


def _retrying_client_call(tracking_uri: str, what: str, call: Callable) -> None:
    client = _client(tracking_uri)
    with_retry(lambda: call(client), what=what)
