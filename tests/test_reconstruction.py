"""DDIM Table 2 (§5.4): test images encoded by DDIM (η = 0) and decoded on S steps, as a job (``ddpm evaluate
reconstruction``), a rule of the workflow (refused at parse time where it cannot run) and a table of the report with
the paper's numbers beside the measured ones. (The end-to-end run of config/ddim_table1.yaml scaled down, with its
MLflow metric, is in test_paper.py.)"""

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY, job_counts, record_settings, snakemake
from PIL import Image

from ddpm.checkpoint import load_checkpoint, load_for_sampling, save_checkpoint
from ddpm.provenance import DIVERGED
from ddpm.cli import main
from ddpm.datasets import load_split, prepare_dataset, split_sha256, to_model_range
from ddpm.paper import SCALED_DOWN, load_published
from ddpm.report.render import write_tables
from ddpm.report.tables import RECONSTRUCTION_COLUMNS, reconstruction_table
from ddpm.samplers import reconstruction_error, timestep_subsequence
from ddpm.settings import TrainConfig
from ddpm.store import sha256_file

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "config" / "published.csv"
SETTING = "linear-T100-eps-fixedlarge-mse-s0"


# ----------------------------------------------------------------------------------------------------------------
# The error itself


def test_the_error_is_the_per_dimension_mse_on_the_0_1_scale(monkeypatch):
    """mean(((x̂ + 1)/2 − (x + 1)/2)²) per image, for images given on [-1, 1]: a decoding off by d on [-1, 1] is off by
    d/2 on [0, 1]."""
    import ddpm.samplers.encoding as encoding

    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    offset = torch.linspace(0, 0.3, 64).reshape(1, 1, 8, 8) * torch.tensor([1.0, -2.0, 0.5]).reshape(3, 1, 1, 1)
    decoded = x + offset
    monkeypatch.setattr(encoding, "ddim_encode", lambda model, diffusion, x_start, **kw: torch.zeros_like(x_start))
    monkeypatch.setattr(encoding, "sample_loop", lambda *args, **kw: decoded)
    errors = encoding.reconstruction_error(None, None, x, steps=10)
    expected = (((decoded + 1) / 2 - (x + 1) / 2) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(errors, expected, rtol=1e-6, atol=0)
    assert errors[0].item() == pytest.approx(float(((torch.linspace(0, 0.3, 64) / 2) ** 2).mean()), rel=1e-5)
    assert errors.shape == (3,)


# ----------------------------------------------------------------------------------------------------------------
# The job


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Digits prepared, and a checkpoint of a tiny network (T = 100) trained 2 steps with its weights made random: a
    new network's output layer is zero (ε̂ = 0 encodes and decodes every image exactly at any S)."""
    root = tmp_path_factory.mktemp("reconstruction")
    data = root / "data"
    prepare_dataset("digits", data)
    out = root / SETTING
    assert main(["train", "--out", str(out), "--data", str(data), "--T", "100", "--steps", "2", "--batch-size", "8",
                 "--log-every", "1"]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    generator = torch.Generator().manual_seed(0)
    for weights in (state["model"], state["ema"]):
        for name, tensor in weights.items():
            if tensor.is_floating_point() and tensor.abs().max() < 1e-3:  # zero, or DDPM's init of scale 1e-10
                weights[name] = torch.randn(tensor.shape, generator=generator) * 0.05
    save_checkpoint(out / "checkpoint.pt", state)
    return {"root": root, "data": data, "checkpoint": out / "checkpoint.pt"}


def _job(model, out: Path, steps: int, *extra: str, count: int = 12, setting: str = SETTING) -> int:
    return main(["evaluate", "reconstruction", "--checkpoint", str(model["checkpoint"]), "--data", str(model["data"]),
                 "--setting", setting, "--steps", str(steps), "--count", str(count), "--batch-size", "5",
                 "--out", str(out), *extra])


def test_the_job_writes_the_error_with_its_provenance_and_it_shrinks_as_s_grows(model, tmp_path):
    results = {}
    for S in (5, 20, 100):
        assert _job(model, tmp_path / f"S{S}.json", S) == 0
        results[S] = json.loads((tmp_path / f"S{S}.json").read_text())
    errors = [results[S]["reconstruction_mse"] for S in (5, 20, 100)]
    assert all(math.isfinite(e) and e > 0 for e in errors), errors
    assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 10, errors
    five = results[5]
    assert (five["steps"], five["skip"], five["eta"], five["num_images"]) == (5, "uniform", 0.0, 12)
    assert five["network_evaluations"] == 10 and results[100]["network_evaluations"] == 200  # S each way
    assert 0 < five["reconstruction_mse_stderr"] < five["reconstruction_mse"]
    assert five["scale"] == "[0, 1]" and five["speed"] == "fused_adam,foreach_ema"  # auto on a CPU, never bf16
    assert five["setting"] == SETTING and five["checkpoint_sha256"] == sha256_file(model["checkpoint"])
    assert five["data_sha256"] == split_sha256(model["data"], "train")
    # the same number as the error of test images 0..11 computed directly, in one batch
    network, diffusion, _ = load_for_sampling(model["checkpoint"])
    x0 = to_model_range(load_split(model["data"], "test")[0][:12])
    direct = reconstruction_error(network, diffusion, x0, steps=5).double()
    assert five["reconstruction_mse"] == pytest.approx(direct.mean().item(), rel=1e-5)
    assert five["reconstruction_mse_stderr"] == pytest.approx((direct.std() / math.sqrt(12)).item(), rel=1e-4)


def test_the_quadratic_skip_counts_the_steps_it_visits(model, tmp_path):
    assert _job(model, tmp_path / "S20.json", 20, "--skip", "quadratic", count=3) == 0
    result = json.loads((tmp_path / "S20.json").read_text())
    visited = len(timestep_subsequence(100, 20, "quadratic"))
    assert result["skip"] == "quadratic" and result["network_evaluations"] == 2 * visited
    assert visited < 20  # small steps repeat and are dropped (docs/samplers.md): fewer evaluations than 2 S


def test_the_error_goes_to_the_settings_mlflow_run_at_step_s(model, tmp_path):
    from mlflow.tracking import MlflowClient

    from ddpm.io import write_json
    from ddpm.tracking import init_sweep, start_setting_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = init_sweep(uri, "reconstruction", "sweep", tmp_path / "artifacts", {})
    write_json(tmp_path / "tracking.json", tracking)
    (tmp_path / "run_id.txt").write_text(start_setting_run(tracking, SETTING, {"T": 100}) + "\n")
    runs = ["--tracking", str(tmp_path / "tracking.json"), "--run-id-file", str(tmp_path / "run_id.txt")]
    for S in (20, 5):
        assert _job(model, tmp_path / f"S{S}.json", S, *runs, count=4) == 0
    run_id = (tmp_path / "run_id.txt").read_text().strip()
    history = {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, "reconstruction_mse")}
    assert history == {S: pytest.approx(json.loads((tmp_path / f"S{S}.json").read_text())["reconstruction_mse"])
                       for S in (5, 20)}
    assert sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "reconstruction_mse_stderr")) == [5, 20]


def test_a_diverged_checkpoint_writes_the_record_and_the_table_says_so(model, tmp_path, capsys):
    run = tmp_path / "linear-T1000-eps-fixedlarge-mse-s0"
    run.mkdir()
    config = asdict(TrainConfig(T=1000))
    save_checkpoint(run / "checkpoint.pt", {"config": config, "model": {}, DIVERGED: 7})
    out = run / "reconstruction" / "S10.json"
    assert main(["evaluate", "reconstruction", "--checkpoint", str(run / "checkpoint.pt"), "--data",
                 str(model["data"]), "--setting", run.name, "--steps", "10", "--out", str(out)]) == 0
    assert "diverged at step 7" in capsys.readouterr().out
    assert json.loads(out.read_text()) == {DIVERGED: 7}
    table = reconstruction_table(record_settings({run.name: run}), [10], load_published(PUBLISHED), "ddim-table1")
    row = table.iloc[0]
    assert row["status"] == "diverged at step 7" and pd.isna(row["reconstruction MSE"])
    assert row["reconstruction MSE (paper)"] == 0.014 and pd.isna(row["reconstruction MSE Δ"])


def test_the_job_refuses_what_it_cannot_measure(model, tmp_path, capsys):
    test_size = len(load_split(model["data"], "test")[0])
    assert _job(model, tmp_path / "many.json", 5, count=test_size + 1) == 2
    assert "'reconstruction.num_images'" in capsys.readouterr().err and not (tmp_path / "many.json").exists()
    assert _job(model, tmp_path / "other.json", 5, setting="cosine-T100-eps-fixedlarge-mse-s0") == 2
    assert "belongs to another setting" in capsys.readouterr().err
    assert _job(model, tmp_path / "long.json", 101) == 2  # S > T
    assert "S = 101 is more than the T = 100" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# The rule


def _config(tmp_path: Path, **sections) -> Path:
    config = yaml.safe_load(TINY.read_text())
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_workflow_plans_a_job_per_setting_and_s_and_none_without_steps(tmp_path):
    counts = job_counts(tmp_path / "with", _config(tmp_path, reconstruction={"steps": [10, 50]}))
    assert counts["reconstruction"] == 2 * 2 and counts["report"] == 1  # 2 settings (tests/configs/tiny.yaml)
    assert "reconstruction" not in job_counts(tmp_path / "without", TINY)


@pytest.mark.parametrize("sections, said", [
    ({"reconstruction": {"steps": [10, 60]}},
     "config key 'reconstruction.steps': S = 60 is more than the T = 50 steps"),
    ({"reconstruction": {"steps": [10], "num_images": 301}},
     "config key 'reconstruction.num_images': 301 is more than the test split of digits has (300 images)"),
    ({"reconstruction": {"steps": [10], "skip": "cubic"}}, "cubic"),
])
def test_a_reconstruction_the_workflow_cannot_run_stops_the_dry_run_naming_the_key(tmp_path, sections, said):
    result = snakemake(tmp_path, "-n", config=_config(tmp_path, **sections), check=False)
    assert result.returncode != 0 and said in result.stdout + result.stderr, (result.stdout + result.stderr)[-2000:]
    assert not (tmp_path / "results").exists()


def test_imagefolder_needs_the_number_of_images_to_reconstruct(tmp_path):
    for i in range(4):
        (tmp_path / "images" / "a").mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), i * 40).save(tmp_path / "images" / "a" / f"{i}.png")
    dataset = {"name": "imagefolder", "path": str(tmp_path / "images"), "image_size": 8}
    config = _config(tmp_path, dataset=dataset, evaluate={"nll_num_images": 1, "nll_shard_size": 10},
                     reconstruction={"steps": [10]})
    result = snakemake(tmp_path, "-n", config=config, check=False)
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "config key 'reconstruction.num_images': imagefolder needs" in said, said[-2000:]


# ----------------------------------------------------------------------------------------------------------------
# The table


def _result(folder: Path, S: int, mse: float, *, stderr: float = 1e-4, images: int = 10_000, skip: str = "quadratic"):
    (folder / "reconstruction").mkdir(parents=True, exist_ok=True)
    visited = len(timestep_subsequence(1000, S, skip))
    (folder / "reconstruction" / f"S{S}.json").write_text(json.dumps({
        "reconstruction_mse": mse, "reconstruction_mse_stderr": stderr, "steps": S, "skip": skip, "eta": 0.0,
        "network_evaluations": 2 * visited, "num_images": images, "setting": folder.name}))


def test_the_table_puts_the_papers_numbers_beside_the_measured_ones(tmp_path):
    names = ["linear-T1000-eps-fixedlarge-mse-s0", "linear-T1000-eps-fixedlarge-mse-s1"]
    runs = record_settings({name: tmp_path / name for name in names})
    for name, errors in zip(names, ((0.016, 0.007), (0.018, 0.006))):
        for S, mse in zip((10, 100), errors):
            _result(runs[name], S, mse)
    published = load_published(PUBLISHED)
    table = reconstruction_table(runs, [100, 10], published, "ddim-table1")
    assert list(table.columns) == list(RECONSTRUCTION_COLUMNS)
    assert list(table["S"]) == [10, 100] and list(table["seeds"]) == [2, 2]  # seeds pooled, S in order
    ten, hundred = table.iloc[0], table.iloc[1]
    assert ten["reconstruction MSE"] == pytest.approx(0.017)
    assert ten["reconstruction MSE ±"] == pytest.approx(np.std([0.016, 0.018], ddof=1))  # over seeds
    assert (ten["reconstruction MSE (paper)"], hundred["reconstruction MSE (paper)"]) == (0.014, 0.0009)
    assert ten["reconstruction MSE Δ"] == pytest.approx(0.017 - 0.014)
    assert hundred["reconstruction MSE Δ"] == pytest.approx(0.0065 - 0.0009)
    assert (ten["network evaluations"], hundred["network evaluations"]) == (20, 2 * 96)  # quadratic: 96 of 100 S
    assert (ten["skip"], ten["images"], ten["status"]) == ("quadratic", 10_000, "finished")
    assert ten["not comparable"] == "" and ten["source"] == "Song et al. 2020 (DDIM), Table 2"

    one = reconstruction_table({names[0]: runs[names[0]]}, [10], published, "ddim-table1")
    assert one["reconstruction MSE ±"].iloc[0] == 1e-4  # one seed: the standard error over the images
    scaled = reconstruction_table(runs, [10, 100], published, "ddim-table1", scaled_down=True)
    assert scaled["reconstruction MSE Δ"].isna().all() and set(scaled["not comparable"]) == {SCALED_DOWN}
    assert list(scaled["reconstruction MSE (paper)"]) == [0.014, 0.0009]  # still beside, marked
    for name in names:  # fewer images than the test split: no Δ, and why
        _result(runs[name], 10, 0.02, images=500)
    fewer = reconstruction_table(runs, [10], published, "ddim-table1")
    assert pd.isna(fewer["reconstruction MSE Δ"].iloc[0])
    assert fewer["not comparable"].iloc[0] == "500 images (paper: 10,000)"

    other = record_settings({SETTING: tmp_path / SETTING})  # T = 100: not a setting of the paper
    _result(other[SETTING], 10, 0.05, skip="uniform")
    row = reconstruction_table(other, [10], published, "ddim-table1").iloc[0]
    assert pd.isna(row["reconstruction MSE (paper)"]) and pd.isna(row["reconstruction MSE Δ"])
    assert row["not comparable"] == "" and row["source"] == "" and row["skip"] == "uniform"

    stale = runs[names[0]] / "reconstruction"  # the file of S = 10 holding another S's result is refused
    (stale / "S10.json").write_text((stale / "S100.json").read_text())
    with pytest.raises(ValueError, match="records the reconstruction on S = 100 steps, but it is the file of S = 10"):
        reconstruction_table(runs, [10], published, "ddim-table1")


def test_no_reconstruction_is_a_table_without_rows_and_rendered_tables_say_lower_is_better(tmp_path):
    runs = record_settings({"linear-T1000-eps-fixedlarge-mse-s0": tmp_path / "linear-T1000-eps-fixedlarge-mse-s0"})
    empty = reconstruction_table(runs, [], load_published(PUBLISHED), "ddim-table1")
    assert empty.empty and list(empty.columns) == list(RECONSTRUCTION_COLUMNS)
    csv, md, _ = write_tables(empty, tmp_path / "empty", caption="none")
    assert list(pd.read_csv(csv).columns) == list(RECONSTRUCTION_COLUMNS) and pd.read_csv(csv).empty
    _result(runs["linear-T1000-eps-fixedlarge-mse-s0"], 10, 0.02)
    table = reconstruction_table(runs, [10], load_published(PUBLISHED), "ddim-table1", scaled_down=True)
    _, md, _, html = write_tables(table, tmp_path / "t", caption="t", html=tmp_path / "t.html", drop_empty=True)
    assert "| reconstruction MSE ↓ |" in md.read_text() and "reconstruction MSE Δ" not in md.read_text()
    assert "<th>reconstruction MSE ↓</th>" in html.read_text()
