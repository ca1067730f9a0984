"""A real one-machine SLURM for the tests: MariaDB, munge, slurmdbd, slurmctld and slurmd on localhost, with four
pretend GPUs (character devices that SLURM hands out as gres/gpu, so jobs get ``--gpus`` and ``CUDA_VISIBLE_DEVICES``).

Debian's packages (``slurm-wlm slurmdbd munge mariadb-server``, which ``.ci/run`` installs) and root are needed. The
configuration goes where SLURM looks for it, ``/etc/slurm`` (the executor's job steps drop ``SLURM_CONF`` from their
environment, so another place would not reach ``srun``), and is removed afterwards; where a SLURM configuration is
there already, the machine has a SLURM of its own, which is left alone (the tests are skipped). State and logs go
to a temporary folder, and the daemons use ports of their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from conftest import free_port

DAEMONS = ("slurmdbd", "slurmctld", "slurmd")
PROGRAMS = (*DAEMONS, "sbatch", "sacct", "sinfo", "srun", "munged", "mariadbd")
FAKE_GPUS = [Path(f"/dev/ddpm-fake-gpu{i}") for i in range(4)]
ETC = Path("/etc/slurm")
CONFIG_FILES = ("slurm.conf", "gres.conf", "slurmdbd.conf")
DATABASE = "ddpm_ci_slurm_acct"
CLUSTER = "ddpmci"


def why_unavailable() -> str | None:
    """Why SLURM cannot run here, or None."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing; .ci/run installs Debian's slurm-wlm, slurmdbd, munge, mariadb-server)"
    if os.geteuid() != 0:
        return "starting SLURM's daemons needs root"
    if (ETC / "slurm.conf").exists():
        return f"{ETC / 'slurm.conf'} exists: this machine has a SLURM of its own, which the tests leave alone"
    return None


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _run(*command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stdout}{result.stderr}")
    return result


class LocalSlurm:
    """``with LocalSlurm(folder) as cluster:`` a running cluster (state and logs in ``folder``)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.etc, self.log, self.run = ETC, self.root / "log", self.root / "run"
        self.conf = self.etc / "slurm.conf"
        self.started_services: list[str] = []

    # ------------------------------------------------------------------------------------------- set-up
    def write_config(self) -> None:
        for folder in (self.etc, self.log, self.run, self.root / "state", self.root / "spool"):
            folder.mkdir(parents=True, exist_ok=True)
        ctld, slurmd, dbd = free_port(), free_port(), free_port()
        # The node claims more CPUs and memory than it has (config_overrides, meant for tests) so that jobs sized for
        # a real cluster by profiles/slurm fit; nothing enforces them here (no cgroup plugins).
        self.conf.write_text(f"""\
ClusterName={CLUSTER}
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self.run}/slurmctld.pid
SlurmdPidFile={self.run}/slurmd.pid
SlurmctldLogFile={self.log}/slurmctld.log
SlurmdLogFile={self.log}/slurmd.log
SlurmctldPort={ctld}
SlurmdPort={slurmd}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=30
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={dbd}
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
NodeName=localhost CPUs=8 RealMemory={max(64000, _memory_mb())} Gres=gpu:{len(FAKE_GPUS)} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        (self.etc / "gres.conf").write_text("".join(
            f"NodeName=localhost Name=gpu File={device} Flags=nvidia_gpu_env\n" for device in FAKE_GPUS))
        dbd_conf = self.etc / "slurmdbd.conf"
        dbd_conf.write_text(f"""\
AuthType=auth/munge
DbdHost=localhost
DbdPort={dbd}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc={DATABASE}
LogFile={self.log}/slurmdbd.log
PidFile={self.run}/slurmdbd.pid
""")
        dbd_conf.chmod(0o600)  # slurmdbd refuses a configuration others can read (it may hold a password)

    def make_fake_gpus(self) -> None:
        for device in FAKE_GPUS:
            if not device.exists():
                os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null

    def start_services(self) -> None:
        """MariaDB and munge through their init scripts (no systemd in a container), if they are not up."""
        if _run("mariadb-admin", "ping", check=False).returncode != 0:
            _run("service", "mariadb", "start", timeout=120)
            self.started_services.append("mariadb")
        if _run("sh", "-c", "munge -n | unmunge", check=False).returncode != 0:
            _run("service", "munge", "start")
            self.started_services.append("munge")
        _run("mariadb", "-e", f"DROP DATABASE IF EXISTS {DATABASE}")  # accounting starts empty

    def start_daemons(self) -> None:
        _run("slurmdbd")
        self._wait("slurmdbd to answer", lambda: _run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0)
        _run("slurmctld", "-c")
        _run("slurmd")
        self._wait("the node to be idle", self._node_idle)

    def _node_idle(self) -> bool:
        state = _run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
        if state.startswith(("down", "drain")):
            _run("scontrol", "update", "nodename=localhost", "state=resume", check=False)
        return state == "idle"

    def _wait(self, what: str, condition, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    # ---------------------------------------------------------------------------------------- use, tear-down
    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for path in sorted(self.log.glob("*.log")))

    def sacct(self, *fields: str) -> list[dict[str, str]]:
        """Every job of the cluster's accounting (allocations, not steps) as ``{field: value}``."""
        out = _run("sacct", "-X", "-n", "-P", "-a", "--starttime", "now-1days", "-o", ",".join(fields)).stdout
        names = [field.split("%")[0] for field in fields]  # "Comment%200": the field, 200 characters wide
        return [dict(zip(names, line.split("|"))) for line in out.splitlines() if line]

    def stop(self) -> None:
        _run("scancel", "--full", "-u", "root", check=False)
        for daemon in ("slurmd", "slurmctld", "slurmdbd"):
            pid_file = self.run / f"{daemon}.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)
        for name in CONFIG_FILES:
            (self.etc / name).unlink(missing_ok=True)
        for service in reversed(self.started_services):
            _run("service", service, "stop", check=False, timeout=120)

    def __enter__(self) -> "LocalSlurm":
        self.write_config()
        self.make_fake_gpus()
        self.start_services()
        try:
            self.start_daemons()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
