"""No command writes over what it reads or over a trained run's files (unless told to, and then never half-way); a
results folder that is not one is refused before any job; two sweeps in one results folder keep their logs apart;
keys that change no result rerun nothing (issue 25)."""

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ddpm.cli import main
from ddpm.configcheck import ConfigError, check_results_dir
from ddpm.datasets import prepare_dataset

from conftest import ROOT, TINY, job_counts, save_diffusers_folder

# A diffusers folder of the digits' shape (1, 8, 8), T = 100: imported as linear-T100-eps-fixedlarge-mse-s0.
SOURCE_UNET = {"_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None, "block_out_channels": [32, 64],
               "center_input_sample": False, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
               "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 1,
               "layers_per_block": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32,
               "out_channels": 1, "sample_size": 8, "time_embedding_type": "positional",
               "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
SOURCE_SCHEDULER = {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
                    "clip_sample": True, "num_train_timesteps": 100, "trained_betas": None,
                    "variance_type": "fixed_large"}


def _digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by its relative path, with its sha256 (a changed, added or removed file shows)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits run trained here (T = 100), its data, and a diffusers folder to import."""
    root = tmp_path_factory.mktemp("trust-files")
    prepare_dataset("digits", root / "data")
    assert main(["train", "--out", str(root / "run"), "--data", str(root / "data"), "--T", "100", "--steps", "2",
                 "--batch-size", "8", "--log-every", "1", "--snapshot-steps", "1"]) == 0
    save_diffusers_folder(root / "source", SOURCE_UNET, SOURCE_SCHEDULER)
    return root


def _refused(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_sampling_onto_the_checkpoint_it_reads_is_refused_before_any_work(trained, capsys):
    run = trained / "run"
    before = _digests(run)
    checkpoint = str(run / "checkpoint.pt")
    error = _refused(["sample", "--checkpoint", checkpoint, "--out", checkpoint, "--count", "2"], capsys)
    assert f"--out {checkpoint} would write over --checkpoint {checkpoint}, which it reads" in error
    assert _digests(run) == before


@pytest.mark.parametrize("command", ["sample", "progressive", "nll"])
def test_no_command_writes_over_a_run_s_own_files(trained, tmp_path, capsys, command):
    """A checkpoint read from elsewhere, the output one of the run's own files: refused, naming the run."""
    other = tmp_path / "other.pt"
    shutil.copy(trained / "run" / "checkpoint.pt", other)
    run = trained / "run"
    before = _digests(run)
    for target in (run / "checkpoint.pt", run / "metrics.jsonl", run / "snapshots" / "step-1.pt"):
        argv = [command, "--checkpoint", str(other), "--out", str(target)]
        if command == "nll":
            argv.insert(0, "evaluate")
            argv += ["--data", str(trained / "data"), "--count", "2"]
        error = _refused(argv, capsys)
        assert f"would write over the run {run}'s own {target.relative_to(run)}" in error, error
    assert _digests(run) == before


def test_an_output_over_the_data_it_reads_is_refused_and_one_beside_it_is_not(trained, tmp_path, capsys):
    data = trained / "data"
    before = _digests(data)
    error = _refused(["evaluate", "nll", "--checkpoint", str(trained / "run" / "checkpoint.pt"), "--data", str(data),
                      "--out", str(data / "train_images.npy"), "--count", "2"], capsys)
    assert f"would write over the prepared data set {data}'s own train_images.npy" in error
    error = _refused(["train", "--out", str(data), "--data", str(data), "--steps", "1"], capsys)
    assert f"--out {data} would write over --data {data}" in error
    error = _refused(["train", "--out", str(trained), "--data", str(data), "--steps", "1"], capsys)
    assert f"--out {trained} would write over --data {data}" in error  # a folder that holds what it reads
    assert _digests(data) == before
    # A new file in the folder it reads (the workflow's classifier and reference statistics live there): written.
    assert main(["evaluate", "nll", "--checkpoint", str(trained / "run" / "checkpoint.pt"), "--data", str(data),
                 "--out", str(data / "nll-shard.npz"), "--count", "2", "--batch-size", "2"]) == 0
    (data / "nll-shard.npz").unlink()


def test_two_outputs_on_one_path_are_refused(trained, tmp_path, capsys):
    out = str(tmp_path / "s.npz")
    error = _refused(["sample", "--checkpoint", str(trained / "run" / "checkpoint.pt"), "--out", out, "--grid", out,
                      "--count", "2"], capsys)
    assert "are one file" in error and not Path(out).exists()


def test_training_into_a_finished_run_is_refused_and_force_trains_it_again_from_the_start(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    before = _digests(run)
    argv = ["train", "--out", str(run), "--data", str(trained / "data"), "--T", "100", "--steps", "3",
            "--batch-size", "8", "--log-every", "1"]
    error = _refused(argv, capsys)
    assert f"{run} holds a run already (checkpoint.pt)" in error and "--force" in error
    assert _digests(run) == before
    assert main(argv + ["--force"]) == 0
    capsys.readouterr()
    after = _digests(run)
    assert after["checkpoint.pt"] != before["checkpoint.pt"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # the new training's steps only
    assert not (run / "snapshots").exists()  # the old training's snapshot went with it


def test_importing_onto_a_trained_run_is_refused_and_force_replaces_it_whole(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    before = _digests(run)
    argv = ["import", str(trained / "source"), "--out", str(run / "checkpoint.pt"), "--data", str(trained / "data")]
    error = _refused(argv, capsys)
    assert f"{run} holds a run already" in error and "--force" in error
    assert _digests(run) == before
    # Into the run's folder under another name: the setting.json and metrics.jsonl beside it are the run's too.
    error = _refused(["import", str(trained / "source"), "--out", str(run / "imported.pt")], capsys)
    assert f"{run} holds a run already" in error
    assert _digests(run) == before
    # --force with a source that fails (not the data's shape): the run is left as it was, nothing staged is left.
    rgb = tmp_path / "rgb"
    save_diffusers_folder(rgb, {**SOURCE_UNET, "in_channels": 3, "out_channels": 3}, SOURCE_SCHEDULER)
    error = _refused(["import", str(rgb), "--out", str(run / "checkpoint.pt"), "--data", str(trained / "data"),
                      "--force"], capsys)
    assert "generates images of shape [3, 8, 8]" in error
    assert _digests(run) == before
    assert main(argv + ["--force"]) == 0
    capsys.readouterr()
    assert sorted(_digests(run)) == ["checkpoint.pt", "metrics.jsonl", "setting.json"]  # the trained run's files gone
    assert (run / "metrics.jsonl").read_text() == ""


def test_a_refused_command_that_names_an_input_twice_in_a_list_still_names_both(trained, tmp_path, capsys):
    shard = tmp_path / "shard.npz"
    assert main(["sample", "--checkpoint", str(trained / "run" / "checkpoint.pt"), "--out", str(shard),
                 "--count", "2", "--batch-size", "2"]) == 0
    capsys.readouterr()
    before = shard.read_bytes()
    error = _refused(["gather-samples", "--shards", str(shard), str(shard), "--out", str(shard)], capsys)
    assert f"--out {shard} would write over --shards {shard}" in error
    assert shard.read_bytes() == before


# ------------------------------------------------------------------------------------------------ results_dir
@pytest.mark.parametrize("value, found", [("", "is empty"), ("  ", "is empty"), ("/", "is the root of the filesystem")])
def test_an_empty_or_root_results_dir_is_refused(value, found):
    with pytest.raises(ConfigError, match=found) as caught:
        check_results_dir(value)
    assert caught.value.key == "results_dir"


def test_a_results_dir_holding_other_things_is_refused_and_a_results_folder_is_not(tmp_path):
    with pytest.raises(ConfigError, match=r"already holds things that are not this workflow's results \(Makefile, "
                                          r"README.md, Snakefile, config, constraints.txt and \d+ more\)"):
        check_results_dir(str(ROOT))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        check_results_dir(str(tmp_path))
    results = tmp_path / "results"
    for name in ("data", "runs", "logs", "tracking"):
        (results / name).mkdir(parents=True)
    (results / "mlflow.db").touch()
    (results / "report.html").touch()
    (results / ".gitkeep").touch()
    assert check_results_dir(str(results)) == results.resolve()
    assert check_results_dir(str(tmp_path / "new")) == (tmp_path / "new").resolve()


def _checkout(tmp_path: Path) -> Path:
    """The workflow's files in a folder of their own, run from its root as the README's commands are."""
    work = tmp_path / "checkout"
    work.mkdir()
    for name in ("Snakefile", "workflow", "config"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, work / name)
    return work


def _dry_run(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args], cwd=work,
                          capture_output=True, text=True)


@pytest.mark.parametrize("value, found", [("", "'results_dir': is empty"), ("/", "is the root of the filesystem"),
                                          (".", "already holds things that are not this workflow's results")])
def test_the_workflow_refuses_a_bad_results_dir_at_parse_time(tmp_path, value, found):
    work = _checkout(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(TINY.read_text()), "results_dir": value}))
    result = _dry_run(work, "--configfile", str(config))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and found in output, output[-2000:]
    assert "localrule" not in output and not (work / "logs").exists() and not (work / "data").exists()


def test_schedule_rescale_at_a_small_t_is_refused_at_parse_time(tmp_path):
    """The tiny config rescales (β_T = 0.02 · 1000/T): at T = 10 that is 2, refused before any job runs."""
    work = _checkout(tmp_path)
    assert yaml.safe_load(TINY.read_text())["train"]["schedule_rescale"] is True
    result = _dry_run(work, "--configfile", str(TINY), "--config", "sweep={T: [10]}")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert ("config key 'train.schedule_rescale': setting linear-T10-eps-fixedlarge-mse-s0: rescale=True with T=10 "
            "pushes beta_end to 2 >= 1") in output, output[-2000:]
    assert "localrule" not in result.stdout


# ------------------------------------------------------------------------------------------- logs per sweep
def test_two_sweeps_of_one_results_folder_keep_their_logs_and_benchmarks_apart(tmp_path):
    """The same setting in two sweeps: every log and benchmark path of one differs from every one of the other,
    except the data set's jobs, which both share (and run once)."""
    work = _checkout(tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(TINY.read_text()), "name": "other"}))
    plans = {}
    for config in (TINY, other):
        result = _dry_run(work, "--configfile", str(config), "--printshellcmds")
        assert result.returncode == 0, result.stderr[-2000:]
        plans[config] = set(re.findall(r"results/(?:logs|benchmarks)/[^\s',)]+", result.stdout))
    shared = plans[TINY] & plans[other]
    assert len(plans[TINY]) > 20 and shared, (len(plans[TINY]), sorted(shared))
    assert all(re.match(r"results/(logs|benchmarks)/data/digits/", path) for path in shared), sorted(shared)
    for sweep in ("tiny", "other"):
        config = TINY if sweep == "tiny" else other
        for kind, suffix in (("logs", ".log"), ("benchmarks", ".tsv")):
            train = {p for p in plans[config] if p.startswith(f"results/{kind}/{sweep}/train/")
                     and not p.endswith(".tries.log")}
            assert len(train) == 2 and all(p.endswith(suffix) for p in train), train
        assert f"results/logs/{sweep}/train/linear-T50-eps-fixedlarge-mse-s0.tries.log" in plans[config]


# ------------------------------------------------------------------------------- keys that change no result
@pytest.fixture(scope="module")
def tiny_trained_sweep(tmp_path_factory):
    """The tiny config's trainings (and what they need) run, in a checkout of their own."""
    work = _checkout(tmp_path_factory.mktemp("cadence"))
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(TINY),
                             "--config", "sweep={schedule: [linear]}", "--", "results/runs/tiny/"
                             "linear-T50-eps-fixedlarge-mse-s0/checkpoint.pt"], cwd=work, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def test_logging_and_checkpoint_cadence_rerun_no_training(tiny_trained_sweep):
    checkpoint = "results/runs/tiny/linear-T50-eps-fixedlarge-mse-s0/checkpoint.pt"
    snakefile = tiny_trained_sweep / "Snakefile"
    counts = job_counts(tiny_trained_sweep, TINY, "--config", "sweep={schedule: [linear]}",
                        "train={log_every: 3, checkpoint_every: 7, preview_every: 0}", "--", checkpoint,
                        snakefile=snakefile)
    assert counts.get("train", 0) == 0, counts
    counts = job_counts(tiny_trained_sweep, TINY, "--config", "sweep={schedule: [linear]}", "train={lr: 0.0003}",
                        "--", checkpoint, snakefile=snakefile)
    assert counts.get("train") == 1, counts  # a key that changes the weights does rerun it


def test_cadence_keys_change_no_weight(tmp_path):
    """What the workflow's choice rests on: the same training with another logging, preview and checkpoint cadence
    gives the same weights, bit for bit."""
    import torch

    prepare_dataset("digits", tmp_path / "data")
    weights = []
    for run, cadence in (("a", ["--log-every", "1", "--preview-every", "0", "--checkpoint-every", "0"]),
                         ("b", ["--log-every", "3", "--preview-every", "2", "--checkpoint-every", "2"])):
        assert main(["train", "--out", str(tmp_path / run), "--data", str(tmp_path / "data"), "--T", "20",
                     "--steps", "4", "--batch-size", "8", *cadence]) == 0
        weights.append(torch.load(tmp_path / run / "checkpoint.pt", weights_only=True))
    for key in ("model", "ema"):
        assert weights[0][key].keys() == weights[1][key].keys()
        assert all(torch.equal(weights[0][key][k], weights[1][key][k]) for k in weights[0][key])


@pytest.mark.parametrize("shape, nrow", [((7, 1, 8, 8), None), ((10, 3, 5, 6), 4), ((2, 3, 4, 4), 6)])
def test_the_grid_job_draws_torchvision_s_make_grid_layout_without_torch(tmp_path, shape, nrow):
    """``ddpm.io.save_grid`` (numpy and PIL) lays samples out as torchvision's ``make_grid`` with padding 1 and white
    padding, grey images as RGB, pixels enlarged 4 times."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    from ddpm.io import save_grid

    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    save_grid(images, tmp_path / "grid.png", nrow=nrow)
    expected = make_grid(torch.from_numpy(images), nrow=nrow or int(np.ceil(np.sqrt(len(images)))), padding=1,
                         pad_value=255).repeat_interleave(4, 1).repeat_interleave(4, 2).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid.png")), expected)
