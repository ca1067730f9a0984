"""Bad input to the sampling and evaluation jobs is refused with an error naming the file, and writes nothing;
a non-finite loss fails the MLflow run; a write that fails half-way (a full disk) leaves no file that looks valid."""

import errno
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ddpm.cli import main
from ddpm.datasets import prepare_dataset
from ddpm.diffusion import GaussianDiffusion
from ddpm.gather import gather_samples
from ddpm.io import load_npz, save_npz
from ddpm.tracking import init_sweep
from ddpm.checkpoint import load_for_sampling
from ddpm.settings import TrainConfig
from ddpm.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits checkpoint (1, 8, 8), its prepared data set and two sample shards from it."""
    root = tmp_path_factory.mktemp("trained")
    prepare_dataset("digits", root / "data")
    assert main(["train", "--out", str(root / "run"), "--data", str(root / "data"), "--T", "10", "--steps", "2",
                 "--batch-size", "8", "--log-every", "1"]) == 0
    checkpoint = root / "run" / "checkpoint.pt"
    for shard, start in (("a", 0), ("b", 4)):
        assert main(["sample", "--checkpoint", str(checkpoint), "--out", str(root / f"shard-{shard}.npz"),
                     "--start", str(start), "--count", "4", "--batch-size", "4"]) == 0
    return root


def _error(capsys) -> str:
    return capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Corrupt or truncated array files


def _corrupt_variants(good: Path, tmp_path: Path) -> dict[str, Path]:
    data = good.read_bytes()
    flipped = bytearray(data)
    middle = len(data) // 2
    flipped[middle:middle + 16] = bytes(b ^ 0xFF for b in flipped[middle:middle + 16])
    variants = {
        "truncated": data[: len(data) // 3],
        "flipped bytes": bytes(flipped),
        "empty": b"",
        "text": b"images,indices\n1,2\n",
    }
    paths = {}
    for name, content in variants.items():
        path = tmp_path / f"{name.replace(' ', '-')}.npz"
        path.write_bytes(content)
        paths[name] = path
    np.save(tmp_path / "plain.npy", np.zeros(3))
    paths["an .npy, not an .npz"] = tmp_path / "plain.npy"
    np.savez(tmp_path / "pickled.npz", images=np.array([{"a": 1}], dtype=object), indices=np.arange(1))
    paths["pickled objects"] = tmp_path / "pickled.npz"
    np.savez(tmp_path / "no-indices.npz", images=np.zeros((1, 1, 8, 8), np.uint8))
    paths["missing array"] = tmp_path / "no-indices.npz"
    return paths


def test_every_kind_of_damaged_npz_is_a_value_error_naming_the_file(trained, tmp_path):
    for kind, path in _corrupt_variants(trained / "shard-a.npz", tmp_path).items():
        with pytest.raises(ValueError, match=re.escape(str(path))):
            load_npz(path, ("images", "indices"))
    assert set(load_npz(trained / "shard-a.npz", ("images", "indices"))) == {"images", "indices"}


def test_gather_samples_refuses_a_damaged_shard_and_writes_nothing(trained, tmp_path, capsys):
    for kind, bad in _corrupt_variants(trained / "shard-b.npz", tmp_path).items():
        out, grid = tmp_path / "samples.npz", tmp_path / "samples.png"
        code = main(["gather-samples", "--shards", str(trained / "shard-a.npz"), str(bad), "--out", str(out)])
        assert code == 2, kind
        if kind != "missing array":  # (the grid reads the images alone)
            assert main(["grid", "--samples", str(bad), "--out", str(grid)]) == 2, kind
        assert str(bad) in _error(capsys), kind
        assert not out.exists() and not grid.exists(), kind
        assert [p.name for p in tmp_path.glob(".*.tmp")] == []


def test_nll_gather_refuses_a_damaged_shard_and_writes_nothing(trained, tmp_path, capsys):
    shard = tmp_path / "nll-0.npz"
    assert main(["evaluate", "nll", "--checkpoint", str(trained / "run" / "checkpoint.pt"), "--data",
                 str(trained / "data"), "--count", "4", "--out", str(shard)]) == 0
    truncated = tmp_path / "nll-1.npz"
    truncated.write_bytes(shard.read_bytes()[:200])
    assert main(["evaluate", "nll-gather", "--shards", str(shard), str(truncated), "--out", str(tmp_path / "nll.json")]) == 2
    assert f"cannot read {truncated}" in _error(capsys)
    assert not (tmp_path / "nll.json").exists()


# ----------------------------------------------------------------------------------------------------------------
# Images of the wrong size, channel count or dtype


@pytest.mark.parametrize("change, found", [
    (lambda x: x[:, :, :4, :4], "(1, 4, 4)"),
    (lambda x: np.repeat(x, 3, axis=1), "(3, 8, 8)"),
    (lambda x: x.astype(np.float32) / 255, "float32"),
    (lambda x: x[:, 0], "4-D"),
])
def test_gather_samples_refuses_a_shard_of_other_images_naming_it(trained, tmp_path, change, found):
    good = load_npz(trained / "shard-b.npz", ("images", "indices"))
    save_npz(tmp_path / "odd.npz", images=change(good["images"]), indices=good["indices"])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "odd.npz"))) as err:
        gather_samples([trained / "shard-a.npz", tmp_path / "odd.npz"])
    assert found in str(err.value)


@pytest.mark.parametrize("change, found", [
    (lambda x: np.pad(x, ((0, 0), (0, 0), (0, 8), (0, 8))), "(1, 16, 16), expected (1, 8, 8)"),
    (lambda x: np.repeat(x, 3, axis=1), "(3, 8, 8), expected (1, 8, 8)"),
    (lambda x: x.astype(np.int64), "dtype uint8 (0..255), got int64"),
    (lambda x: x[..., None], "4-D"),
])
def test_fid_job_refuses_samples_that_are_not_the_data_sets_images(trained, tmp_path, capsys, change, found):
    images = load_npz(trained / "shard-a.npz", ("images",))["images"]
    save_npz(tmp_path / "samples.npz", images=change(images))
    code = main(["evaluate", "fid", "--samples", str(tmp_path / "samples.npz"), "--data", str(trained / "data"),
                 "--weights", str(tmp_path / "unused.pt"), "--out", str(tmp_path / "fid.json")])
    assert code == 2
    message = _error(capsys)
    assert f"samples in {tmp_path / 'samples.npz'}" in message and found in message, message
    assert not (tmp_path / "fid.json").exists()


def _rgb_folder(root: Path) -> Path:
    for i in range(12):
        path = root / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (20 * i, 0, 255 - 20 * i)).save(path)
    return root / "images"


@pytest.mark.parametrize("dataset", ["digits 16×16", "RGB 8×8"])
def test_bits_per_dim_job_refuses_test_images_the_checkpoint_was_not_trained_on(trained, tmp_path, capsys, dataset):
    if dataset == "digits 16×16":
        prepare_dataset("digits", tmp_path / "data", image_size=16)
        shape = "[1, 16, 16]"
    else:
        prepare_dataset("imagefolder", tmp_path / "data", path=_rgb_folder(tmp_path), image_size=8, test_fraction=0.5)
        shape = "[3, 8, 8]"
    checkpoint = trained / "run" / "checkpoint.pt"
    code = main(["evaluate", "nll", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "data"),
                 "--count", "4", "--out", str(tmp_path / "nll.npz")])
    assert code == 2
    message = _error(capsys)
    assert f"{checkpoint} was trained on digits images of shape [1, 8, 8]" in message, message
    assert f"this job uses {tmp_path / 'data'}: {dataset.split()[0].replace('RGB', 'imagefolder')} images of shape {shape}" in message
    assert not (tmp_path / "nll.npz").exists()


# ----------------------------------------------------------------------------------------------------------------
# NaN or Inf loss


def _poison_third_step(monkeypatch, value: float) -> None:
    """Multiply the third training step's loss by ``value`` (NaN or Inf)."""
    original = GaussianDiffusion.training_losses
    calls = []

    def poisoned(self, *args, **kwargs):
        losses = original(self, *args, **kwargs)
        calls.append(1)
        return {**losses, "loss": losses["loss"] * value} if len(calls) == 3 else losses

    monkeypatch.setattr(GaussianDiffusion, "training_losses", poisoned)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_loss_fails_the_mlflow_run_and_writes_no_checkpoint(tmp_path, monkeypatch, poison):
    from mlflow.tracking import MlflowClient

    _poison_third_step(monkeypatch, poison)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = init_sweep(uri, "bad-input", "sweep", tmp_path / "artifacts", {})
    config = TrainConfig(T=10, steps=6, batch_size=8, warmup=0, log_every=1, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=f"loss became {poison} at step 3"):
        train(config, tmp_path / "run", tracking=tracking, progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    run_id = (tmp_path / "run" / "mlflow_run_id.txt").read_text().strip()
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert [m.step for m in MlflowClient(uri).get_metric_history(run_id, "loss")] == [1, 2]


# ----------------------------------------------------------------------------------------------------------------
# A write that fails half-way


FULL_DISK = """
import resource, signal, sys
import numpy as np
from ddpm.io import save_npz
from ddpm.checkpoint import save_checkpoint
import torch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk with ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
path = sys.argv[2]
try:
    if sys.argv[1] == "npz":
        save_npz(path, images=np.ones((1000, 3, 32, 32), np.uint8), indices=np.arange(1000))
    else:
        save_checkpoint(path, {"model": {"w": torch.ones(100_000)}})
except OSError as err:
    print(err.errno)
    sys.exit(3)
"""


@pytest.mark.parametrize("kind", ["npz", "checkpoint"])
def test_a_write_that_fails_half_way_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, kind):
    target = tmp_path / f"out.{'npz' if kind == 'npz' else 'pt'}"
    target.write_bytes(b"the previous, complete file")
    result = subprocess.run([sys.executable, "-c", FULL_DISK, kind, str(target)], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    assert int(result.stdout) == errno.EFBIG
    assert target.read_bytes() == b"the previous, complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_sample_job_on_a_full_disk_fails_and_leaves_no_sample_file(trained, tmp_path):
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300)); from ddpm.cli import main; sys.exit(main())")
    out = tmp_path / "samples" / "shard-0.npz"
    result = subprocess.run([sys.executable, "-c", script, "sample", "--checkpoint", str(trained / "run" / "checkpoint.pt"),
                             "--out", str(out), "--count", "8", "--batch-size", "8"], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert f"ddpm sample: error: [Errno 27] File too large: '{out}'" in result.stderr
    assert list(out.parent.iterdir()) == []


def test_a_process_killed_mid_write_leaves_only_a_hidden_temporary_file(tmp_path):
    """With SIGXFSZ's default action (Python ignores it), the kernel kills the writer half-way through the write:
    the final name never appears."""
    script = ("import resource, signal, sys, numpy as np; from ddpm.io import save_npz; "
              "signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)); "
              "save_npz(sys.argv[1], images=np.ones((1000, 3, 32, 32), np.uint8))")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "samples.npz")], capture_output=True)
    assert result.returncode == -signal.SIGXFSZ
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".samples.npz.") and leftovers[0].endswith(".tmp")


# ----------------------------------------------------------------------------------------------------------------
# The MLflow UI command binds to this machine only


def test_documented_mlflow_commands_bind_to_localhost():
    commands = [line for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
                for line in path.read_text().splitlines() if re.match(r"\s*(\S*/)?mlflow (ui|server)\b", line)]  # command lines
    assert commands, "the README documents the MLflow UI command"
    for line in commands:
        assert "--host 127.0.0.1" in line, line


def test_recorded_divergence_flows_through_every_job_to_the_report(tmp_path, monkeypatch, capsys):
    """on_divergence="record": the setting's files all say "diverged at step 3", nothing fails, nothing is scored."""
    from mlflow.tracking import MlflowClient

    from ddpm.paper import load_published
    from ddpm.report.tables import build_table, paper_table

    _poison_third_step(monkeypatch, float("nan"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = init_sweep(uri, "diverging", "sweep", tmp_path / "artifacts", {})
    run = tmp_path / "linear-T10-eps-learned-kl-s0"
    config = TrainConfig(T=10, var_type="learned", loss_type="kl", steps=6, batch_size=8, warmup=0, log_every=1)
    assert train(config, run, tracking=tracking, progress=False, on_divergence="record") == {"diverged_at_step": 3}
    run_id = (run / "mlflow_run_id.txt").read_text().strip()
    mlflow_run = MlflowClient(uri).get_run(run_id)
    assert mlflow_run.info.status == "FAILED" and mlflow_run.data.tags["ddpm.diverged_at_step"] == "3"
    with pytest.raises(ValueError, match="diverged at step 3"):  # never mistaken for weights
        load_for_sampling(run / "checkpoint.pt")

    data = tmp_path / "data"
    prepare_dataset("digits", data)
    checkpoint = str(run / "checkpoint.pt")
    point = run / "samplers" / "ancestral"  # the files of the one sampler point, as the workflow names them
    for command in (["sample", "--checkpoint", checkpoint, "--out", str(point / "samples" / "shard-0.npz")],
                    ["gather-samples", "--shards", str(point / "samples" / "shard-0.npz"), "--out",
                     str(point / "samples.npz"), "--sampler-out", str(point / "sampler.json")],
                    ["grid", "--samples", str(point / "samples.npz"), "--out", str(point / "samples.png")],
                    ["evaluate", "fid", "--samples", str(point / "samples.npz"), "--data", str(data), "--out",
                     str(point / "fid_is.json"), "--sampler-file", str(point / "sampler.json")],
                    ["evaluate", "nll", "--checkpoint", checkpoint, "--data", str(data), "--out",
                     str(run / "nll" / "shard-0.npz")],
                    ["evaluate", "nll-gather", "--shards", str(run / "nll" / "shard-0.npz"), "--out",
                     str(run / "nll.json")],
                    ["progressive", "--checkpoint", checkpoint, "--out", str(run / "progressive.png")],
                    ["interpolate", "--checkpoint", checkpoint, "--data", str(data), "--out",
                     str(run / "interpolation.png")]):
        assert main(command) == 0, (command, capsys.readouterr().err)
        assert "diverged at step 3" in capsys.readouterr().out
    for figure in (point / "samples.png", run / "progressive.png", run / "interpolation.png"):  # a notice instead
        assert Image.open(figure).size == (8 * len("diverged at step 3") + 20, 40)

    table = build_table({run.name: run}, {})
    assert table.loc[0, "status"] == "diverged at step 3" and "FID [classifier]" not in table.columns
    beside = paper_table(table, load_published(ROOT / "config" / "published.csv"), "ddpm-table2")
    assert beside.loc[0, "status"] == "diverged at step 3" and pd.isna(beside.loc[0, "FID"])
