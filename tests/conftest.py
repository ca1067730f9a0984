import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from ddpm.datasets import load_digits, to_model_range


#: Set by .ci/run, which installs what every test needs: a test that would skip for want of it fails instead.
REQUIRE_ALL = os.environ.get("DDPM_REQUIRE_ALL_TESTS") == "1"


def skip_unless_required(reason: str) -> None:
    """Skip the test for ``reason`` (a system package or permission this machine lacks), or, where CI promised
    everything (:data:`REQUIRE_ALL`), fail it: CI never passes without its SLURM, Chromium and permission tests."""
    if REQUIRE_ALL:
        pytest.fail(f"DDPM_REQUIRE_ALL_TESTS=1 but this test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def digits():
    """The first 16 real digits, scaled to [-1, 1]: (16, 1, 8, 8)."""
    return to_model_range(load_digits()[:16])


#: Units of pytest-xdist's work (``--dist loadscope`` in pyproject.toml: a test file, or a test class) that take
#: minutes (a workflow run in a fixture, a SLURM cluster, servers killed and restarted): handed out first, so that the
#: workers do not end on one of them. Prefixes of the class's or the file's name.
LONGEST_FIRST = ("TestTinyDDIMTable1", "TestTiny", "test_slurm", "test_pipeline", "test_reliability",
                 "test_tracking_failures")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The longest units first (pytest-xdist hands them out in this order: --no-loadscope-reorder)."""

    def rank(item):
        unit = item.cls.__name__ if item.cls else item.module.__name__
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if unit.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)


def pytest_collection_finish(session):
    """What collection imported (torch, MLflow, diffusers, the test modules) lives as long as the worker: frozen out
    of the cycle collector's full walks, as the ``ddpm`` executable does for its start-up (``ddpm.cli.console_main``);
    what the tests make is collected as before."""
    gc.collect()
    gc.freeze()


#: Torch threads of a test: 2 (one fixed number, whatever the machine), 1 where pytest-xdist runs tests side by side.
TEST_THREADS = 1 if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else 2


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(TEST_THREADS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged_step(run_dir: Path) -> int:
    """The last step a training run has written to its ``metrics.jsonl`` (0 before the first, or mid-write)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, IndexError, KeyError):
        return 0


@contextlib.contextmanager
def mlflow_server(db_path):
    """A real ``mlflow server`` on 127.0.0.1 over the SQLite store ``db_path``, started the way README's "Run on a
    cluster" starts it (``ddpm track serve``); yields its URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ddpm.cli", "track", "serve", "--store", str(db_path), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"mlflow server did not start: {server.stdout.read()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"


def unactivated_environment() -> dict[str, str]:
    """This process's environment as a shell where the virtual environment is not activated has it: its bin folder
    is not on the PATH (`.venv/bin/snakemake …` typed as it is), and no MLFLOW_TRACKING_URI."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    return env


def snakemake(workdir: Path, *args: str, config: Path = TINY, check: bool = True,
              snakefile: Path = ROOT / "Snakefile") -> subprocess.CompletedProcess:
    """Run the project's workflow in ``workdir`` with ``config``, started as ``.venv/bin/python -m snakemake`` from
    a shell where the venv is not activated: the rules must find the venv's ``ddpm`` themselves."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir),
               "--configfile", str(config), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=unactivated_environment(), timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def job_counts(workdir: Path, config: Path, *args: str, snakefile: Path = ROOT / "Snakefile") -> dict[str, int]:
    """Jobs per rule in a dry run (``snakemake -n``) of ``config``."""
    counts = {}
    for line in snakemake(workdir, "-n", "--quiet", "rules", *args, config=config, snakefile=snakefile).stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def setting_named(name: str):
    """The Setting of a name such as ``linear-T1000-eps-fixedlarge-mse-s0`` (test fixtures are written by name)."""
    from ddpm.settings import Setting

    schedule, T, mean_type, var_type, loss_type, seed = name.split("-")
    return Setting(schedule, int(T.removeprefix("T")), mean_type, var_type, loss_type, int(seed.removeprefix("s")))


def record_settings(runs: dict[str, Path]) -> dict[str, Path]:
    """Hand-made run folders as a training leaves them: each with the setting.json of the name it is reported as."""
    from ddpm.settings import write_setting

    for name, folder in runs.items():
        write_setting(folder, setting_named(name))
    return runs


def write_point_scores(folder: Path, scores: dict, point=None) -> Path:
    """A sampler point's files as the workflow leaves them in a run folder: ``samplers/<point>/fid_is.json`` and
    ``sampler.json`` (the default point: ancestral on every step)."""
    from ddpm.samplers import SamplerPoint, write_sampler

    point = point or SamplerPoint()
    point_dir = folder / "samplers" / point.name
    point_dir.mkdir(parents=True, exist_ok=True)
    write_sampler(point_dir, point)
    (point_dir / "fid_is.json").write_text(json.dumps(scores))
    return point_dir


def stand_ins_for_local_inputs(config: dict, root: Path, *, image_size=(300, 256)) -> dict:
    """What a paper config reads that is not at hand here, made under ``root`` where it names it (a relative path, as a
    user's checkout would hold it): a folder of three images for an image-folder ``dataset.path``, and an empty file
    for each local published-weights file of ``pretrained.source`` (a plan checks that it exists; nothing reads it).
    Returns the config with those paths made absolute."""
    import copy
    import re

    from PIL import Image

    from ddpm.vocabulary import HUB_MODEL_ID

    config = copy.deepcopy(config)
    dataset = config.get("dataset", {})
    if dataset.get("name") == "imagefolder":
        folder = root / dataset["path"]
        folder.mkdir(parents=True, exist_ok=True)
        size = (178, 218) if dataset.get("preprocess") == "ddim-celeba" else image_size
        for i in range(3):
            Image.new("RGB", size, (40 * i, 80, 120)).save(folder / f"{i}.png")
        dataset["path"] = str(folder)
    sources = (config.get("pretrained") or {}).get("source")
    if sources is not None:
        named = sources if isinstance(sources, dict) else {None: sources}
        for key, source in named.items():
            if not re.fullmatch(HUB_MODEL_ID, source):  # a file, not a Hugging Face model id
                (root / source).parent.mkdir(parents=True, exist_ok=True)
                (root / source).touch()
                named[key] = str(root / source)
        config["pretrained"]["source"] = named if isinstance(sources, dict) else named[None]
    return config


def run_import(*args, check=True) -> subprocess.CompletedProcess:
    """``ddpm import`` as a user runs it (``python -m ddpm.cli``); with ``check``, it must succeed."""
    result = subprocess.run([sys.executable, "-m", "ddpm.cli", "import", *map(str, args)], capture_output=True,
                            text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def save_diffusers_folder(folder: Path, unet_config: dict, scheduler_config: dict, seed: int = 0):
    """A diffusers model folder as ``save_pretrained`` writes one (config.json, diffusion_pytorch_model.safetensors,
    scheduler_config.json): a ``UNet2DModel`` built from ``unet_config`` with random weights, every parameter
    perturbed (GroupNorm scales and the zero-initialised layers too) so that a misplaced layer cannot go unseen.
    Returns the network (eval mode)."""
    from diffusers import DDPMScheduler, UNet2DModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = UNet2DModel.from_config({k: v for k, v in unet_config.items() if not k.startswith("_")})
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
    net.eval().requires_grad_(False)
    net.save_pretrained(folder)
    DDPMScheduler.from_config(scheduler_config).save_config(folder)
    return net
