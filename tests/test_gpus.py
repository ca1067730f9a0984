"""``ddpm claim-gpus``: concurrent jobs on one machine get different GPUs, hold them while they run, and let go when
they end, even when killed. The machine has no GPU: the tests give a GPU count to the claiming code."""

import os
import signal
import subprocess
import sys
import time

import pytest

from ddpm.cli import main
from ddpm.gpus import claim, try_claim


def test_claims_are_exclusive_and_end_with_their_holder(tmp_path):
    first, held_first = try_claim(1, 3, tmp_path)
    second, held_second = try_claim(2, 3, tmp_path)
    assert first == [0] and second == [1, 2]
    assert try_claim(1, 3, tmp_path) == ([], [])  # all three held
    os.close(held_first[0])
    again, held_again = try_claim(1, 3, tmp_path)
    assert again == [0]
    with pytest.raises(TimeoutError, match="no 1 free GPUs of 3"):
        claim(1, 3, tmp_path, poll_s=0.05, timeout_s=0.2)
    with pytest.raises(ValueError, match="asks for 4 GPUs but this machine has 3"):
        claim(4, 3, tmp_path)
    for fd in held_second + held_again:
        os.close(fd)


def _job(lock_dir, seconds: float, total: int = 2) -> subprocess.Popen:
    """A job through the wrapper, with ``total`` pretend GPUs: it prints the GPUs it got, then holds them."""
    code = ("import sys; from ddpm.gpus import run_on_free_gpus; "
            f"run_on_free_gpus(1, ['sh', '-c', 'echo $CUDA_VISIBLE_DEVICES; sleep {seconds}'], "
            f"lock_dir=__import__('pathlib').Path({str(lock_dir)!r}), total={total})")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)


def test_three_jobs_on_two_gpus_one_waits_for_a_free_one(tmp_path):
    jobs = [_job(tmp_path, 3)]
    time.sleep(1.0)  # the first job holds a GPU (through exec, in the command) before the others start
    jobs += [_job(tmp_path, 3), _job(tmp_path, 3)]
    outputs = [job.communicate(timeout=60) for job in jobs]
    assert all(job.returncode == 0 for job in jobs), outputs
    gpus = [out.strip() for out, _ in outputs]
    assert sorted(set(gpus)) == ["0", "1"], gpus  # both GPUs used, and no third: there are two
    waited = [err for _, err in outputs if "waiting for 1 free GPUs of 2" in err]
    assert len(waited) == 1, outputs  # two ran at once, the third after one of them ended


def _free(lock_dir) -> bool:
    """Whether the one pretend GPU is free (claimed and let go at once)."""
    gpus, held = try_claim(1, 1, lock_dir)
    for fd in held:
        os.close(fd)
    return bool(gpus)


def _wait_until(condition, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_killed_job_lets_its_gpu_go(tmp_path):
    holder = _job(tmp_path, 600, total=1)
    assert holder.stdout.readline().strip() == "0"  # it got the GPU and runs its command
    assert not _free(tmp_path), "the running job's GPU could be claimed twice"
    os.killpg(holder.pid, signal.SIGKILL)  # the command and what it started, all holding the lock
    holder.wait(timeout=30)
    assert _wait_until(lambda: _free(tmp_path))


def test_where_the_gpus_are_chosen_already_or_absent_the_command_runs_as_it_is(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3", "DDPM_GPU_LOCKS": str(tmp_path / "locks")}
    command = [sys.executable, "-m", "ddpm.cli", "claim-gpus", "2", "--", "sh", "-c", "echo ${CUDA_VISIBLE_DEVICES-unset}"]
    assert subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.strip() == "3"
    del env["CUDA_VISIBLE_DEVICES"]  # and this machine has no GPU
    assert subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.strip() == "unset"
    assert not (tmp_path / "locks").exists()


def test_claim_gpus_without_a_command_is_refused(capsys):
    assert main(["claim-gpus", "1", "--"]) == 2
    assert "claim-gpus needs a command after --" in capsys.readouterr().err


LAUNCH = "import sys; from ddpm.launch import console_main; sys.argv = ['ddpm', *sys.argv[1:]]; sys.exit(console_main())"


@pytest.mark.parametrize("args, code, says", [
    (["claim-gpus", "1", "--", sys.executable, "-c", "print('the command ran')"], 0, "the command ran"),
    (["claim-gpus", "0", "--", "true"], 2, "ddpm claim-gpus: error: claim-gpus needs a count of at least 1, got 0"),
    (["claim-gpus", "1", "--"], 2, "ddpm claim-gpus: error: claim-gpus needs a command after --"),
])
def test_the_executable_claims_gpus_without_importing_the_command_line(tmp_path, args, code, says):
    """The ``ddpm`` executable (:func:`ddpm.launch.console_main`) runs claim-gpus, which starts every GPU job of the
    workflow, without numpy or the rest of the command line; with the same arguments and errors as ``ddpm.cli``."""
    env = {**os.environ, "DDPM_GPU_LOCKS": str(tmp_path / "locks")}
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", LAUNCH, *args], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == code and says in result.stdout + result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "ddpm.gpus" in imported and not {"numpy", "ddpm.cli", "torch"} & imported, sorted(imported)
    full = subprocess.run([sys.executable, "-m", "ddpm.cli", *args], env=env, capture_output=True, text=True, timeout=60)
    assert full.returncode == code and says in full.stdout + full.stderr
