"""MLflow tracking: one experiment per config, one parent run per sweep, one child run per setting.

Every job talks to the store through an explicit ``MlflowClient`` and a run id kept on disk (the sweep's
``tracking.json``, each setting's ``mlflow_run_id.txt``), so sampling and evaluation jobs attach to the run the
training job created. The default store is SQLite at ``results/mlflow.db`` (absolute path); it and the experiment
are created once, by the first job, before any parallel writer starts. ``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

R = TypeVar("R")

#: SQLite answers "database is locked" while another process writes; retry with backoff for this long.
LOCK_RETRY_SECONDS = 120.0

#: Bounded settings for MLflow's HTTP client (a tracking server at an ``http(s)://`` URI), applied where the variable
#: is unset (export one to widen it). MLflow's own defaults are 7 retries, backoff factor 2 (urllib3 sleeps 0, 4, 8,
#: 16, 32, 64, 120 s, plus up to 1 s of jitter each), a 120 s timeout per try and honouring a Retry-After header: a
#: server that is down failed ``ddpm track init`` after 4 min 24 s, and one that died mid-run stalled training for
#: ~8 min. With these, urllib3 sleeps 0, then 2 + ≤1, then 4 + ≤1 s between the 4 tries. A server whose own store
#: is so busy that one request takes over 10 s (its SQLite waits up to 20 s for a lock) needs a wider timeout.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",  # a server's Retry-After would sleep unbounded
}
for _name, _value in HTTP_DEFAULTS.items():
    os.environ.setdefault(_name, _value)  # before any client: MLflow reads them at each request


def http_settings(environ=os.environ) -> tuple[int, float, float, float]:
    """``(max retries, backoff factor, backoff jitter, timeout)`` as MLflow's HTTP client will use them (unset:
    ours)."""
    environ = {**HTTP_DEFAULTS, **environ}
    return (int(environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), float(environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]),
            float(environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"]), float(environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]))


def call_failure_bound_s(environ=os.environ) -> float:
    """Worst case, in seconds, for one MLflow call to a tracking server that is down, unreachable or hung to fail:
    each of the 1 + R tries ends within the timeout T (refused at once, connect timeout, or read timeout), and
    urllib3 sleeps 0 s before the first retry and min(120, F·2^(k-1) + J) before retry k ≥ 2. With the defaults:
    4 × 10 + (2 + 1) + (4 + 1) = 48 s; a server that refuses connections (down, or its process died): ≤ 8 s.
    Not covered: a name lookup that hangs (DNS), or a server that trickles bytes slower than one per T."""
    retries, factor, jitter, timeout = http_settings(environ)
    sleeps = sum(min(120.0, factor * 2 ** (k - 1) + jitter) for k in range(2, retries + 1))
    return (retries + 1) * timeout + sleeps


#: A job that talks to a tracking server that is down or dies fails within this many seconds of its failing call
#: starting: that call (:func:`call_failure_bound_s`, 48 s with the defaults) plus one try, without retries, to mark
#: its run FAILED (:func:`best_effort`, ≤ T = 10 s): 58 s. A training job also finishes the step under way and
#: writes its resume state first.
CALL_FAILURE_BOUND_S = call_failure_bound_s(HTTP_DEFAULTS)
TRACKING_FAILURE_BOUND_S = CALL_FAILURE_BOUND_S + http_settings(HTTP_DEFAULTS)[3]


class TrackingError(RuntimeError):
    """An MLflow call failed. The message is one line that names the store (the tracking URI)."""


def _sqlite_path(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?")[0]
    return Path(path) if path and path != ":memory:" else None


def _first_line(text: str) -> str:
    """The first line of an error that says something (SQLAlchemy's "(raised as a result of Query-invoked autoflush
    …)" preamble skipped), at most 300 characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("(raised as a result of")] or lines or [""]
    return lines[0] if len(lines[0]) <= 300 else lines[0][:297] + "..."


def _summary(err: BaseException) -> str:
    """One line for an MLflow error: MLflow reports a failed HTTP request as a long urllib3 repr (pool, URL, the
    connection object's address); SQLAlchemy adds the SQL and its parameters over several lines."""
    text = str(err)
    try:
        retries, _, _, timeout = http_settings()
    except ValueError:  # a setting MLflow cannot read either: its own error says which
        return _first_line(text)
    tries = f"{retries + 1} tr{'y' if retries == 0 else 'ies'}"
    found = re.search(r"\((?:sqlite3|psycopg2?|pymysql|MySQLdb)[\w.]*\) ([^\n]+)", text)
    if found:
        return _first_line(found.group(0))
    found = re.search(r"Failed to establish a new connection: (\[Errno -?\d+\] [^'\")]+)", text)
    if found:
        return f"cannot connect ({found.group(1).strip()}; {tries})"
    if "ConnectTimeoutError" in text or "Connection to" in text and "timed out" in text:
        return f"cannot connect: no answer within {timeout:g} s ({tries})"
    if "Read timed out" in text or "ReadTimeoutError" in text:
        return f"no answer within {timeout:g} s (read timed out; {tries})"
    found = re.search(r"too many (\d+) error responses", text)
    if found:
        return f"the server answered HTTP {found.group(1)} to each of {tries}"
    found = re.search(r"(RemoteDisconnected|ConnectionResetError|Connection aborted|ProtocolError)[^,)]*", text)
    if found:
        return f"the server dropped the connection ({found.group(0).strip()[:120]}; {tries})"
    return _first_line(text)


def _tracking_error(what: str, tracking_uri: str | None, err: BaseException) -> TrackingError:
    summary = _summary(err)
    if tracking_uri is None:
        return TrackingError(f"MLflow {what} failed: {summary}")
    if _sqlite_path(tracking_uri) is not None and "readonly database" in summary:
        return TrackingError(f"the MLflow store {tracking_uri} is read-only ({what}: {summary.split(') ')[-1]}): "
                             f"make it writable or set mlflow.tracking_uri")
    if _sqlite_path(tracking_uri) is not None and "unable to open database file" in summary:
        return TrackingError(f"the MLflow store {tracking_uri} cannot be opened ({what}: unable to open database "
                             f"file): make its folder exist and writable, or set mlflow.tracking_uri")
    return TrackingError(f"MLflow {what} at {tracking_uri} failed: {summary}")


def check_store_writable(tracking_uri: str) -> None:
    """Raise :class:`TrackingError` at once, before SQLite touches it, if ``tracking_uri`` is a SQLite file that
    cannot be written: the file read-only, or its folder (where SQLite writes its journal, and creates the file)
    not writable. Left to SQLite, the first is a traceback from deep in SQLAlchemy, the second ~100 s of retries."""
    path = _sqlite_path(tracking_uri)
    if path is None:
        return
    path = path.resolve()
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise TrackingError(f"the MLflow store {tracking_uri} is read-only ({path} cannot be written): make it "
                            f"writable or set mlflow.tracking_uri")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        state = "is read-only" if path.exists() else "cannot be created"
        raise TrackingError(f"the MLflow store {tracking_uri} {state} (the folder {folder} cannot be written, and "
                            f"SQLite writes its journal there): make it writable or set mlflow.tracking_uri")


class _DropReraisedDatabaseErrors(logging.Filter):
    """MLflow's SQL store logs each database error with its traceback (~80 lines), then raises it: the error comes
    back here as one line naming the store, so the log records are dropped."""

    PREFIXES = ("SQLAlchemy database error", "SQLAlchemy engine could not be created")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


logging.getLogger("mlflow.store.db.utils").addFilter(_DropReraisedDatabaseErrors())


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

    check_store_writable(tracking_uri)
    return with_retry(lambda: MlflowClient(tracking_uri=tracking_uri), what="store opening", uri=tracking_uri)


def with_retry(call: Callable[[], R], *, what: str, uri: str | None = None) -> R:
    """Run ``call``, retrying with jittered exponential backoff while SQLite reports the database locked. Any other
    failure (or a lock past :data:`LOCK_RETRY_SECONDS`) raises :class:`TrackingError`, one line naming ``uri``."""
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    delay = 0.1
    while True:
        try:
            return call()
        except Exception as err:  # MlflowException wraps sqlalchemy's OperationalError
            if "database is locked" not in str(err) or time.monotonic() > deadline:
                raise _tracking_error(what, uri, err) from err
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 5.0)


def best_effort(what: str, call: Callable[[], object]) -> bool:
    """Run ``call`` (MLflow calls, while another error is on its way up: marking the run FAILED or KILLED) with one
    HTTP try, no retries, so a server that is gone costs at most one timeout. A failure prints one line and is
    swallowed, so that the original error is the one reported; returns whether ``call`` succeeded."""
    name = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    previous = os.environ.get(name)
    os.environ[name] = "0"
    try:
        call()
        return True
    except Exception as err:
        print(f"could not {what} either: {err if isinstance(err, TrackingError) else _summary(err)}",
              file=sys.stderr, flush=True)
        return False
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def init_sweep(tracking_uri: str, experiment: str, sweep_name: str, artifact_root: str | Path, config: dict,
               *, kind: str = "sweep") -> dict:
    """Create (or reuse) the experiment and the sweep's parent run (tagged ``ddpm.kind``; a ``sweep`` run of this name
    already in the experiment is reused, never duplicated); returns what jobs need to attach."""
    refuse_sqlite_on_network_filesystem(tracking_uri)
    client = _client(tracking_uri)
    found = with_retry(lambda: client.get_experiment_by_name(experiment), what="experiment lookup", uri=tracking_uri)
    if found is None:
        artifact_location = Path(artifact_root).resolve().as_uri()
        experiment_id = with_retry(lambda: client.create_experiment(experiment, artifact_location=artifact_location),
                                   what="experiment creation", uri=tracking_uri)
    else:
        experiment_id = found.experiment_id
    set_experiment_view(tracking_uri, experiment_id)
    parent = _existing_parent(client, tracking_uri, experiment_id, sweep_name, kind) if kind == "sweep" else None
    if parent is None:
        parent = with_retry(lambda: client.create_run(experiment_id, run_name=sweep_name, tags={"ddpm.kind": kind}),
                            what="parent run creation", uri=tracking_uri)
    if config:
        log_config(tracking_uri, parent.info.run_id, config)
    return {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "parent_run_id": parent.info.run_id}


#: The experiment's kind for MLflow 3's UI: model training, not a GenAI app. MLflow 3.17.2's UI reads it only when its
#: GenAI / "Model training" switch is off; with the switch (the default) the browser's choice decides (:func:`view_url`).
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")
#: The key of the experiment's saved view (MLflow's saved / shared views of the runs page, kept as the experiment tag
#: ``mlflow.sharedViewState.<key>``, listed under the experiment's "Views" by :data:`VIEW_NAME` and opened by
#: ``#/experiments/<id>/runs?viewStateShareKey=<key>``).
VIEW_KEY = "ddpm-metrics"
VIEW_NAME = "FID, IS, bits/dim by setting"
#: The metrics the view shows as columns, in order, and the one it sorts by (ascending: lower is better).
VIEW_METRICS = ("fid", "fid_se", "is_mean", "kid_mean", "bpd", "fid_test", "bpd_train", "network_evaluations",
                "sampling_images_per_s")


def view_url(experiment_id: str) -> str:
    """The address of the experiment's metrics view, after the UI's own (``http://127.0.0.1:5000/``): MLflow 3's
    "Model training" side of the UI (its ``workflowType``; the UI opens on its GenAI side otherwise, a choice each
    browser keeps), the experiment's runs, the shared view :data:`VIEW_KEY`."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def experiment_view() -> dict:
    """The runs view an experiment of this project opens on (MLflow's shared view state, the JSON its UI writes when
    a view is shared): the columns FID (± its bootstrap error), IS, KID, bits/dim and what sampling cost, then the
    sweep's axes (the settings' parameters); sorted by FID; and the charts of its compare view: FID against every
    axis (parallel coordinates), FID against T and against bits/dim, and FID per run."""
    from .settings import SWEEP_AXES

    axes = list(SWEEP_AXES)
    section = "ddpm-fid-against-axes"

    def chart(uuid: str, kind: str, **config) -> dict:
        return {"uuid": uuid, "type": kind, "runsCountToCompare": 100, "metricSectionId": section, "deleted": False,
                "isGenerated": False, **config}

    return {
        "orderByKey": "metrics.`fid`", "orderByAsc": True,
        "selectedColumns": [f"metrics.`{m}`" for m in VIEW_METRICS] + [f"params.`{a}`" for a in axes],
        "compareRunCharts": [
            chart("ddpm-parallel", "PARALLEL", selectedParams=axes, selectedMetrics=["fid"], showAllRuns=True),
            chart("ddpm-fid-T", "SCATTER", xaxis={"key": "T", "type": "PARAM"}, yaxis={"key": "fid", "type": "METRIC"}),
            chart("ddpm-fid-bpd", "SCATTER", xaxis={"key": "bpd", "type": "METRIC"},
                  yaxis={"key": "fid", "type": "METRIC"}),
            chart("ddpm-fid", "BAR", metricKey="fid"),
        ],
        "compareRunSections": [{"uuid": section, "name": "FID against the sweep's axes", "display": True,
                                "isReordered": False, "deleted": False, "isGenerated": False}],
        "isAccordionReordered": True,
        "runsHiddenMode": "SHOW_ALL",  # MLflow hides all but the first 10 runs from the charts otherwise
    }


def set_experiment_view(tracking_uri: str, experiment_id: str) -> None:
    """Store the view :func:`experiment_view` in the experiment under :data:`VIEW_KEY` (replacing this project's
    earlier one), and, where the experiment has none yet, its kind (:data:`EXPERIMENT_KIND_TAG`) and a description
    that links the view (a description or kind a user set is kept)."""
    client = _client(tracking_uri)
    existing = with_retry(lambda: client.get_experiment(experiment_id), what="experiment lookup",
                          uri=tracking_uri).tags
    now = int(time.time() * 1000)
    # MLflow 3's saved-view envelope: the view's name, its times and the state as a JSON string; its "Views" tab lists
    # it by name, and the share link opens it.
    view = {"name": VIEW_NAME, "createdAt": now, "updatedAt": now,
            "state": json.dumps(experiment_view(), separators=(",", ":"))}
    tags = {EXPERIMENT_KIND_TAG[0]: EXPERIMENT_KIND_TAG[1],
            f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(view, separators=(",", ":")),
            "mlflow.note.content": (
                "Runs of this project's sweeps: one parent run per sweep, one child run per setting, one run per "
                "sampler point under it. FID, IS, KID, bits/dim and the sweep's axes as columns, sorted by FID, with "
                f"FID against the axes in the charts: [the metrics view]({view_url(experiment_id)}).")}
    for key, value in tags.items():
        if key.startswith("mlflow.sharedViewState.") or key not in existing:
            with_retry(lambda: client.set_experiment_tag(experiment_id, key, value), what="experiment tag",
                       uri=tracking_uri)


def _existing_parent(client, tracking_uri: str, experiment_id: str, sweep_name: str, kind: str):
    """The sweep's parent run if the store has one already (the newest, if an older version made several): a sweep
    run again, or whose tracking file was lost, goes on in the same parent run instead of starting another."""
    query = f"tags.`ddpm.kind` = '{kind}' and attributes.run_name = '{sweep_name}'"
    found = with_retry(lambda: client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"],
                                                  max_results=1), what="parent run lookup", uri=tracking_uri)
    return found[0] if found else None


def log_config(tracking_uri: str, run_id: str, config: dict) -> None:
    """The sweep's resolved config, as ``config.json`` of its parent run (replaced when the config changes)."""
    with_retry(lambda: _client(tracking_uri).log_dict(run_id, config, "config.json"), what="config upload",
               uri=tracking_uri)


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
    ), what="run creation", uri=tracking["tracking_uri"])
    log_params(tracking["tracking_uri"], run.info.run_id, params)
    return run.info.run_id


def start_sampler_run(tracking: dict, setting_run_id: str, setting: str, point: dict) -> str:
    """The run of one sampler point of a setting, nested under the setting's run (``point``: its name and keys, logged
    as params), so that MLflow's Compare lines a setting's samplers up. A point sampled again (its job rerun) goes on
    in the run it has already, found by its tags."""
    client = _client(tracking["tracking_uri"])
    name = point["name"]
    query = f"tags.`mlflow.parentRunId` = '{setting_run_id}' and tags.`ddpm.sampler` = '{name}'"
    found = with_retry(lambda: client.search_runs([tracking["experiment_id"]], query, max_results=1),
                       what="sampler run lookup", uri=tracking["tracking_uri"])
    if found:
        return found[0].info.run_id
    run = with_retry(lambda: client.create_run(
        tracking["experiment_id"], run_name=f"{setting}/{name}",
        tags={"mlflow.parentRunId": setting_run_id, "ddpm.kind": "sampler", "ddpm.setting": setting,
              "ddpm.sampler": name},
    ), what="run creation", uri=tracking["tracking_uri"])
    log_params(tracking["tracking_uri"], run.info.run_id, {k: v for k, v in point.items() if k != "name" and v is not None})
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
    history = with_retry(lambda: client.get_metric_history(run_id, key), what="metric history", uri=tracking_uri)
    return max((m.step for m in history), default=0)


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _retrying_client_call(tracking_uri, "run status update", lambda c: c.set_terminated(run_id, status=status))


def _retrying_client_call(tracking_uri: str, what: str, call: Callable) -> None:
    client = _client(tracking_uri)
    with_retry(lambda: call(client), what=what, uri=tracking_uri)
