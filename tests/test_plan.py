"""``ddpm plan`` (ddpm/plan.py): what a config will cost, before it runs.

What is covered, in about a minute on 2 cores (one Snakemake dry run of about 2 s per case):

* job counts: for every ``config/*.yaml`` at full scale (the LSUN ones on a copy pointed at a small folder of images;
  the published-weights ones with their Hub ids, which a dry run accepts), and scaled down (``scale=tiny``) for
  ``ddpm_table1`` (snapshots, train-set bits/dim) and ``ddim_table1`` (25 sampler points, reconstruction), the
  plan's jobs per rule are those of Snakemake's own dry run; the published-weights configs scaled down are refused
  by the plan as by the workflow (test_paper.py checks the workflow's refusal);
* the work of ``ddpm_table1`` and ``ddim_table1`` against numbers worked out by hand from the configs and the rules;
* the hours as work / rate against a hand-made GPU record (``--bench``), the FLOPs scaling of a scaled-down config,
  and the choice of record in a folder (a GPU record before a newer CPU one; only CPU records: said so);
* refusals naming what is wrong: a record without the rates, a missing config file, a key the schema refuses.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, job_counts, stand_ins_for_local_inputs

from ddpm import plan
from ddpm.cli import main
from ddpm.configcheck import ConfigError

CONFIGS = sorted((ROOT / "config").glob("*.yaml"))
#: DDPM's CIFAR-10 network: 35.7M parameters (DDPM §4; the bench records say 35,746,307), 12.4 GFLOP per forward
#: pass of one 32×32 image (docs/benchmarks.md).
CIFAR10_PARAMETERS, CIFAR10_GFLOP = 35_746_307, 12.4


def _config_path(tmp_path: Path, path: Path) -> Path:
    """``path``, or a copy pointed at stand-ins for what is not at hand (LSUN's and CelebA's images, published weights
    files: :func:`conftest.stand_ins_for_local_inputs`)."""
    original = yaml.safe_load(path.read_text())
    config = stand_ins_for_local_inputs(original, tmp_path)
    if config == original:
        return path
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(config))
    return copy


def _dry_run(workdir: Path, config: Path, *args: str) -> dict[str, int]:
    """Snakemake's jobs per rule, its total checked against their sum and left out."""
    counts = job_counts(workdir, config, *args)
    assert counts.pop("total") == sum(counts.values())
    return counts


def _plan(config: Path, *entries: str, **options) -> dict:
    options.setdefault("benchmarks", Path("/nonexistent-benchmarks"))  # the work and the jobs, no hours
    return plan.make_plan(plan.resolve([config], entries), options.pop("record", None), **options)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_jobs_per_rule_are_those_of_the_dry_run(tmp_path, path):
    config = _config_path(tmp_path, path)
    planned = _plan(config)
    assert planned["jobs"] == _dry_run(tmp_path / "run", config)
    assert planned["total_jobs"] == sum(planned["jobs"].values())


@pytest.mark.parametrize("name", ["ddpm_table1", "ddim_table1"])
def test_jobs_per_rule_scaled_down_are_those_of_the_dry_run(tmp_path, name):
    config = ROOT / "config" / f"{name}.yaml"
    planned = _plan(config, "scale=tiny")
    assert planned["name"].endswith("-tiny") and planned["dataset"]["name"] == "digits"
    assert planned["jobs"] == _dry_run(tmp_path / "run", config, "--config", "scale=tiny")


@pytest.mark.parametrize("name, settings", [("ddpm_cifar10_pretrained", 1), ("ddpm_lsun_pretrained", 1),
                                            ("iddpm_cifar10_pretrained", 2), ("ddim_celeba_pretrained", 1)])
def test_published_weights_plan_no_training_and_are_refused_scaled_down_as_by_the_workflow(tmp_path, name, settings):
    config = _config_path(tmp_path, ROOT / "config" / f"{name}.yaml")
    planned = _plan(config)
    assert "train" not in planned["jobs"] and planned["jobs"]["import_pretrained"] == settings
    training = planned["work"]["training"]
    assert (training["items"], training["jobs"], training["total"]) == ([], 0, 0)
    assert planned["disk"]["parts"]["snapshots"] == 0 and planned["disk"]["resume_per_training"] == 0
    if name.startswith("ddpm_"):  # a Hugging Face model id: fetched only at full scale
        with pytest.raises(ConfigError, match="pretrained.source"):
            _plan(config, "scale=tiny")


def test_work_of_ddpm_table1_by_hand():
    planned = _plan(ROOT / "config" / "ddpm_table1.yaml")
    work = {kind: entry["total"] for kind, entry in planned["work"].items()}
    # 2 trainings (L_simple, L) × 800,000 steps × batch 128
    assert work["training"] == 2 * 800_000 * 128
    # 50,000 samples × 1000 steps per setting; 7 snapshots the same; the figures: 8 samples on 1000 steps, 11 images
    # decoded from t = 500
    final, snapshots, figures = 2 * 50_000 * 1000, 2 * 7 * 50_000 * 1000, 2 * (8 * 1000 + 11 * 500)
    assert work["sampling"] == final + snapshots + figures
    # bits/dim: T = 1000 terms per image, the 10,000 test images and the 50,000 train images
    assert work["bits/dim"] == 2 * (10_000 + 50_000) * 1000
    assert work["reconstruction"] == 0
    # FID: each of the 2 + 14 jobs extracts 50,000 samples and the 50,000 train images (KID, precision/recall), and
    # for fid_test the samples again and the 10,000 test images; the statistics once; the baselines 50,000 Gaussian
    # samples, 10,000 test images and the train images twice
    assert work["FID"] == 16 * (50_000 + 50_000 + 50_000 + 10_000) + 50_000 + (50_000 + 10_000 + 2 * 50_000)
    space = planned["disk"]["parts"]
    assert space["prepared data"] == 60_000 * (3 * 32 * 32 + 8)
    assert space["samples"] == 2 * 2 * 50_000 * 3 * 32 * 32  # shards and samples.npz, 2 settings
    assert space["snapshot samples"] == 7 * space["samples"]
    assert space["checkpoints"] == 2 * 4 * 4 * CIFAR10_PARAMETERS  # model, EMA, Adam's moments, fp32
    assert space["snapshots"] == 2 * 7 * 4 * CIFAR10_PARAMETERS  # the EMA only
    assert space["reference statistics"] == 8 * (2048 * 2048 + 2048)


def test_ddim_quadratic_skip_counts_distinct_steps():
    planned = _plan(ROOT / "config" / "ddim_table1.yaml")
    points = {item["what"].split(" ")[0]: item["per_image"] for item in planned["work"]["sampling"]["items"]}
    # DDIM Appendix D.2's quadratic subsequence repeats small steps: S = 50 visits 49, S = 100 visits 96
    assert points["ddim-eta0-S50-quadratic-noclip"] == [49] and points["ddim-eta0-S100-quadratic-noclip"] == [96]
    assert points["ddim-eta1-S10-quadratic-noclip"] == [10] and points["ancestral-S1000-quadratic-fixedlarge"] == [1000]
    reconstruction = {item["what"].split(" (")[0]: item for item in planned["work"]["reconstruction"]["items"]}
    assert reconstruction["S = 50"]["per_image"] == [2 * 49] and reconstruction["S = 50"]["images"] == 10_000


def _gpu_record(folder: Path, name: str = "gpu.json", **changes) -> Path:
    record = {"date": "2026-01-01T00:00:00+00:00", "device": "cuda", "device_name": "Test GPU", "preset": "cifar10",
              "speed": "bf16,compile", "batch_size": 128, "sample_batch": 128,
              "optimised": {"train_images_per_s": 1000.0, "sample_image_steps_per_s": 10_000.0,
                            "bpd_image_steps_per_s": 5_000.0},
              "plain": {"train_images_per_s": 250.0, "sample_image_steps_per_s": 2_000.0,
                        "bpd_image_steps_per_s": 1_000.0}}
    record.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(record))
    return folder / name


def test_hours_are_work_over_the_records_rates(tmp_path, capsys):
    record = _gpu_record(tmp_path)
    config = ROOT / "config" / "ddim_table1.yaml"
    planned = _plan(config, record=record)
    work = {kind: entry["total"] for kind, entry in planned["work"].items()}
    hours = planned["hours"]
    assert hours["training"] == pytest.approx(800_000 * 128 / 1000 / 3600)
    assert hours["sampling"] == pytest.approx(work["sampling"] / 10_000 / 3600)
    assert hours["bits/dim"] == pytest.approx(10_000 * 1000 / 5_000 / 3600)
    assert hours["reconstruction"] == pytest.approx(work["reconstruction"] / 2_000 / 3600)  # fp32: the plain rate
    assert hours["FID"] is None
    measured = ("training", "sampling", "bits/dim", "reconstruction")
    assert hours["total"] == pytest.approx(sum(hours[k] for k in measured))
    assert main(["plan", "--configfile", str(config), "--bench", str(record)]) == 0
    text = capsys.readouterr().out
    assert "GPU-hours" in text and "not GPU-hours" not in text and "Test GPU" in text
    assert "not measured" in text  # FID's hours
    rates = {"train_images_per_s": 1000.0, "sample_image_steps_per_s": 10_000.0, "bpd_image_steps_per_s": 5_000.0}
    with_fid = _plan(config, record=_gpu_record(tmp_path, "fid.json", optimised={**rates, "fid_images_per_s": 500.0}))
    assert with_fid["hours"]["FID"] == pytest.approx(work["FID"] / 500 / 3600)
    assert with_fid["hours"]["total"] == pytest.approx(hours["total"] + work["FID"] / 500 / 3600)


def test_another_network_scales_the_rates_by_its_flops(tmp_path, capsys):
    record = _gpu_record(tmp_path)
    assert plan.network_flops("cifar10", 32, 3) == pytest.approx(CIFAR10_GFLOP * 1e9, rel=0.01)
    tiny = _plan(ROOT / "config" / "ddpm_table1.yaml", "scale=tiny", record=record)
    ratio = plan.network_flops("cifar10", 32, 3) / plan.network_flops("tiny", 8, 1)
    assert ratio > 100  # the tiny 1×8×8 network against the 35.7M one at 3×32×32
    assert tiny["record"]["scale"] == pytest.approx(ratio)
    assert tiny["hours"]["training"] == pytest.approx(2 * 40 * 32 / (1000 * ratio) / 3600)
    assert any(note.startswith("rates scaled ×") for note in tiny["notes"])
    same = _plan(ROOT / "config" / "ddpm_table1.yaml", record=record)
    assert same["record"]["scale"] == 1 and not any(note.startswith("rates scaled") for note in same["notes"])
    assert same["hours"]["training"] == pytest.approx(2 * 800_000 * 128 / 1000 / 3600)
    assert main(["plan", "--configfile", str(ROOT / "config" / "ddpm_table1.yaml"), "--config", "scale=tiny",
                 "--bench", str(record), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["record"]["scale"] == pytest.approx(ratio)


def test_the_newest_gpu_record_before_any_cpu_one_and_cpu_hours_said_so(tmp_path, capsys):
    folder = tmp_path / "benchmarks"
    cpu = sorted((ROOT / "benchmarks").glob("*-cpu-*.json"))[0]
    folder.mkdir()
    shutil.copy(cpu, folder / cpu.name)
    config = ROOT / "config" / "cifar10.yaml"
    only_cpu = _plan(config, benchmarks=folder)
    assert only_cpu["record"]["gpu"] is False and only_cpu["record"]["path"].endswith(cpu.name)
    said = " ".join(only_cpu["notes"])
    assert f"no GPU record in {folder}/" in said and "not GPU-hours" in said and "x86_64, 2 threads" in said
    _gpu_record(folder, "old-gpu.json", date="2000-01-01T00:00:00+00:00")  # older than the CPU record
    _gpu_record(folder, "older-gpu.json", date="1999-01-01T00:00:00+00:00", device_name="Older GPU")
    gpu = _plan(config, benchmarks=folder)
    assert gpu["record"]["path"].endswith("old-gpu.json") and not any("not GPU-hours" in n for n in gpu["notes"])
    assert main(["plan", "--configfile", str(config), "--bench", str(folder / cpu.name)]) == 0
    text = capsys.readouterr().out
    assert "is a CPU record" in text and "not GPU-hours" in text


@pytest.mark.parametrize("args, named", [
    (["--configfile", "no/such/config.yaml"], "no/such/config.yaml"),
    (["--configfile", str(ROOT / "config" / "cifar10.yaml"), "--config", "train={stepz: 5}"], "stepz"),
    (["--configfile", str(ROOT / "config" / "cifar10.yaml"), "--config", "sweep={T: [0]}"], "sweep.T"),
    (["--configfile", str(ROOT / "config" / "cifar10.yaml"), "--config", "scale"], "name=value"),
])
def test_bad_input_is_refused_naming_it(capsys, args, named):
    assert main(["plan", *args]) == 2
    assert named in capsys.readouterr().err


def test_a_record_without_the_rates_is_refused_naming_it(tmp_path, capsys):
    bad = _gpu_record(tmp_path, "bad.json", optimised={"train_images_per_s": 1000.0})
    config = str(ROOT / "config" / "cifar10.yaml")
    assert main(["plan", "--configfile", config, "--bench", str(bad)]) == 2
    said = capsys.readouterr().err
    assert str(bad) in said and "optimised.sample_image_steps_per_s" in said
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["plan", "--configfile", config, "--bench", str(tmp_path / "broken.json")]) == 2
    assert "broken.json" in capsys.readouterr().err
    assert main(["plan", "--configfile", config, "--bench", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert math.isfinite(_plan(ROOT / "config" / "cifar10.yaml", record=_gpu_record(tmp_path))["hours"]["total"])
