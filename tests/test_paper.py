"""The paper configs: their sweeps, their hyperparameters, their published numbers and their dry runs."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import (ROOT, job_counts, record_settings, save_diffusers_folder, snakemake, stand_ins_for_local_inputs,
                      write_point_scores)
from PIL import Image

from ddpm.paper import load_published, published_for, published_for_sampler
from ddpm.report.tables import build_table, paper_table, rate_distortion, rate_distortion_table
from ddpm.settings import TINY_SCALE, apply_scale, expand_sweep, train_config
from ddpm.samplers import SamplerPoint, expand_sampling
from ddpm.unet import count_parameters, create_model

CONFIGS = ROOT / "config"
PUBLISHED = CONFIGS / "published.csv"
PAPER_CONFIGS = ["ddpm_table1", "ddpm_table2", "improved_ddpm_schedules", "ddpm_lsun"]  # the settings' own tables
SAMPLER_CONFIGS = ["ddim_table1"]  # one training, its sampling axis in the paper's layout
#: What a scaled-down run of a config leaves out, and why: ddpm_lsun's 8 DDIM Table 3 points and DDIM CelebA's 25
#: are the code path of ddim_table1's 29 points (DDIM Table 1's 25 and DPM-Solver++'s 4), which run in full; here the
#: LSUN config keeps its own sampler, CelebA's σ̂ and η = 0 at S = 10, and Improved DDPM's its own and the strided
#: S = 50 (S = 100 is the same code path) (CI stays under 25 min).
TINY_OVERRIDES = {
    "ddpm_lsun": ["sampling=[{sampler: ancestral}]"],
    "iddpm_cifar10_pretrained": ["sampling=[{sampler: ancestral}, {sampler: ancestral, skip: strided, steps: 50}]"],
    "ddim_celeba_pretrained": ["sampling=[{sampler: ancestral, variance: fixedlarge, skip: uniform, steps: 10}, "
                               "{sampler: ddim, eta: 0.0, skip: uniform, clip: false, steps: 10}]"],
}
#: What ``scale: tiny`` draws per sampler point and scores bits/dim (and DDIM Table 2's reconstruction) on.
TINY_SAMPLES = TINY_SCALE["sample"]["num_samples"]
TINY_NLL_IMAGES = TINY_SCALE["evaluate"]["nll_num_images"]
#: Evaluations of published weights (no training); their published numbers are another sweep's (``paper_sweep``).
PRETRAINED_CONFIGS = ["ddpm_cifar10_pretrained", "ddpm_lsun_pretrained"]
#: A stand-in for the published CIFAR-10 weights at the digits' shape, in diffusers' layout (what the scaled-down run
#: imports): DDPM's U-Net configuration (ε 1e-6, TF padding, attention at the second level), 1×8×8, T = 1000.
TINY_SOURCE = (
    {"block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
     "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1, "sample_size": 8, "in_channels": 1,
     "out_channels": 1, "norm_eps": 1e-6, "norm_num_groups": 32, "downsample_padding": 0, "flip_sin_to_cos": False,
     "freq_shift": 1, "attention_head_dim": None},
    {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
     "variance_type": "fixed_large", "clip_sample": True},
)
#: The evaluations of other codes' published weights, scaled down on stand-ins made here in each code's layout.
FOREIGN_WEIGHTS_CONFIGS = ["iddpm_cifar10_pretrained", "ddim_celeba_pretrained"]
#: improved-diffusion's flags of the stand-ins (the digits' 1×8×8; a learned Σ; T = 4000, cosine; 4 heads at 4²).
TINY_IMPROVED_FLAGS = ("--image_size 8 --num_channels 32 --num_res_blocks 1 --learn_sigma True "
                       "--attention_resolutions 4 --diffusion_steps 4000 --noise_schedule cosine")
TINY_IMPROVED_NET = {
    "block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1, "sample_size": 8, "in_channels": 1,
    "out_channels": 2, "norm_eps": 1e-5, "norm_num_groups": 32, "downsample_padding": 1, "flip_sin_to_cos": True,
    "freq_shift": 0, "attention_head_dim": 16, "resnet_time_scale_shift": "scale_shift", "attn_norm_num_groups": 32,
}


def _config(name: str) -> dict:
    """A paper config with the schema's defaults that matter here filled in."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    for axis, default in (("mean_type", ["eps"]), ("var_type", ["fixedlarge"]), ("loss_type", ["mse"])):
        config["sweep"].setdefault(axis, default)
    return config


# ----------------------------------------------------------------------------------------------------------------
# Sweeps


def test_rows_cross_the_sweep_lists_they_do_not_give():
    sweep = {"schedule": ["linear", "cosine"], "T": [1000, 4000], "mean_type": ["eps"], "var_type": ["fixedlarge"],
             "loss_type": ["mse"], "seed": [0, 1],
             "rows": [{"loss_type": "mse"}, {"var_type": "learned_range", "loss_type": ["hybrid", "kl"], "T": 4000}]}
    names = [s.name for s in expand_sweep({"sweep": sweep})]
    assert names[:8] == [f"{s}-T{T}-eps-fixedlarge-mse-s{seed}" for s in ("linear", "cosine") for T in (1000, 4000)
                         for seed in (0, 1)]
    assert names[8:] == [f"{s}-T4000-eps-learned_range-{loss}-s{seed}" for s in ("linear", "cosine")
                         for loss in ("hybrid", "kl") for seed in (0, 1)]
    with pytest.raises(ValueError, match="unknown axis \\['loss'\\]"):
        expand_sweep({"sweep": {**sweep, "rows": [{"loss": "mse"}]}})
    with pytest.raises(ValueError, match="lists a setting twice"):
        expand_sweep({"sweep": {**sweep, "rows": [{"loss_type": "mse"}, {"var_type": "fixedlarge"}]}})


def test_table2_has_the_papers_six_rows():
    rows = {(s.mean_type, s.var_type, s.loss_type) for s in expand_sweep(_config("ddpm_table2"))}
    assert rows == {("xprev", "learned", "kl"), ("xprev", "fixedlarge", "kl"), ("xprev", "fixedlarge", "mse"),
                    ("eps", "learned", "kl"), ("eps", "fixedlarge", "kl"), ("eps", "fixedlarge", "mse")}


def test_improved_ddpm_trains_its_six_published_rows_and_the_full_grid_on_request():
    """By default exactly the settings Improved DDPM publishes numbers for; the full grid by the command line its
    header documents (its settings keep the same names, so the six are not trained again)."""
    import shlex

    from snakemake.cli import parse_config

    from ddpm.configcheck import load_config

    published = load_published(PUBLISHED)
    rows = published[published["sweep"] == "improved-ddpm-schedules"]
    expected = {(r.schedule, int(r.T), r.mean_type, r.var_type, r.loss_type) for r in rows.itertuples()}
    settings = expand_sweep(_config("improved_ddpm_schedules"))
    assert len(settings) == 6 and {(s.schedule, s.T, s.mean_type, s.var_type, s.loss_type) for s in settings} == expected
    lines = (CONFIGS / "improved_ddpm_schedules.yaml").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#") and line.rstrip().endswith("--config \\"))
    overrides = shlex.split(lines[first + 1].lstrip("# "))  # the documented override, as a shell splits it
    grid, _ = load_config([CONFIGS / "improved_ddpm_schedules.yaml"], parse_config(overrides))
    full = expand_sweep(grid)
    assert len(full) == 12 and {s.name for s in settings} < {s.name for s in full}
    assert {(s.schedule, s.T) for s in full} == {("linear", 1000), ("linear", 4000), ("cosine", 1000), ("cosine", 4000)}
    assert {(s.var_type, s.loss_type) for s in full} == {("fixedlarge", "mse"), ("learned_range", "hybrid"),
                                                         ("learned_range", "kl")}


# ----------------------------------------------------------------------------------------------------------------
# The papers' hyperparameters


@pytest.mark.parametrize("name", ["ddpm_table1", "ddpm_table2"])
def test_ddpm_configs_carry_the_papers_cifar10_hyperparameters(name):
    config = _config(name)
    assert config["dataset"]["name"] == "cifar10" and config["evaluate"]["feature_extractor"] == "inception-v3-compat"
    assert config["sample"]["num_samples"] == 50000
    for setting in expand_sweep(config):
        train = train_config(config, setting)
        assert (train.preset, train.T, train.schedule, train.schedule_rescale) == ("cifar10", 1000, "linear", False)
        assert (train.lr, train.warmup, train.batch_size, train.grad_clip) == (2e-4, 5000, 128, 1.0)
        assert (train.ema_decay, train.dropout, train.flip, train.steps) == (0.9999, 0.1, True, 800000)
        assert train.timestep_sampler == "uniform"


def test_improved_ddpm_config_carries_improved_diffusions_cifar10_hyperparameters():
    config = _config("improved_ddpm_schedules")
    for setting in expand_sweep(config):
        train = train_config(config, setting)
        assert (train.preset, train.lr, train.batch_size, train.steps) == ("iddpm-cifar10", 1e-4, 128, 500000)
        assert (train.warmup, train.grad_clip, train.ema_decay, train.schedule_rescale) == (0, 0.0, 0.9999, True)
        assert train.timestep_sampler is None  # importance sampling for L_vlb only
    # improved-diffusion's CIFAR-10 checkpoint is named "50M": its model has about 50 million parameters
    assert count_parameters(create_model("iddpm-cifar10", learn_sigma=True)) == 52_546_438  # their UNetModel's


def test_cifar10_preset_is_unchanged_by_attention_heads():
    assert count_parameters(create_model("cifar10")) == 35_746_307


def test_ddim_celeba_preset_is_ddims_celeba_model():
    """ermongroup/ddim's configs/celeba.yml builds a Model of 78,700,803 parameters (their code, ch_mult 1,2,2,2,4)."""
    assert count_parameters(create_model("ddim-celeba64")) == 78_700_803
    assert _config("ddim_celeba_pretrained")["train"]["preset"] == "ddim-celeba64"


# ----------------------------------------------------------------------------------------------------------------
# The published numbers


def test_every_published_number_belongs_to_a_setting_of_its_sweep_and_a_sampler_point_of_it():
    table = load_published(PUBLISHED)
    configs = {_config(n)["name"]: _config(n) for n in PAPER_CONFIGS + SAMPLER_CONFIGS}
    configs["ddim-celeba"] = _config("ddim_celeba_pretrained")  # DDIM's own CelebA model: its published weights
    lsun = {"ddpm-lsun-church", "ddpm-lsun-bedroom", "ddpm-lsun-bedroom-large", "ddpm-lsun-cat"}
    matched = reconstructed = 0
    for row in table.itertuples():
        config = configs.get(row.sweep) or (configs["ddpm-lsun-church"] if row.sweep in lsun else None)
        assert config is not None, f"no paper config is named {row.sweep}"
        settings = {s.name: s for s in expand_sweep(config)}
        name = f"{row.schedule}-T{row.T}-{row.mean_type}-{row.var_type}-{row.loss_type}-s0"
        assert name in settings, f"{row.sweep}: {name} is not in the sweep"
        if pd.isna(row.sampler):
            continue
        if row.metric == "reconstruction_mse":  # DDIM Table 2: a job of the config's reconstruction.steps (η = 0)
            steps = config.get("reconstruction", {}).get("steps", [])
            assert row.sampler == "ddim" and row.eta == 0 and row.steps in steps, \
                f"{row.sweep}: S = {row.steps} is not in the config's reconstruction.steps {steps}"
            reconstructed += 1
            continue
        setting = settings[name].axes()  # a sampler row: one point of the config's sampling axis has it
        points = [p for p in expand_sampling(config) if published_for_sampler(table, row.sweep, setting, p)]
        assert points, f"{row.sweep}: no sampler point of the config is {row.sampler} S={row.steps} " \
                       f"eta={row.eta} variance={row.variance}"
        matched += 1
    assert matched == 25 + 25 + 16  # DDIM Table 1 (CIFAR-10, CelebA) and Table 3 (bedroom, church)
    assert reconstructed == 7  # DDIM Table 2: S = 10, 20, 50, 100, 200, 500, 1000


def test_published_numbers_are_the_papers():
    table = load_published(PUBLISHED)
    lsimple = published_for(table, "ddpm-table1", {"schedule": "linear", "T": 1000, "mean_type": "eps",
                                                   "var_type": "fixedlarge", "loss_type": "mse"})
    assert (lsimple["is"]["value"], lsimple["is"]["std"], lsimple["fid"]["value"]) == (9.46, 0.11, 3.17)
    assert (lsimple["fid_test"]["value"], lsimple["bpd"]["value"], lsimple["bpd_train"]["value"]) == (5.24, 3.75, 3.72)
    assert lsimple["is"]["table"] == "Table 1" and lsimple["rate_bpd_step1000"]["table"] == "Table 4"
    unstable = published_for(table, "ddpm-table2", {"schedule": "linear", "T": 1000, "mean_type": "eps",
                                                    "var_type": "learned", "loss_type": "kl"})
    assert list(unstable) == ["unstable"] and unstable["unstable"]["value"] is None
    vlb = published_for(table, "improved-ddpm-schedules", {"schedule": "cosine", "T": 4000, "mean_type": "eps",
                                                          "var_type": "learned_range", "loss_type": "kl"})
    assert (vlb["bpd"]["value"], vlb["fid"]["value"]) == (2.94, 11.47)
    assert len(table[table["sweep"] == "improved-ddpm-schedules"]) == 12


@pytest.mark.parametrize("change, message", [
    (lambda text: text.replace(",linear,1000,xprev,learned,kl,,,,,is,", ",linear,1000,xprev,learnt,kl,,,,,is,"),
     "var_type 'learnt'"),
    (lambda text: text.replace(",is,9.46,0.11,", ",is,,0.11,"), "line 2: value is missing"),
    (lambda text: text.replace(",unstable,,,training", ",unstable,1.0,,training", 1), "an unstable row has no value"),
    (lambda text: text.replace(",fid,23.69,", ",fd,23.69,"), "metric 'fd'"),
    (lambda text: text + text.splitlines()[1] + "\n", "a number is given twice"),
    (lambda text: text.replace("sweep,paper", "sweeps,paper"), "expected the columns"),
    (lambda text: text.replace(",mse,ddim,10,0.2,,fid,14.04,", ",mse,ddim,10,1.2,,fid,14.04,"),
     r"eta: η must be in \[0, 1\]"),
    (lambda text: text.replace(",mse,ddim,10,0.2,,fid,14.04,", ",mse,ddim,10,0.2,fixedlarge,fid,14.04,"),
     "variance: the ddim sampler's variance is set by η"),
    (lambda text: text.replace(",mse,ancestral,10,,fixedlarge,fid,367.43,", ",mse,,10,,,fid,367.43,"),
     "steps given without a sampler"),
    (lambda text: text.replace(",mse,ancestral,10,,fixedlarge,fid,367.43,", ",mse,ancestral,2000,,fixedlarge,fid,367.43,"),
     "S = 2000 is more than the T = 1000"),
])
def test_a_bad_published_file_is_refused_naming_the_line(tmp_path, change, message):
    bad = tmp_path / "published.csv"
    bad.write_text(change(PUBLISHED.read_text()))
    with pytest.raises(ValueError, match=message) as err:
        load_published(bad)
    assert str(bad) in str(err.value)


# ----------------------------------------------------------------------------------------------------------------
# Scaled down


def test_tiny_scale_keeps_the_sweep_and_the_objectives_but_not_the_cost():
    config = apply_scale({**_config("improved_ddpm_schedules"), "scale": "tiny"})
    assert config["name"] == "improved-ddpm-schedules-tiny" and config["paper_sweep"] == "improved-ddpm-schedules"
    assert expand_sweep(config) == expand_sweep(_config("improved_ddpm_schedules"))
    assert config["dataset"]["name"] == "digits" and config["train"]["preset"] == "tiny"
    assert config["train"]["steps"] < 100 and config["train"]["lr"] == 1e-4 and config["train"]["schedule_rescale"]
    full = apply_scale({**_config("improved_ddpm_schedules"), "scale": "full"})
    assert full["name"] == "improved-ddpm-schedules" and full["train"]["steps"] == 500000
    with pytest.raises(ValueError, match="unknown scale 'huge'"):
        apply_scale({**_config("ddpm_table1"), "scale": "huge"})


def _lsun_config(tmp_path: Path, name: str = "ddpm_lsun") -> Path:
    """The LSUN config pointed at a small folder of images (LSUN itself is not downloadable)."""
    for i in range(4):
        (tmp_path / "lsun").mkdir(exist_ok=True)
        Image.new("RGB", (300, 256), (i * 40, 80, 120)).save(tmp_path / "lsun" / f"{i}.png")
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    config["dataset"]["path"] = str(tmp_path / "lsun")
    path = tmp_path / "lsun.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("name, settings, points, sample_shards, nll_shards, snapshots, nll_train_shards, "
                         "reconstructions", [
    ("ddpm_table1", 2, 1, 10, 10, 7, 50, 0),  # FID every 100k of 800k steps; bits/dim on the 50,000 train images too
    ("ddpm_table2", 6, 1, 10, 10, 7, 0, 0),
    ("improved_ddpm_schedules", 6, 1, 10, 10, 0, 0, 0),  # its six published rows
    ("ddpm_lsun", 1, 9, 50, 4, 5, 0, 0),  # its own sampler, and DDIM Table 3's 8 points
    ("ddim_table1", 1, 29, 10, 10, 0, 0, 7),  # 1 training, DDIM Table 1's 25 points and DPM-Solver++'s 4, Table 2's 7 S
])
def test_dry_run_of_each_paper_config_full_and_tiny(tmp_path, name, settings, points, sample_shards, nll_shards,
                                                     snapshots, nll_train_shards, reconstructions):
    config = _lsun_config(tmp_path) if name == "ddpm_lsun" else CONFIGS / f"{name}.yaml"
    full = job_counts(tmp_path / "full", config)
    assert (full["train"], full["sample"], full["nll"]) == (settings, settings * points * sample_shards,
                                                            settings * nll_shards)
    assert full["fid_is"] == full["gather_samples"] == settings * points and full["gather_nll"] == settings
    assert full["prepare_data"] == full["mlflow_init"] == full["report"] == 1 and full["baseline"] == 2
    assert "train_classifier" not in full  # the Inception extractor
    # FID over training: each snapshot sampled in as many shards as the final checkpoint, gathered and scored
    assert full.get("sample_snapshot", 0) == settings * snapshots * sample_shards
    assert full.get("gather_snapshot_samples", 0) == full.get("fid_snapshot", 0) == settings * snapshots
    assert full.get("nll_train", 0) == settings * nll_train_shards
    assert full.get("gather_nll_train", 0) == (settings if nll_train_shards else 0)
    assert full.get("reconstruction", 0) == settings * reconstructions  # one job per setting and S, all test images

    tiny = job_counts(tmp_path / "tiny", config, "--config", "scale=tiny")
    assert (tiny["train"], tiny["sample"], tiny["nll"]) == (settings, settings * points, settings)  # one shard each
    assert tiny.get("fid_snapshot", 0) == (settings if snapshots else 0)  # one snapshot: the code path
    assert tiny.get("nll_train", 0) == (settings if nll_train_shards else 0)
    assert tiny["train_classifier"] == 1  # digits are scored with the classifier
    assert tiny.get("reconstruction", 0) == settings * reconstructions  # every S, on 10 test images


@pytest.mark.parametrize("name, points, sample_shards, nll_shards, nll_train_shards", [
    ("ddpm_cifar10_pretrained", 1, 10, 10, 50),  # DDPM Table 1's L_simple row: IS, FID (train, test), NLL test, train
    ("ddpm_lsun_pretrained", 9, 50, 4, 0),  # DDPM Table 3 and DDIM Table 3's 8 points
])
def test_dry_run_of_published_weights_plans_no_training(tmp_path, name, points, sample_shards, nll_shards,
                                                        nll_train_shards):
    config = _lsun_config(tmp_path, name) if "lsun" in name else CONFIGS / f"{name}.yaml"
    full = job_counts(tmp_path / "full", config)
    assert "train" not in full and full["import_pretrained"] == 1
    assert (full["sample"], full["nll"], full.get("nll_train", 0)) == (points * sample_shards, nll_shards,
                                                                       nll_train_shards)
    assert full["fid_is"] == full["gather_samples"] == points and "fid_snapshot" not in full
    # Scaled down, a Hub id is refused before any job: the tiny run needs a local source of the digits' shape.
    result = snakemake(tmp_path / "tiny", "-n", "--config", "scale=tiny", config=config, check=False)
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "pretrained.source" in said and "local source" in said, said[-2000:]
    # One model is one setting: a sweep of two is refused naming the key.
    result = snakemake(tmp_path / "two", "-n", "--config", "sweep={seed: [0, 1]}", config=config, check=False)
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "'sweep'" in said and "2 settings" in said, said[-2000:]


@pytest.mark.parametrize("name, settings, points", [("iddpm_cifar10_pretrained", 2, 3), ("ddim_celeba_pretrained", 1, 25)])
def test_dry_run_of_other_codes_published_weights_plans_no_training(tmp_path, name, settings, points):
    """improved-diffusion's two CIFAR-10 files (one per setting) and DDIM's CelebA model: imported, never trained;
    every point sampled in 10 shards and scored; their paper sweep has published numbers for every setting."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(stand_ins_for_local_inputs(_config(name), tmp_path)))
    full = job_counts(tmp_path / "full", config)
    assert "train" not in full and full["import_pretrained"] == settings
    assert full["fid_is"] == full["gather_samples"] == settings * points and full["sample"] == settings * points * 10
    assert "fid_snapshot" not in full and full["nll"] == settings * 10
    table = load_published(PUBLISHED)
    rows = table[table["sweep"] == _config(name)["paper_sweep"]]
    for setting in expand_sweep(_config(name)):  # a published row (the setting's, or a sampler point's) for each
        axes = pd.Series({key: value for key, value in setting.axes().items() if key != "seed"})
        assert rows[list(axes.index)].eq(axes).all(axis=1).any(), setting.name
    # Another sweep than the files': refused naming the key (the mapping names other settings; one file, one setting)
    result = snakemake(tmp_path / "other", "-n", "--config", "sweep={seed: [0, 1]}", config=config, check=False)
    said = result.stdout + result.stderr
    expected = "'pretrained.source'" if settings > 1 else "'sweep'"
    assert result.returncode != 0 and expected in said, said[-2000:]


def test_each_published_config_names_a_paper_sweep_with_published_numbers():
    table = load_published(PUBLISHED)
    for name in PRETRAINED_CONFIGS:
        config = _config(name)
        assert config["pretrained"]["source"].startswith("google/ddpm-")
        setting = expand_sweep(config)[0].axes()
        assert published_for(table, config["paper_sweep"], setting), (name, config["paper_sweep"], setting)


# ----------------------------------------------------------------------------------------------------------------
# The report beside the paper


def _scored_run(folder: Path, fid: float, is_mean: float, is_std: float, bpd: float, **extra) -> Path:
    folder.mkdir(parents=True)
    scores = {"fid": fid, "is_mean": is_mean, "is_std": is_std, "kid_mean": 0.01, "precision": 0.5, "recall": 0.5,
              "num_samples": 50000, "extractor": "inception-v3-compat", **extra}
    write_point_scores(folder, scores)
    (folder / "nll.json").write_text(json.dumps({"bpd": bpd, "bpd_stderr": 0.01, "num_images": 10000,
                                                 "decoder": "official"}))
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 0.1}) + "\n")
    return folder


def test_paper_table_puts_the_published_numbers_beside_the_measured_ones(tmp_path):
    runs = record_settings({
        "linear-T1000-eps-fixedlarge-mse-s0": _scored_run(tmp_path / "a", 4.0, 9.0, 0.2, 3.80),
        "linear-T1000-eps-fixedlarge-mse-s1": _scored_run(tmp_path / "b", 5.0, 9.2, 0.1, 3.90),
        "linear-T1000-xprev-fixedlarge-mse-s0": _scored_run(tmp_path / "c", 300.0, 2.0, 0.05, 7.0),
    })
    baseline = tmp_path / "gaussian.json"
    baseline.write_text(json.dumps({"fid": 400.0, "is_mean": 1.5, "is_std": 0.1, "kid_mean": 0.3, "precision": 0.0,
                                    "recall": 0.0, "num_samples": 500, "extractor": "inception-v3-compat"}))
    table = paper_table(build_table(runs, {"gaussian baseline": baseline}), load_published(PUBLISHED), "ddpm-table2")
    assert list(table["mean_type"]) == ["eps", "xprev"] and list(table["seeds"]) == [2, 1]
    lsimple, xprev = table.iloc[0], table.iloc[1]
    assert lsimple["FID"] == pytest.approx(4.5) and lsimple["FID ±"] == pytest.approx(0.5 ** 0.5)
    assert (lsimple["FID (paper)"], lsimple["IS (paper)"], lsimple["IS ± (paper)"]) == (3.17, 9.46, 0.11)
    assert lsimple["FID Δ"] == pytest.approx(4.5 - 3.17) and lsimple["IS Δ"] == pytest.approx(9.1 - 9.46)
    assert pd.isna(lsimple["bits/dim (paper)"]) and pd.isna(lsimple["bits/dim Δ"])  # Table 2 has no NLL column
    assert lsimple["bits/dim"] == pytest.approx(3.85) and lsimple["source"] == "Ho et al. 2020, Table 2"
    assert (lsimple["samples"], lsimple["extractor"]) == (50000, "inception-v3-compat")
    assert lsimple["not comparable"] == ""  # as the paper measured: 50,000 samples, Inception
    assert xprev["IS ±"] == 0.05  # one seed: torch-fidelity's spread over splits, as the paper's
    assert "unstable" in xprev["paper note"] and pd.isna(xprev["FID (paper)"])
    assert "gaussian baseline" not in set(table.get("setting", []))
    assert "FID test" not in table and "bits/dim train" not in table  # neither measured here nor in Table 2

    runs = record_settings({"linear-T1000-eps-fixedlarge-mse-s0": _scored_run(tmp_path / "d", 4.0, 9.0, 0.2, 3.80, fid_test=6.0)})
    table1 = paper_table(build_table(runs, {}), load_published(PUBLISHED), "ddpm-table1")
    assert (table1["FID test"].iloc[0], table1["FID test (paper)"].iloc[0]) == (6.0, 5.24)
    assert table1["FID test Δ"].iloc[0] == pytest.approx(6.0 - 5.24)
    assert table1["bits/dim (paper)"].iloc[0] == 3.75 and table1["source"].iloc[0] == "Ho et al. 2020, Table 1"
    assert table1["bits/dim Δ"].iloc[0] == pytest.approx(3.80 - 3.75)

    # Measured under other conditions: no Δ, and the row says which columns and why.
    fewer = _scored_run(tmp_path / "e", 4.0, 9.0, 0.2, 3.80, fid_test=6.0, num_samples=1000)
    (fewer / "nll.json").write_text(json.dumps({"bpd": 3.8, "bpd_stderr": 0.01, "num_images": 500,
                                                "decoder": "official"}))
    table1 = paper_table(build_table(record_settings({"linear-T1000-eps-fixedlarge-mse-s0": fewer}), {}),
                         load_published(PUBLISHED), "ddpm-table1")
    row = table1.iloc[0]
    assert all(pd.isna(row[f"{label} Δ"]) for label in ("IS", "FID", "FID test", "bits/dim"))
    assert row["FID (paper)"] == 3.17 and row["bits/dim (paper)"] == 3.75  # still beside, marked
    assert row["not comparable"] == ("IS, FID, FID test: 1,000 samples (paper: 50,000); "
                                     "bits/dim: 500 images (paper: 10,000)")
    assert row["FID against"] == "train split"
    foreign = {"stats": "/stats/fid_stats_cifar10_train.npz", "npz_sha256": "ab" * 32, "origin": "foreign",
               "split": None, "num_images": None}
    runs = record_settings({"linear-T1000-eps-fixedlarge-mse-s0": _scored_run(tmp_path / "f", 4.0, 9.0, 0.2, 3.8,
                                                                              fid_reference=foreign)})
    table1 = paper_table(build_table(runs, {}), load_published(PUBLISHED), "ddpm-table1")
    assert table1["FID against"].iloc[0] == f"foreign statistics fid_stats_cifar10_train.npz ({'ab' * 6})"


def test_a_number_measured_off_the_papers_protocol_is_marked_with_its_reason(tmp_path):
    """LSUN (DDPM Table 3, DDIM Table 3): FID against StyleGAN2's fid50k of StyleGAN-prepared images; bits/dim with
    the papers' decoder. Measured otherwise: no Δ, and the reason in `not comparable`."""
    from ddpm.report.tables import samplers_table

    lsun = "linear-T1000-eps-fixedsmall-mse-s0"
    as_paper = {"reference_images": 50000, "reference_preprocess": "stylegan"}
    runs = record_settings({lsun: _scored_run(tmp_path / "a", 8.0, 1.0, 0.1, 3.0, **as_paper)})
    row = paper_table(build_table(runs, {}), load_published(PUBLISHED), "ddpm-lsun-church").iloc[0]
    assert row["FID Δ"] == pytest.approx(8.0 - 7.89) and row["not comparable"] == ""
    assert (row["reference images"], row["bits/dim decoder"]) == (50000, "official")
    for changed, reason in (({"reference_images": 126227}, "reference of 126,227 real images (paper: 50,000)"),
                            ({"reference_preprocess": "resize-crop"}, "images prepared resize-crop (paper: stylegan)"),
                            ({"reference_preprocess": None}, "images prepared otherwise (paper: stylegan)")):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        runs = record_settings({lsun: _scored_run(folder, 8.0, 1.0, 0.1, 3.0, **{**as_paper, **changed})})
        row = paper_table(build_table(runs, {}), load_published(PUBLISHED), "ddpm-lsun-church").iloc[0]
        assert pd.isna(row["FID Δ"]) and row["not comparable"] == f"FID: {reason}", row["not comparable"]
        point = SamplerPoint("ddim", 10, "uniform", eta=0.0, clip=False)
        write_point_scores(folder, {"fid": 20.0, "num_samples": 50000, "extractor": "inception-v3-compat",
                                    **as_paper, **changed}, point)
        by_sampler = samplers_table(runs, [point.name], load_published(PUBLISHED), "ddpm-lsun-church")
        assert by_sampler["S=10 paper"].iloc[0] == 19.45 and by_sampler["not comparable"].iloc[0] == reason
    # CIFAR-10 (Table 1): the whole train split is the paper's 50,000; no preprocessing asked for
    runs = record_settings({"linear-T1000-eps-fixedlarge-mse-s0": _scored_run(tmp_path / "c", 4.0, 9.0, 0.2, 3.8,
                                                                              reference_images=50000)})
    row = paper_table(build_table(runs, {}), load_published(PUBLISHED), "ddpm-table1").iloc[0]
    assert row["not comparable"] == "" and row["bits/dim Δ"] == pytest.approx(3.8 - 3.75)
    nll = json.loads((tmp_path / "c" / "nll.json").read_text())
    (tmp_path / "c" / "nll.json").write_text(json.dumps({**nll, "decoder": "exact"}))
    row = paper_table(build_table(runs, {}), load_published(PUBLISHED), "ddpm-table1").iloc[0]
    assert pd.isna(row["bits/dim Δ"]) and row["bits/dim decoder"] == "exact"
    assert row["not comparable"].startswith("bits/dim, bits/dim train: exact decoder (paper: its code's tanh")


# ----------------------------------------------------------------------------------------------------------------
# Every paper config, scaled down, end to end


def _run_tiny(workdir: Path, names: list[str]) -> Path:
    """Configs ``names`` with scale=tiny, one after the other in ``workdir``, as a user's would run (they share the
    prepared digits, the classifier and the MLflow store)."""
    for name in names:
        overrides = TINY_OVERRIDES.get(name, [])
        if name == "ddpm_cifar10_pretrained":
            source = workdir / "published" / "ddpm-tiny-digits"
            save_diffusers_folder(source, *TINY_SOURCE)
            overrides = [f"pretrained={{source: {source}}}"]
        elif name in FOREIGN_WEIGHTS_CONFIGS:
            overrides = overrides + [_foreign_weights(workdir / "published", name)]
        snakemake(workdir, "--cores", "2", "--config", "scale=tiny", *overrides, config=CONFIGS / f"{name}.yaml")
    return workdir


def _foreign_weights(folder: Path, name: str) -> str:
    """Stand-ins at the digits' shape for the published files of config ``name``, in their code's layout (an
    improved-diffusion .pt per setting; ermongroup/ddim's ckpt.pth), and the ``pretrained`` override naming them."""
    from peer_layouts import DDPM_TF_NET, ddim_checkpoint, diffusers_net, improved_state

    settings = [s.name for s in expand_sweep(_config(name))]
    if name == "iddpm_cifar10_pretrained":
        sources = {}
        for seed, setting in enumerate(settings):
            sources[setting] = folder / f"{setting}.pt"
            torch.save(improved_state(diffusers_net(folder / f"{setting}-diffusers", TINY_IMPROVED_NET, seed), heads=4),
                       sources[setting])
        mapping = ", ".join(f"{setting}: {path}" for setting, path in sources.items())
        return f"pretrained={{source: {{{mapping}}}, flags: '{TINY_IMPROVED_FLAGS}'}}"
    net = {**DDPM_TF_NET, **{k: TINY_SOURCE[0][k] for k in ("block_out_channels", "down_block_types", "up_block_types",
                                                             "layers_per_block", "sample_size", "in_channels",
                                                             "out_channels")}}
    source = folder / "ddim-celeba" / "ckpt.pth"
    source.parent.mkdir(parents=True)
    ddim_checkpoint(source, diffusers_net(folder / "raw", net, 0), diffusers_net(folder / "ema", net, 1))
    return f"pretrained={{source: {source}}}"


def check_paper_config_scaled_down(workdir: Path, name: str) -> None:
    """Config ``name``'s scaled-down run in ``workdir``: its table in the paper's layout with the papers' numbers
    beside the measured ones, FID over training, the figures."""
    config = _config(name)
    table = pd.read_csv(workdir / "results" / "tables" / f"{config['name']}-tiny-paper.csv")
    settings = [s.axes() for s in expand_sweep(config)]
    assert [tuple(row) for row in table[["schedule", "T", "mean_type", "var_type", "loss_type"]].itertuples(index=False)] \
        == [(s["schedule"], s["T"], s["mean_type"], s["var_type"], s["loss_type"]) for s in settings]
    measured = ("IS", "FID", *(("FID test",) if config["evaluate"].get("fid_test", True) else ()), "bits/dim",
                *(("bits/dim train",) if config["evaluate"].get("nll_train_images") else ()))
    for label in measured:
        assert table[label].map(math.isfinite).all(), (label, table[label])
        assert f"{label} (paper)" in table.columns and table[f"{label} Δ"].isna().all()  # not comparable
    published_beside = table[[f"{label} (paper)" for label in measured]].notna().any(axis=1)
    assert published_beside.any() and (table["not comparable"].fillna("") != "").eq(published_beside).all()
    assert table.loc[published_beside, "not comparable"].str.contains("scaled down").all()
    curve = pd.read_csv(workdir / "results" / "tables" / f"{config['name']}-tiny-fid-over-training.csv")
    snapshot_steps = [20] if config.get("fid_over_training", {}).get("steps") else []
    for setting in expand_sweep(config):  # the snapshots (tiny: one, halfway) and the final checkpoint, all scored
        points = curve[curve["setting"] == setting.name]
        assert list(points["step"]) == [*snapshot_steps, 40] and points["FID [classifier]"].map(math.isfinite).all()
    assert set(table["min-FID step"].astype(str)) <= {str(step) for step in (*snapshot_steps, 40)}
    assert (table["samples"] == TINY_SAMPLES).all() and (table["extractor"] == "classifier").all()
    scores = [json.loads(p.read_text()) for p in (workdir / "results" / "runs" / f"{config['name']}-tiny").glob(
        "*/samplers/*/fid_is.json")]
    measured_scores = [s for s in scores if "fid" in s]  # not those of a setting that diverged (Table 2's unstable)
    assert len(scores) >= len(settings) and measured_scores
    assert all(s["bootstrap_rounds"] == 10 and s["fid_se"] > 0 for s in measured_scores)  # scale tiny: 10 rounds
    published = load_published(PUBLISHED)
    filled = 0
    for row, setting in zip(table.to_dict("records"), settings):
        paper = published_for(published, config["name"], setting)
        for label, metric in (("IS", "is"), ("FID", "fid"), ("FID test", "fid_test"), ("bits/dim", "bpd"),
                              ("bits/dim train", "bpd_train")):
            if label not in table:
                assert metric not in {k for k in paper}, (setting, metric)  # left out only where nothing is published
                continue
            expected = paper.get(metric, {}).get("value")
            found = row[f"{label} (paper)"]
            assert (pd.isna(found) if expected is None else found == expected), (setting, label, found, expected)
            filled += expected is not None
        assert ("unstable" in str(row["paper note"])) == ("unstable" in paper)
    assert filled > 0  # every paper config has published numbers beside some of its rows
    runs = workdir / "results" / "runs" / f"{config['name']}-tiny"
    first_point = expand_sampling(apply_scale({**config, "scale": "tiny"}))[0].name  # the same with the override
    for name in (s.name for s in expand_sweep(config)):
        for figure in ("progressive", "interpolation"):
            assert (runs / name / f"{figure}.png").is_file(), (name, figure)
        assert (runs / name / "samplers" / first_point / "samples.png").is_file(), name
    for figure in ("loss", "rate-distortion", "schedules", "fid-over-training"):
        assert (workdir / "results" / "figures" / f"{config['name']}-tiny-{figure}.png").is_file()
    markdown = (workdir / "results" / "tables" / f"{config['name']}-tiny-paper.md").read_text()
    assert "FID (paper)" in markdown and all(f"| {v:.4g} |" in markdown for v in table["FID (paper)"].dropna())


def check_published_weights_scaled_down_fill_table1_without_training(workdir: Path) -> None:
    """config/ddpm_cifar10_pretrained.yaml on a tiny imported checkpoint: imported, not trained; sampled and scored
    as a trained setting; DDPM Table 1's L_simple numbers beside the measured ones, each marked not comparable."""
    results = workdir / "results"
    run = results / "runs" / "ddpm-cifar10-pretrained-tiny" / "linear-T1000-eps-fixedlarge-mse-s0"
    assert (results / "logs" / run.parent.name / "import" / f"{run.name}.log").is_file()
    assert not (results / "logs" / run.parent.name / "train").exists()  # ddpm-table1-tiny trained the same name
    assert (run / "metrics.jsonl").read_text() == "" and not (run / "resume.pt").exists()  # nothing trained here
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["source"]["format"] == "diffusers" and state["unet"]["downsample_padding"] == "same"
    table = pd.read_csv(results / "tables" / "ddpm-cifar10-pretrained-tiny-paper.csv")
    assert len(table) == 1 and table["source"].iloc[0] == "Ho et al. 2020, Table 1"
    paper = {"IS": 9.46, "FID": 3.17, "FID test": 5.24, "bits/dim": 3.75, "bits/dim train": 3.72}
    for label, value in paper.items():
        assert math.isfinite(table[label].iloc[0]) and table[f"{label} (paper)"].iloc[0] == value, label
        assert pd.isna(table[f"{label} Δ"].iloc[0]), label
    marks = table["not comparable"].iloc[0]
    assert marks.startswith("IS, FID test: scaled down") and f"{TINY_SAMPLES} samples (paper: 50,000)" in marks
    assert "; FID: scaled down" in marks and "reference of 1,497 real images (paper: 50,000)" in marks
    assert "; bits/dim: scaled down" in marks and f"{TINY_NLL_IMAGES} images (paper: 10,000)" in marks
    assert "; bits/dim train: scaled down" in marks and f"{TINY_NLL_IMAGES} images (paper: 50,000)" in marks
    assert table["bits/dim decoder"].iloc[0] == "official" and table["reference images"].iloc[0] == 1497
    for figure in ("progressive", "interpolation"):
        assert (run / f"{figure}.png").is_file()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddpm-cifar10-pretrained-tiny")
    (setting_run,) = client.search_runs([experiment.experiment_id], "tags.`ddpm.kind` = 'setting'")
    assert setting_run.data.tags["ddpm.imported"] == "diffusers" and setting_run.info.status == "FINISHED"
    assert "bpd" in setting_run.data.metrics and "fid" not in setting_run.data.metrics  # a score lives on one run
    points = client.search_runs([experiment.experiment_id], "tags.`ddpm.kind` = 'sampler'")
    assert points and all("fid" in r.data.metrics and r.data.tags["mlflow.parentRunId"] == setting_run.info.run_id
                          for r in points)
    assert setting_run.data.params["source_format"] == "diffusers"


def check_ddim_table1_scaled_down_fills_the_samplers_table_beside_the_published(workdir: Path) -> None:
    """DDIM Table 1's 25 points from the one training: measured FID and time per image in every cell, the paper's
    number beside each (no Δ: a scaled-down run is not comparable), and the figure of FID against S. DPM-Solver++'s
    row beside them (not in the paper: no published number) at its four S."""
    full = pd.read_csv(workdir / "results" / "tables" / "ddim-table1-tiny-samplers.csv")
    assert list(full["sampler"]) == ["σ̂", "η = 0.0", "η = 0.2", "η = 0.5", "η = 1.0", "dpm-solver++"]
    solver = full[full["sampler"] == "dpm-solver++"].iloc[0]
    assert solver["skip"] == "linspace" and not solver["clip"] and pd.isna(solver["S=1000 FID"])
    for S in (10, 20, 50, 100):
        assert math.isfinite(solver[f"S={S} FID"]) and pd.isna(solver[f"S={S} paper"]), S
    table = full[full["sampler"] != "dpm-solver++"]
    assert set(table["skip"]) == {"quadratic"} and list(table["clip"]) == [True, False, False, False, False]
    for S in (10, 20, 50, 100, 1000):
        assert table[f"S={S} FID"].map(math.isfinite).all(), S
        assert table[f"S={S} paper"].notna().all() and table[f"S={S} Δ"].isna().all(), S
        assert (table[f"S={S} s/image"] > 0).all(), S
    assert (table["S=10 s/image"] < table["S=1000 s/image"]).all()  # 10 network calls per image against 1000
    assert set(table["not comparable"]) == {"scaled down (digits, a CPU-sized network, a few steps), "
                                            f"{TINY_SAMPLES} samples (paper: 50,000), classifier features (paper: Inception), "
                                            "reference of 1,497 real images (paper: 50,000)"}
    cells = table.set_index("sampler")  # the paper's numbers (DDIM, Table 1, CIFAR-10)
    assert [cells.loc["σ̂", f"S={S} paper"] for S in (10, 20, 50, 100, 1000)] == [367.43, 133.37, 32.72, 9.99, 3.17]
    assert [cells.loc["η = 0.0", f"S={S} paper"] for S in (10, 20, 50, 100, 1000)] == [13.36, 6.84, 4.67, 4.16, 4.04]
    assert cells.loc["η = 1.0", "S=20 paper"] == 18.36 and cells.loc["η = 0.5", "S=50 paper"] == 5.25
    assert "S=10 paper" in (workdir / "results" / "tables" / "ddim-table1-tiny-samplers.md").read_text()
    assert (workdir / "results" / "figures" / "ddim-table1-tiny-samplers.png").is_file()
    main = pd.read_csv(workdir / "results" / "tables" / "ddim-table1-tiny.csv")
    rows = main[main["setting"] == "linear-T1000-eps-fixedlarge-mse-s0"]
    assert len(rows) == 29 and sorted(set(rows["network evaluations"])) == [10, 20, 49, 50, 96, 100, 1000]


def check_ddim_table2_scaled_down_fills_the_reconstruction_table_beside_the_published(workdir: Path) -> None:
    """DDIM Table 2 from the same training: the reconstruction error of the tiny scale's test images at each of the 7
    S, the paper's number beside each (no Δ: scaled down, and a few images of 10,000), in the table and in MLflow
    against S."""
    from mlflow.tracking import MlflowClient

    from ddpm.paper import SCALED_DOWN
    from ddpm.samplers import timestep_subsequence

    results = workdir / "results"
    table = pd.read_csv(results / "tables" / "ddim-table1-tiny-reconstruction.csv")
    steps = [10, 20, 50, 100, 200, 500, 1000]
    assert list(table["S"]) == steps and set(table["T"]) == {1000} and (table["seeds"] == 1).all()
    assert table["reconstruction MSE"].map(math.isfinite).all() and (table["reconstruction MSE"] > 0).all()
    assert table["reconstruction MSE ±"].map(math.isfinite).all()
    assert list(table["reconstruction MSE (paper)"]) == [0.014, 0.0065, 0.0023, 0.0009, 0.0004, 0.0001, 0.0001]
    assert table["reconstruction MSE Δ"].isna().all()
    assert set(table["not comparable"]) == {f"{SCALED_DOWN}, {TINY_NLL_IMAGES} images (paper: 10,000)"}
    assert set(table["source"]) == {"Song et al. 2020 (DDIM), Table 2"} and set(table["status"]) == {"finished"}
    assert set(table["skip"]) == {"quadratic"} and (table["images"] == TINY_NLL_IMAGES).all()
    assert list(table["network evaluations"]) == [2 * len(timestep_subsequence(1000, S, "quadratic")) for S in steps]
    assert "reconstruction MSE ↓" in (results / "tables" / "ddim-table1-tiny-reconstruction.md").read_text()
    assert (results / "tables" / "html" / "6-ddim-table1-tiny-reconstruction.html").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddim-table1-tiny")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`ddpm.kind` = 'setting'")
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "reconstruction_mse")}
    assert sorted(history) == steps  # the error against S, on the setting's run
    assert [history[S] for S in steps] == pytest.approx(list(table["reconstruction MSE"]), rel=1e-9)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`ddpm.kind` = 'sweep'")
    assert "report/ddim-table1-tiny-reconstruction.csv" in [a.path for a in client.list_artifacts(
        parent.info.run_id, "report")]


def test_samplers_table_lays_the_points_out_as_ddim_table1_with_the_papers_numbers(tmp_path):
    from ddpm.report.tables import samplers_table

    folder = record_settings({"linear-T1000-eps-fixedlarge-mse-s0": tmp_path / "run"})
    run = folder["linear-T1000-eps-fixedlarge-mse-s0"]
    points = [SamplerPoint("ddim", 10, "quadratic", eta=0.0, clip=False),
              SamplerPoint("ddim", 20, "quadratic", eta=0.0, clip=False),
              SamplerPoint("ancestral", 10, "quadratic", variance="fixedlarge")]
    for point, fid in zip(points, (15.0, 7.0, 300.0)):
        write_point_scores(run, {"fid": fid, "num_samples": 50000, "extractor": "inception-v3-compat",
                                 "sampling_images_per_s": 100.0 / point.steps}, point)
    names = [p.name for p in points]
    table = samplers_table(folder, names, load_published(PUBLISHED), "ddim-table1")
    assert list(table["sampler"]) == ["η = 0.0", "σ̂"] and list(table["clip"]) == [False, True]
    eta0, sigma_hat = table.iloc[0], table.iloc[1]
    assert (eta0["S=10 FID"], eta0["S=10 paper"], eta0["S=20 paper"]) == (15.0, 13.36, 6.84)
    assert eta0["S=10 Δ"] == pytest.approx(15.0 - 13.36) and eta0["S=10 s/image"] == pytest.approx(0.1)
    assert (sigma_hat["S=10 paper"], sigma_hat["S=10 Δ"]) == (367.43, pytest.approx(300.0 - 367.43))
    assert pd.isna(sigma_hat["S=20 FID"]) and pd.isna(sigma_hat["S=20 paper"])  # a point not sampled
    assert (eta0["extractor"], eta0["samples"]) == ("inception-v3-compat", 50000)
    assert eta0["not comparable"] == ""  # 50,000 samples, Inception: as the paper measured
    scaled = samplers_table(folder, names, load_published(PUBLISHED), "ddim-table1", scaled_down=True)
    assert scaled["S=10 Δ"].isna().all() and scaled["S=10 paper"].iloc[0] == 13.36
    assert set(scaled["not comparable"]) == {"scaled down (digits, a CPU-sized network, a few steps)"}
    for point, fid in zip(points, (15.0, 7.0, 300.0)):  # fewer samples: marked, no Δ
        write_point_scores(run, {"fid": fid, "num_samples": 5000, "extractor": "inception-v3-compat",
                                 "sampling_images_per_s": 1.0}, point)
    fewer = samplers_table(folder, names, load_published(PUBLISHED), "ddim-table1")
    assert fewer["S=10 Δ"].isna().all() and set(fewer["not comparable"]) == {"5,000 samples (paper: 50,000)"}
    # a point's folder holding another point's sampler.json is refused, naming the file
    (run / "samplers" / names[0] / "sampler.json").write_text(
        (run / "samplers" / names[1] / "sampler.json").read_text())
    with pytest.raises(ValueError, match=f"records the sampler point {names[1]}, but it is in the folder of {names[0]}"):
        samplers_table(folder, names, None, "ddim-table1")


# ----------------------------------------------------------------------------------------------------------------
# Table 4: rate and distortion along the reverse process


def _bound(T: int) -> dict:
    rng = np.random.default_rng(0)
    vb = rng.uniform(0.001, 0.01, T)
    vb[0] = 2.0  # L_0, the decoder's term
    mse = np.linspace(1e-4, 0.5, T)  # x̂_0 gets worse the noisier x_t is
    return {"bpd": 0.01 + vb.sum(), "prior_bpd": 0.01, "vb_per_timestep": vb.tolist(),
            "xstart_mse_per_timestep": mse.tolist(), "num_images": 10, "bpd_stderr": 0.1}


def test_rate_distortion_has_table4s_rows_and_adds_up_to_the_bound():
    nll = _bound(1000)
    table = rate_distortion(nll)
    assert list(table["reverse step"]) == [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100]
    end = table.iloc[0]
    # after all T steps, the rate is the whole bound but the decoder's L_0; the distortion is x̂_0 from x_1
    assert end["rate (bits/dim)"] + nll["vb_per_timestep"][0] == pytest.approx(nll["bpd"], rel=1e-12)
    assert end["distortion (RMSE, 0..255)"] == pytest.approx(np.sqrt(1e-4) * 127.5)
    # after 100 steps the receiver holds x_901: L_T and L_901 … L_999 have been sent
    assert table.iloc[-1]["rate (bits/dim)"] == pytest.approx(0.01 + sum(nll["vb_per_timestep"][901:]))
    assert table.iloc[-1]["distortion (RMSE, 0..255)"] == pytest.approx(np.sqrt(nll["xstart_mse_per_timestep"][900]) * 127.5)
    assert table["rate (bits/dim)"].is_monotonic_decreasing and table["distortion (RMSE, 0..255)"].is_monotonic_increasing


def test_rate_distortion_table_puts_the_papers_rows_beside_its_own(tmp_path):
    run = tmp_path / "linear-T1000-eps-fixedlarge-mse-s0"
    run.mkdir()
    (run / "nll.json").write_text(json.dumps(_bound(1000)))
    published = load_published(PUBLISHED)
    table = rate_distortion_table(record_settings({run.name: run}), published, "ddpm-table1")
    assert len(table) == 10 and set(table["setting"]) == {run.name}
    assert (table.loc[0, "rate (paper)"], table.loc[0, "distortion (paper)"]) == (1.77581, 0.95136)  # the row
    table4 = published[published["table"] == "Table 4"].set_index("metric")["value"]
    for _, row in table.iterrows():  # every row of the paper's Table 4 lands on its own reverse step
        k = row["reverse step"]
        assert row["rate (paper)"] == table4[f"rate_bpd_step{k}"]
        assert row["distortion (paper)"] == table4[f"distortion_rmse_step{k}"]
    # the paper's own rows: fewer reverse steps, fewer bits sent, a worse reconstruction
    assert table["rate (paper)"].is_monotonic_decreasing and table["distortion (paper)"].is_monotonic_increasing


def test_rate_distortion_table_has_no_papers_rows_for_another_T(tmp_path):
    run = tmp_path / "linear-T200-eps-fixedlarge-mse-s0"
    run.mkdir()
    (run / "nll.json").write_text(json.dumps(_bound(200)))
    table = rate_distortion_table(record_settings({run.name: run}), load_published(PUBLISHED), "ddpm-table1")
    assert list(table["reverse step"]) == list(range(200, 0, -20))
    assert table[["rate (paper)", "distortion (paper)"]].isna().all().all()


def check_fid_over_training_and_train_bits_per_dim_reach_mlflow(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddpm-table1-tiny")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("ddpm.kind") == "setting"]
    assert sorted(r.info.run_name for r in runs) == sorted(s.name for s in expand_sweep(_config("ddpm_table1")))
    for run in runs:  # a curve to compare in the MLflow UI: the snapshot, then the final checkpoint
        history = client.get_metric_history(run.info.run_id, "fid_over_training")
        assert sorted(m.step for m in history) == [20, 40]
        final = next(m.value for m in history if m.step == 40)
        # the plain name is the final checkpoint's, on the run of its one sampler point
        (point,) = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
        assert point.data.metrics["fid"] == pytest.approx(final) and "fid" not in run.data.metrics
        assert math.isfinite(run.data.metrics["bpd_train"]) and math.isfinite(run.data.metrics["bpd"])


def test_rendered_tables_say_which_way_is_better_and_drop_empty_columns_where_asked(tmp_path):
    """The Markdown, LaTeX and HTML tables carry ↓ / ↑ beside each metric and the legend; the CSV keeps the bare
    names; a table written with drop_empty leaves out the columns no row fills (the CSV keeps them)."""
    from ddpm.report.render import display_header, write_tables

    assert display_header("FID [classifier]") == "FID ↓ [classifier]"
    assert display_header("IS [inception-v3-compat]") == "IS ↑ [inception-v3-compat]"
    assert display_header("KID ×10³ [classifier]") == "KID ×10³ ↓ [classifier]"
    assert display_header("S=10 FID") == "S=10 FID ↓" and display_header("S=10 s/image") == "S=10 s/image ↓"
    assert display_header("bits/dim train") == "bits/dim train ↓" and display_header("recall [x]") == "recall ↑ [x]"
    for column in ("FID ± [classifier]", "FID Δ", "FID (paper)", "bits/dim stderr", "setting", "samples"):
        assert display_header(column) == column
    table = pd.DataFrame({"setting": ["a", "b"], "FID [classifier]": [3.0, 4.5], "FID Δ": [None, None],
                          "note": ["", ""]})
    csv, md, tex, html = write_tables(table, tmp_path / "t", caption="t: two settings", html=tmp_path / "t.html",
                                      drop_empty=True)
    assert list(pd.read_csv(csv).columns) == ["setting", "FID [classifier]", "FID Δ", "note"]
    assert md.read_text().splitlines()[:5] == ["t: two settings", "", md.read_text().splitlines()[2], "",
                                              "| setting | FID ↓ [classifier] |"]
    assert "lower is better" in md.read_text().splitlines()[2]
    assert "\\caption{t: two settings}" in tex.read_text() and "FID ↓ [classifier]" in tex.read_text()
    page = html.read_text()
    assert "<caption>t: two settings</caption>" in page and "<th>FID ↓ [classifier]</th>" in page
    assert "<td class=\"n\">4.5</td>" in page and "<td>a</td>" in page and "FID Δ" not in page


def _imported_not_trained(results: Path, sweep: str, setting: str, fmt: str) -> dict:
    """A setting of ``sweep`` (scaled down) was imported from ``fmt``'s file, not trained; its checkpoint."""
    run = results / "runs" / sweep / setting
    assert (results / "logs" / sweep / "import" / f"{setting}.log").is_file()
    assert not (results / "logs" / sweep / "train").exists()
    assert (run / "metrics.jsonl").read_text() == "" and not (run / "resume.pt").exists()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["source"]["format"] == fmt
    return state


def check_improved_ddpm_weights_scaled_down(workdir: Path) -> None:
    """config/iddpm_cifar10_pretrained.yaml on improved-diffusion stand-ins: both settings imported (scale-shift
    norm, t·1000/4000, cosine over T = 4000, learned Σ), sampled on all steps and strided on 50, scored; the
    ablation's bits/dim and FID beside the measured ones, each marked not comparable."""
    results = workdir / "results"
    for setting in ("cosine-T4000-eps-learned_range-hybrid-s0", "cosine-T4000-eps-learned_range-kl-s0"):
        state = _imported_not_trained(results, "iddpm-cifar10-pretrained-tiny", setting, "improved-diffusion")
        assert state["unet"]["scale_shift_norm"] and state["unet"]["timestep_scale"] == 0.25
        assert (state["config"]["T"], state["config"]["schedule"]) == (4000, "cosine")
        points = results / "runs" / "iddpm-cifar10-pretrained-tiny" / setting / "samplers"
        assert {p.name for p in points.iterdir()} == {"ancestral-S20-uniform", "ancestral-S50-strided"}  # tiny
    table = pd.read_csv(results / "tables" / "iddpm-cifar10-pretrained-tiny-paper.csv").set_index("loss_type")
    assert list(table.index) == ["hybrid", "kl"]
    assert list(table["FID (paper)"]) == [3.19, 11.47] and list(table["bits/dim (paper)"]) == [3.17, 2.94]
    assert table["FID"].map(math.isfinite).all() and table["bits/dim"].map(math.isfinite).all()
    assert table["FID Δ"].isna().all() and table["not comparable"].str.contains("scaled down").all()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("iddpm-cifar10-pretrained-tiny")
    runs = client.search_runs([experiment.experiment_id], "tags.`ddpm.kind` = 'setting'")
    assert len(runs) == 2 and all(run.data.tags["ddpm.imported"] == "improved-diffusion" for run in runs)
    assert all("improved-diffusion's flags (--flags)" in run.data.tags["ddpm.import_notes"] for run in runs)


def check_ddim_celeba_weights_scaled_down(workdir: Path) -> None:
    """config/ddim_celeba_pretrained.yaml on a ddim ckpt.pth stand-in: its EMA imported (the training weights beside
    them), sampled at σ̂ and η = 0 on S = 10 with uniform skips; DDIM Table 1's CelebA cells beside the measured."""
    results = workdir / "results"
    state = _imported_not_trained(results, "ddim-celeba-pretrained-tiny", "linear-T1000-eps-fixedlarge-mse-s0", "ddim")
    assert state["source"]["weights"] == "ema and raw" and state["unet"]["norm_eps"] == 1e-6
    table = pd.read_csv(results / "tables" / "ddim-celeba-pretrained-tiny-samplers.csv").set_index("sampler")
    assert list(table.index) == ["σ̂", "η = 0.0"] and set(table["skip"]) == {"uniform"}
    assert [table.loc[row, "S=10 paper"] for row in ("σ̂", "η = 0.0")] == [299.71, 17.33]
    assert table["S=10 FID"].map(math.isfinite).all() and table["S=10 Δ"].isna().all()


# ----------------------------------------------------------------------------------------------------------------
# The scaled-down runs: a class each, so that pytest-xdist (--dist loadscope) runs them side by side, each on one
# worker with its class's working directory; a class's configs share that directory.


class TinyRun:
    CONFIGS: list[str] = []

    @pytest.fixture(scope="class")
    def workdir(self, tmp_path_factory) -> Path:
        """The working directory where the class's CONFIGS ran with scale=tiny (4 to 11 minutes a class in the suite
        on this 2-core machine, 2026-12-05, 1eada80)."""
        return _run_tiny(tmp_path_factory.mktemp(type(self).__name__), self.CONFIGS)


class TestTinyDDIMTable1(TinyRun):
    CONFIGS = SAMPLER_CONFIGS

    def test_ddim_table1_scaled_down_fills_the_samplers_table_beside_the_published(self, workdir):
        check_ddim_table1_scaled_down_fills_the_samplers_table_beside_the_published(workdir)

    def test_ddim_table2_scaled_down_fills_the_reconstruction_table_beside_the_published(self, workdir):
        check_ddim_table2_scaled_down_fills_the_reconstruction_table_beside_the_published(workdir)


class TestTinyDDPMTable1(TinyRun):
    CONFIGS = ["ddpm_table1", "ddpm_cifar10_pretrained"]  # the import takes the name ddpm_table1 trained

    def test_runs_scaled_down_with_the_papers_numbers_beside_the_measured(self, workdir):
        check_paper_config_scaled_down(workdir, "ddpm_table1")

    def test_published_weights_scaled_down_fill_table1_without_training(self, workdir):
        check_published_weights_scaled_down_fill_table1_without_training(workdir)

    def test_fid_over_training_and_train_bits_per_dim_reach_mlflow(self, workdir):
        check_fid_over_training_and_train_bits_per_dim_reach_mlflow(workdir)


class TestTinyDDPMTable2AndForeignWeights(TinyRun):
    CONFIGS = ["ddpm_table2", *FOREIGN_WEIGHTS_CONFIGS]  # they share the prepared digits, classifier and baselines

    def test_runs_scaled_down_with_the_papers_numbers_beside_the_measured(self, workdir):
        check_paper_config_scaled_down(workdir, "ddpm_table2")

    def test_improved_ddpm_weights_are_imported_not_trained_and_fill_the_ablation_rows(self, workdir):
        check_improved_ddpm_weights_scaled_down(workdir)

    def test_ddim_celeba_weights_are_imported_not_trained_and_fill_table1s_celeba_cells(self, workdir):
        check_ddim_celeba_weights_scaled_down(workdir)


class TestTinyImprovedDDPMAndLSUN(TinyRun):
    CONFIGS = ["improved_ddpm_schedules", "ddpm_lsun"]

    @pytest.mark.parametrize("name", CONFIGS)
    def test_runs_scaled_down_with_the_papers_numbers_beside_the_measured(self, workdir, name):
        check_paper_config_scaled_down(workdir, name)


def test_every_paper_config_has_its_scaled_down_run():
    """The classes above run every paper and sampler config and the imports of published weights, each once."""
    ran = [name for run in TinyRun.__subclasses__() for name in run.CONFIGS]
    assert sorted(ran) == sorted(PAPER_CONFIGS + SAMPLER_CONFIGS + ["ddpm_cifar10_pretrained"]
                                 + FOREIGN_WEIGHTS_CONFIGS)
