"""MLflow tracking: one experiment per config, one parent run per sweep, one child run per setting, one run per
sampler point under its setting's run.

Every job talks to the store through an explicit ``MlflowClient`` and a run id kept on disk (the sweep's
``tracking.json``, each setting's ``mlflow_run_id.txt``), so sampling and evaluation jobs attach to the run the
training job created. The default store is SQLite at ``<results>/mlflow.db``, its artifacts in
``<results>/mlartifacts``; the tracking file names that results folder relative to itself (:func:`write_tracking`),
so a copied or moved project keeps to its own store and artifacts (:func:`adopt_project_artifacts`). A store the user
gave (``MLFLOW_TRACKING_URI``, ``mlflow.tracking_uri``) is kept as given. The store and the experiment are created
once, by the first job, before any parallel writer starts. A job checks, before any work, that the experiment and the
runs it logs to are not deleted (:func:`check_active`: a deleted one is named with the command that restores it).

Which run holds what (a score lives on one run):

- a setting's run: the setting's axes and its whole training config as params; the training curves (loss, learning
  rate, gradient norm, images/s), bits/dim (``bpd``, ``bpd_train``), the reconstruction error (at step S) and FID over
  training (``fid_over_training`` … at each training step, its last point from the sweep's first sampler point);
- a sampler point's run: the setting's axes and the point (``sampler``, ``S``, ``eta``, ``variance``, ``skip``,
  ``clip``, ``sampler_curve``) as params; the final checkpoint's FID, IS, KID, precision / recall and what sampling
  cost, logged at step S so that MLflow's line charts draw them against S; the samples' grid and how FID was computed
  (``ddpm.fid.*`` tags);
- the sweep's parent run: the resolved config and the report's tables.

What the experiment's saved view in MLflow's UI holds is :mod:`ddpm.tracking_view`'s; the store that a cluster's
jobs share (no SQLite file on a network filesystem; a tracking server instead), :mod:`ddpm.tracking_cluster`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shlex
import sqlite3
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

from .io import read_json
from .tracking_cluster import refuse_sqlite_on_network_filesystem
from .tracking_view import view_tags

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


#: The default store and its artifacts, in the results folder.
STORE_FILE = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"


def project_store_uri(results_dir: str | Path) -> str:
    """The default store of the results folder ``results_dir``: SQLite at ``<results_dir>/mlflow.db``, by absolute
    path (SQLAlchemy reads a relative one against the working directory)."""
    return f"sqlite:///{(Path(results_dir).resolve() / STORE_FILE).as_posix()}"


def given_tracking_uri(configured: str | None = None) -> str | None:
    """The store the user chose: ``MLFLOW_TRACKING_URI`` if set, else ``configured`` (the config's
    ``mlflow.tracking_uri``); None for the project's own (:func:`project_store_uri`)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or None


def default_tracking_uri(results_dir: str | Path, configured: str | None = None) -> str:
    """The store the user chose (:func:`given_tracking_uri`), else the project's own in ``results_dir``."""
    return given_tracking_uri(configured) or project_store_uri(results_dir)


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
               *, kind: str = "sweep", project_store: bool = False) -> dict:
    """Create (or reuse) the experiment and the sweep's parent run (tagged ``ddpm.kind``; a ``sweep`` run of this name
    already in the experiment is reused, never duplicated); returns what jobs need to attach. A deleted experiment or
    parent run is refused, naming the command that restores it. ``project_store``: the store is the project's own, so
    an artifact location another copy of the project made is moved to ``artifact_root``
    (:func:`adopt_project_artifacts`)."""
    from mlflow.entities import LifecycleStage

    refuse_sqlite_on_network_filesystem(tracking_uri)
    client = _client(tracking_uri)
    found = with_retry(lambda: client.get_experiment_by_name(experiment), what="experiment lookup", uri=tracking_uri)
    if found is None:
        artifact_location = Path(artifact_root).resolve().as_uri()
        experiment_id = with_retry(lambda: client.create_experiment(experiment, artifact_location=artifact_location),
                                   what="experiment creation", uri=tracking_uri)
    elif found.lifecycle_stage != LifecycleStage.ACTIVE:
        raise _deleted_experiment(tracking_uri, found)
    else:
        experiment_id = found.experiment_id
        if project_store:
            adopt_project_artifacts(tracking_uri, experiment_id, artifact_root)
    set_experiment_view(tracking_uri, experiment_id)
    parent = _existing_parent(client, tracking_uri, experiment_id, sweep_name, kind) if kind == "sweep" else None
    if parent is None:
        parent = with_retry(lambda: client.create_run(experiment_id, run_name=sweep_name, tags={"ddpm.kind": kind}),
                            what="parent run creation", uri=tracking_uri)
    if config:
        log_config(tracking_uri, parent.info.run_id, config)
    return {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "parent_run_id": parent.info.run_id}


def set_experiment_view(tracking_uri: str, experiment_id: str) -> None:
    """Store the saved view of the MLflow UI in the experiment: the tags :func:`ddpm.tracking_view.view_tags` says
    (the view, replacing this project's earlier one; the experiment's kind and a description that links the view,
    where it has none yet)."""
    client = _client(tracking_uri)
    existing = with_retry(lambda: client.get_experiment(experiment_id), what="experiment lookup",
                          uri=tracking_uri).tags
    for key, value in view_tags(experiment_id, existing).items():
        with_retry(lambda: client.set_experiment_tag(experiment_id, key, value), what="experiment tag",
                   uri=tracking_uri)


def _existing_parent(client, tracking_uri: str, experiment_id: str, sweep_name: str, kind: str):
    """The sweep's parent run if the store has one already (the newest, if an older version made several): a sweep
    run again, or whose tracking file was lost, goes on in the same parent run instead of starting another."""
    from mlflow.entities import LifecycleStage, ViewType

    query = f"tags.`ddpm.kind` = '{kind}' and attributes.run_name = '{sweep_name}'"
    found = with_retry(lambda: client.search_runs([experiment_id], query, run_view_type=ViewType.ALL,
                                                  order_by=["attributes.start_time DESC"], max_results=1),
                       what="parent run lookup", uri=tracking_uri)
    if found and found[0].info.lifecycle_stage != LifecycleStage.ACTIVE:
        raise _deleted_run(tracking_uri, found[0])
    return found[0] if found else None


def log_config(tracking_uri: str, run_id: str, config: dict) -> None:
    """The sweep's resolved config, as ``config.json`` of its parent run (replaced when the config changes)."""
    with_retry(lambda: _client(tracking_uri).log_dict(run_id, config, "config.json"), what="config upload",
               uri=tracking_uri)


#: What a tracking file holds besides the store: the experiment and the sweep's parent run.
TRACKING_IDS = ("experiment_id", "parent_run_id")


def write_tracking(path: str | Path, info: dict, results_dir: str | Path | None = None) -> None:
    """Write the tracking file ``path`` for the jobs of a sweep (``info``: what :func:`init_sweep` returns). With
    ``results_dir`` (the store is the project's own, :func:`project_store_uri`) the file names that folder relative to
    its own, not the store's absolute path: a copied or moved project finds its own store."""
    from .io import write_json

    path = Path(path)
    if results_dir is None:
        record = {"tracking_uri": info["tracking_uri"]}
    else:
        record = {"results_dir": os.path.relpath(Path(results_dir).absolute(), path.absolute().parent)}
    record.update({key: info[key] for key in TRACKING_IDS})
    write_json(path, record)


def read_tracking(path: str | Path, *, check: bool = True) -> dict:
    """The store (``tracking_uri``), ``experiment_id`` and ``parent_run_id`` a tracking file names (and, for the
    project's own store, its ``artifact_root``). The project's store is found from where the file is
    (:func:`write_tracking`), and a copied or moved project's artifact paths are made its own
    (:func:`adopt_project_artifacts`). With ``check``, the experiment and the parent run must not be deleted
    (:func:`check_active`)."""
    path = Path(path)
    try:
        tracking = read_json(path)
        info = {key: tracking[key] for key in TRACKING_IDS}
        if "results_dir" in tracking:
            results = Path(os.path.normpath(path.absolute().parent / tracking["results_dir"]))
            info.update(tracking_uri=project_store_uri(results), artifact_root=results / ARTIFACTS_FOLDER)
        else:
            info["tracking_uri"] = tracking["tracking_uri"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read MLflow tracking file {path}: {err!r}") from err
    if "artifact_root" in info:
        adopt_project_artifacts(info["tracking_uri"], info["experiment_id"], info["artifact_root"])
    if check:
        check_active(info)
    return info


def adopt_project_artifacts(tracking_uri: str, experiment_id: str, artifact_root: str | Path) -> None:
    """Point the experiment's artifact location, and its runs', at ``artifact_root`` (the project's ``mlartifacts``)
    where they name another project's folder: MLflow stores absolute artifact paths, so a copied project's store
    would write its artifacts into the original's folder, and a moved one's outside the project. Only a location this
    project made (a folder named :data:`ARTIFACTS_FOLDER`) is moved; one a user chose is kept."""
    client = _client(tracking_uri)
    experiment = with_retry(lambda: client.get_experiment(experiment_id), what="experiment lookup", uri=tracking_uri)
    here = Path(artifact_root).resolve().as_uri()
    old = experiment.artifact_location.rstrip("/")
    if old == here or not old.startswith("file:") or not old.endswith("/" + ARTIFACTS_FOLDER):
        return

    def move() -> None:
        # MLflow has no call that changes an artifact location. The condition on the old value makes it idempotent:
        # of several jobs starting at once, one moves it and the others find nothing to move.
        with contextlib.closing(sqlite3.connect(_sqlite_path(tracking_uri), timeout=LOCK_RETRY_SECONDS)) as db, db:
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ? AND "
                       "rtrim(artifact_location, '/') = ?", (here, int(experiment_id), old))
            db.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE experiment_id = ? AND "
                       "substr(artifact_uri, 1, ?) = ?", (here, len(old) + 1, int(experiment_id), len(old) + 1,
                                                          old + "/"))

    with_retry(move, what="artifact location update", uri=tracking_uri)
    print(f"MLflow: the store {tracking_uri} kept its artifacts in {old}, another project's folder (this one was "
          f"copied or moved): they are now kept in {here}", file=sys.stderr, flush=True)


def restore_command(tracking_uri: str, kind: str, entity_id: str) -> str:
    """The command that restores a deleted experiment (``kind`` ``experiments``) or run (``runs``) of the store."""
    option = "--experiment-id" if kind == "experiments" else "--run-id"
    return (f"MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)} {shlex.quote(sys.executable)} -m mlflow {kind} restore "
            f"{option} {entity_id}")


def _deleted_experiment(tracking_uri: str, experiment) -> TrackingError:
    return TrackingError(
        f"the MLflow experiment {experiment.name!r} (id {experiment.experiment_id}) of this sweep is deleted in the "
        f"store {tracking_uri}: restore it, with its runs, and run again: "
        f"`{restore_command(tracking_uri, 'experiments', experiment.experiment_id)}`")


def _deleted_run(tracking_uri: str, run) -> TrackingError:
    what = {"sweep": "the sweep's parent run", "setting": "the setting's run", "sampler": "the sampler point's run"}
    return TrackingError(
        f"{what.get(run.data.tags.get('ddpm.kind'), 'the MLflow run')} {run.info.run_name!r} (id {run.info.run_id}) "
        f"is deleted in the store {tracking_uri}: restore it and run again (nothing is retrained): "
        f"`{restore_command(tracking_uri, 'runs', run.info.run_id)}`")


def check_active(tracking: dict, run_ids=()) -> None:
    """Raise :class:`TrackingError` if the sweep's experiment, its parent run or one of ``run_ids`` is deleted (in the
    UI: MLflow's soft delete), naming it and the command that restores it: new runs cannot be created in a deleted
    experiment, nor numbers logged to a deleted run, and a job should learn that before it works, not after."""
    from mlflow.entities import LifecycleStage

    uri = tracking["tracking_uri"]
    client = _client(uri)
    experiment = with_retry(lambda: client.get_experiment(tracking["experiment_id"]), what="experiment lookup", uri=uri)
    if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
        raise _deleted_experiment(uri, experiment)
    for run_id in (tracking["parent_run_id"], *run_ids):
        run = with_retry(lambda: client.get_run(run_id), what=f"lookup of run {run_id}", uri=uri)
        if run.info.lifecycle_stage != LifecycleStage.ACTIVE:
            raise _deleted_run(uri, run)


def start_setting_run(tracking: dict, name: str, params: dict) -> str:
    """A child run of the sweep for setting ``name`` with ``params`` (the full resolved setting)."""
    client = _client(tracking["tracking_uri"])
    run = with_retry(lambda: client.create_run(
        tracking["experiment_id"], run_name=name,
        tags={"mlflow.parentRunId": tracking["parent_run_id"], "ddpm.kind": "setting", "ddpm.setting": name},
    ), what="run creation", uri=tracking["tracking_uri"])
    log_params(tracking["tracking_uri"], run.info.run_id, params)
    return run.info.run_id


def sampler_curve(point) -> str:
    """The sampler point without its S, e.g. ``ddim-eta0.5-uniform`` for ``ddim-eta0.5-S10-uniform``: the points of one
    curve of FID against S share it (a point on every step, S = T, is on the curve of its skip, as in the report)."""
    from dataclasses import replace

    return "-".join(part for part in replace(point, steps=1).name.split("-") if part != "S1")


def sampler_params(point, axes: dict) -> dict:
    """What a sampler point's run logs as params: its setting's ``axes`` (:data:`ddpm.settings.SWEEP_AXES`) and the
    point: ``sampler``, ``S`` (its reverse steps: T where the point takes every step), ``skip``, ``clip``, ``eta``
    (DDIM) or ``variance`` (ancestral), and ``sampler_curve`` (:func:`sampler_curve`). A key the sampler does not take
    is left out."""
    point_params = {"sampler": point.sampler, "S": point.num_steps(axes["T"]), "skip": point.skip, "clip": point.clip,
                    "eta": point.eta, "variance": point.variance, "sampler_curve": sampler_curve(point)}
    return {**axes, **{key: value for key, value in point_params.items() if value is not None}}


def sampler_run_name(point_name: str, setting: str) -> str:
    """A sampler point's run name: the point first (what tells a setting's points apart in the runs table, which cuts
    long names), then its setting."""
    return f"{point_name} · {setting}"


def find_sampler_run(tracking: dict, setting_run_id: str, point_name: str):
    """The run of the sampler point ``point_name`` under the setting's run (found by its tags; None before the point's
    first job). A deleted one is refused, naming the command that restores it."""
    from mlflow.entities import LifecycleStage, ViewType

    uri = tracking["tracking_uri"]
    client = _client(uri)
    query = f"tags.`mlflow.parentRunId` = '{setting_run_id}' and tags.`ddpm.sampler` = '{point_name}'"
    found = with_retry(lambda: client.search_runs([tracking["experiment_id"]], query, run_view_type=ViewType.ALL,
                                                  order_by=["attributes.start_time DESC"], max_results=1),
                       what="sampler run lookup", uri=uri)
    if found and found[0].info.lifecycle_stage != LifecycleStage.ACTIVE:
        raise _deleted_run(uri, found[0])
    return found[0] if found else None


def start_sampler_run(tracking: dict, setting_run_id: str, setting: str, point_name: str, params: dict) -> str:
    """The run of the sampler point ``point_name`` of a setting, nested under the setting's run so that MLflow's Compare
    lines a setting's samplers up, with ``params`` (:func:`sampler_params`). A point sampled again (its job rerun) goes
    on in the run it has already (:func:`find_sampler_run`; a param it lacks is added)."""
    uri = tracking["tracking_uri"]
    client = _client(uri)
    run = find_sampler_run(tracking, setting_run_id, point_name)
    name = sampler_run_name(point_name, setting)
    if run is not None:
        if run.info.run_name != name:  # named by an earlier version
            with_retry(lambda: client.update_run(run.info.run_id, name=name), what="run renaming", uri=uri)
    else:
        run = with_retry(lambda: client.create_run(
            tracking["experiment_id"], run_name=name,
            tags={"mlflow.parentRunId": setting_run_id, "ddpm.kind": "sampler", "ddpm.setting": setting,
                  "ddpm.sampler": point_name},
        ), what="run creation", uri=uri)
    missing = {key: value for key, value in params.items() if key not in run.data.params}
    if missing:
        log_params(uri, run.info.run_id, missing)
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
