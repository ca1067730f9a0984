"""Which GPUs a job runs on, when Snakemake runs several GPU jobs at once on one machine.

Snakemake counts GPUs (``resources: gpu=N`` against ``--resources gpu=M``) but does not say which ones a job gets:
without help every job would use GPU 0. ``ddpm claim-gpus N -- command …`` takes N GPUs that no other job holds,
sets ``CUDA_VISIBLE_DEVICES`` to them and runs the command in its place. A GPU is held through an exclusive
``flock`` on a file per GPU, which the command inherits: it is let go when the command ends, however it ends (a
crash or a kill leaves no stale claim).

Where a scheduler already chose (SLURM sets ``CUDA_VISIBLE_DEVICES`` for ``--gpus``), and where there is no GPU, the
command runs as it is.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path

#: The folder of the per-GPU lock files; one per user and machine unless DDPM_GPU_LOCKS says otherwise.
LOCK_DIR_VARIABLE = "DDPM_GPU_LOCKS"


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_VARIABLE) or Path(tempfile.gettempdir()) / f"ddpm-gpu-locks-{os.getuid()}")


def visible_gpu_count() -> int:
    """CUDA's device count; 0 at once, without importing torch, on a machine without NVIDIA's driver (so the
    wrapper costs CPU-only jobs nothing)."""
    if not Path("/proc/driver/nvidia/gpus").is_dir():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def try_claim(count: int, total: int, lock_dir: Path) -> tuple[list[int], list[int]]:
    """Lock ``count`` of the GPUs 0 … total−1 that no one holds: ``(gpu indices, open lock descriptors)``, or two
    empty lists (and nothing held) when fewer than ``count`` are free."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    gpus, descriptors = [], []
    for index in range(total):
        fd = os.open(lock_dir / f"gpu-{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        gpus.append(index)
        descriptors.append(fd)
        if len(gpus) == count:
            return gpus, descriptors
    for fd in descriptors:
        os.close(fd)
    return [], []


def claim(count: int, total: int, lock_dir: Path, *, poll_s: float = 2.0, timeout_s: float | None = None,
          log=print) -> tuple[list[int], list[int]]:
    """:func:`try_claim`, waiting until ``count`` GPUs are free (a job started by hand, outside Snakemake's count,
    may hold some)."""
    if count > total:
        raise ValueError(f"the job asks for {count} GPUs but this machine has {total}: lower train.gpus, or run it "
                         f"where there are {count}")
    start, told = time.monotonic(), False
    while True:
        gpus, descriptors = try_claim(count, total, lock_dir)
        if gpus:
            return gpus, descriptors
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no {count} free GPUs of {total} after {timeout_s:.0f} s (locks in {lock_dir})")
        if not told:
            log(f"waiting for {count} free GPUs of {total} (other jobs hold them; locks in {lock_dir})")
            told = True
        time.sleep(poll_s)


def run_on_free_gpus(count: int, command: list[str], *, lock_dir: Path | None = None, total: int | None = None):
    """Replace this process with ``command``, on ``count`` GPUs no other job holds (see the module's docstring)."""
    if not command:
        raise ValueError("claim-gpus needs a command after --")
    if count < 1:
        raise ValueError(f"claim-gpus needs a count of at least 1, got {count}")
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        total = visible_gpu_count() if total is None else total
        if total > 0:
            gpus, descriptors = claim(count, total, lock_dir or default_lock_dir(),
                                      log=lambda message: print(message, file=sys.stderr, flush=True))
            for fd in descriptors:
                os.set_inheritable(fd, True)  # the command holds the claim until it ends
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
            print(f"claim-gpus: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execvp(command[0], command)


# ---------------------------------------------------------------------------------------------- the command
def add_claim_gpus(parser) -> None:
    """``ddpm claim-gpus``'s arguments (one definition for the full command line and :func:`claim_gpus_main`)."""
    import argparse

    parser.add_argument("count", type=int, help="how many GPUs")
    parser.add_argument("command_line", nargs=argparse.REMAINDER, help="-- then the command")


def cmd_claim_gpus(args) -> None:
    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    run_on_free_gpus(args.count, command)  # does not return


CLAIM_GPUS_HELP = ("run a command on N GPUs no other job holds (sets CUDA_VISIBLE_DEVICES; as it is where it is "
                   "already set, or where there is no GPU)")


def claim_gpus_main(argv: list[str]) -> int:
    """``ddpm claim-gpus ARGV`` as the executable starts it (:func:`ddpm.launch.console_main`): the same arguments
    and errors as through the whole command line (:func:`ddpm.cli.main`), without importing it."""
    import argparse

    parser = argparse.ArgumentParser(prog="ddpm claim-gpus", description=CLAIM_GPUS_HELP)
    add_claim_gpus(parser)
    args = parser.parse_args(argv)
    try:
        cmd_claim_gpus(args)
    except (ValueError, OSError) as err:
        print(f"ddpm claim-gpus: error: {err}", file=sys.stderr)
        return 2
    return 0
