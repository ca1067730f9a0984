"""An MLflow store that the jobs of a cluster share: a SQLite file on a network filesystem is refused
(:func:`refuse_sqlite_on_network_filesystem`, before a sweep's first write, :func:`ddpm.tracking.init_sweep`), and the
way there instead is a tracking server on the submit node (:func:`serve_command`, ``ddpm track serve``; README, "Run on
a cluster").
"""

from __future__ import annotations

import sys
from pathlib import Path

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


#: What ``ddpm track serve`` sets in the server's environment where the user has not: MLflow 3 starts, beside the
#: server, a job runner and a pool of Huey consumers for its GenAI jobs (evaluations, scorers), which a sweep's
#: tracking never uses; without them the server is 2 processes instead of 10 (measured: ~6 s of CPU from its start
#: to 8 s after it first answers, instead of ~22 s).
SERVER_ENVIRONMENT = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_environment(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` with :data:`SERVER_ENVIRONMENT`'s defaults added where it does not set them itself."""
    return {**SERVER_ENVIRONMENT, **environ}


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
