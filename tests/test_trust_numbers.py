"""Nothing wrong passes silently into a number (issue 25): non-finite weights and samples, reference statistics that
are not a covariance, a negative FID, scheduler fields the importer does not implement, a published CSV it cannot
read, and KID on features of another scale than its kernel's. Each is refused before anything is written, naming
the bad thing, or computed as it should be."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_digits

from ddpm.checkpoint import load_checkpoint, save_checkpoint
from ddpm.datasets import load_digits
from ddpm.diffusion import GaussianDiffusion
from ddpm.features import train_classifier
from ddpm.io import save_npz
from ddpm.metrics import KID_GAMMA, extract_features, fid_between, fidelity_metrics, kid_kernel_gamma
from ddpm.paper import load_published
from ddpm.pretrained import import_checkpoint
from ddpm.pretrained.diffusers import (SCHEDULER_FIELDS_FIXED, SCHEDULER_FIELDS_HARMLESS, SCHEDULER_FIELDS_READ,
                                      diffusers_process)
from ddpm.refstats import check_covariance, read_ref_stats
from ddpm.report.render import LEGEND
from ddpm.report.tables import build_table
from ddpm.sample import write_sample_shard
from ddpm.samplers import NonFiniteSamples, SamplerPoint, sample_loop
from ddpm.schedules import make_betas

from conftest import ROOT, record_settings, run_import, save_diffusers_folder, write_point_scores
from test_import import SCHEDULER, SMALL

POINT = SamplerPoint("ancestral", 10)  # ten reverse steps: the checks are per step, not per T


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A small diffusers model imported as this project's checkpoint (random finite weights)."""
    folder = tmp_path_factory.mktemp("diffusers")
    save_diffusers_folder(folder / "model", SMALL, SCHEDULER)
    checkpoint = folder / "run" / "checkpoint.pt"
    import_checkpoint(folder / "model", checkpoint)
    return checkpoint


# ---------------------------------------------------------------------------------------------------------------
# Finite weights and samples


def test_an_imported_diffusers_folder_with_a_nan_weight_is_refused_naming_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    save_diffusers_folder(folder, SMALL, SCHEDULER)
    weights_file = folder / "diffusion_pytorch_model.safetensors"
    weights = load_file(str(weights_file))
    name = "down_blocks.1.resnets.0.conv2.weight"
    weights[name][0, 0, 1, 1] = float("nan")
    save_file(weights, str(weights_file))
    out = tmp_path / "run" / "checkpoint.pt"
    result = run_import(folder, "--out", out, check=False)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert name in message and "1 non-finite values" in message, message
    assert not out.parent.exists()


def test_a_checkpoint_with_a_nan_weight_is_refused_before_sampling(tmp_path, imported):
    state = load_checkpoint(imported)
    name = "mid.1.q.weight"
    state["ema"][name][3, 2] = float("inf")
    checkpoint = tmp_path / "checkpoint.pt"
    save_checkpoint(checkpoint, state)
    out = tmp_path / "samples.npz"
    with pytest.raises(ValueError, match=re.escape(f"{checkpoint} (EMA weights): the weight tensor {name} holds 1 "
                                                   f"non-finite values")) as err:
        write_sample_shard(checkpoint, out, count=2, batch_size=2, point=POINT, progress=False)
    assert "nothing is sampled or scored" in str(err.value)
    assert not out.exists()
    state["ema"][name][3, 2] = 0.0  # the same checkpoint, finite: sampled
    save_checkpoint(checkpoint, state)
    assert write_sample_shard(checkpoint, out, count=2, batch_size=2, point=POINT, progress=False).shape == (2, 3, 8, 8)


class _NanFrom(torch.nn.Module):
    """A network whose output for batch position ``position`` turns NaN from timestep ``timestep`` down (an inf would
    be clipped with x̂_0)."""

    def __init__(self, model, *, timestep: int, position: int):
        super().__init__()
        self.model, self.timestep, self.position = model, timestep, position

    def forward(self, x, t, **kwargs):
        out = self.model(x, t, **kwargs)
        if t[self.position] <= self.timestep:
            out = out.clone()
            out[self.position] = float("nan")
        return out


def test_a_sampled_batch_that_turns_non_finite_is_refused_with_the_step_and_the_samples(tmp_path, imported,
                                                                                        monkeypatch):
    diffusion = GaussianDiffusion(make_betas("linear", 100), "eps", "fixedlarge", "mse")
    network = _NanFrom(lambda x, t: torch.zeros_like(x), timestep=40, position=1)
    with pytest.raises(NonFiniteSamples) as err:  # the subsequence 0, 10, …, 90: inf from timestep 40 on
        sample_loop(network, diffusion, POINT, (3, 1, 4, 4), [torch.Generator().manual_seed(i) for i in range(3)])
    assert (err.value.timestep, err.value.positions) == (40, [1])
    assert "at reverse step 6 of 10 (timestep 40), first in batch positions 1:" in str(err.value)

    import ddpm.sample

    loaded = ddpm.sample.load_for_sampling
    monkeypatch.setattr(ddpm.sample, "load_for_sampling", lambda *args, **kwargs: (
        lambda model, diffusion, state: (_NanFrom(model, timestep=300, position=2), diffusion, state))(
        *loaded(*args, **kwargs)))
    out = tmp_path / "samples.npz"
    with pytest.raises(ValueError, match=r"reverse step 7 of 10 \(timestep 300\), first in seed 0's samples 6:"):
        write_sample_shard(imported, out, start=4, count=3, batch_size=3, point=POINT, progress=False)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# Reference statistics and FID


def _covariance(d: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    features = np.random.default_rng(seed).standard_normal((n, d))
    return features.mean(axis=0), np.cov(features, rowvar=False)


@pytest.mark.parametrize("spoil, complaint", [
    (lambda sigma: sigma - 2 * np.eye(len(sigma)) * np.abs(sigma).max(), "is not positive semi-definite"),
    (lambda sigma: sigma + np.triu(np.full_like(sigma, 0.01), 1), "is not symmetric"),
])
def test_foreign_statistics_whose_sigma_is_not_a_covariance_are_refused_naming_the_file(tmp_path, spoil, complaint):
    mu, sigma = _covariance(16, 100)
    path = tmp_path / "foreign.npz"
    save_npz(path, mu=mu, sigma=spoil(sigma))
    with pytest.raises(ValueError, match=complaint) as err:
        read_ref_stats(path, extractor="inception-v3-compat", resolution=32, split="train", foreign=True)
    assert f"{path}: sigma {complaint}" in str(err.value)


def test_a_covariance_within_rounding_is_accepted():
    """Singular (fewer images than features) and stored in float32: a covariance all the same."""
    _, singular = _covariance(300, 100)
    check_covariance(singular, "singular")
    check_covariance(singular.astype(np.float32).astype(np.float64), "float32")
    check_covariance(np.zeros((4, 4)), "constant features")


def test_a_negative_fid_is_never_returned(tmp_path):
    mu, sigma = _covariance(128, 60)  # singular: FID of it against itself rounds to ~±1e-14
    assert fid_between((mu, sigma), (mu, sigma)) >= 0
    with pytest.raises(ValueError, match=r"FID of the samples \(128 features\) against foreign.npz is -[0-9.e+]+, "
                                         r"below 0 beyond rounding"):
        fid_between((mu, sigma), (mu, -10 * sigma), reference_name="foreign.npz")


# ---------------------------------------------------------------------------------------------------------------
# The importer's scheduler fields


@pytest.mark.parametrize("field, value, complaint", [
    ("thresholding", True, "thresholding = true is not supported"),
    ("rescale_betas_zero_snr", True, "rescale_betas_zero_snr = true is not supported"),
    ("set_alpha_to_one", False, "set_alpha_to_one = false is not supported"),
    ("prediction_type", "v_prediction", "prediction_type 'v_prediction' is not supported"),
    ("beta_schedule", "scaled_linear", "beta_schedule 'scaled_linear' is not a schedule"),
    ("variance_type", "learned", "variance_type 'learned' is not supported"),
    ("clip_sample_range", 2.0, "clip_sample_range = 2.0 is not supported"),
    ("_class_name", "EulerDiscreteScheduler", "_class_name 'EulerDiscreteScheduler' is a scheduler whose fields"),
    ("use_karras_sigmas", True, "unknown scheduler field use_karras_sigmas = True"),
    ("trained_betas", [0.01] * 3, "trained_betas holds 3 values, but num_train_timesteps is 1000"),
])
def test_a_scheduler_field_the_importer_does_not_implement_is_refused_by_name(field, value, complaint):
    with pytest.raises(ValueError, match=f"^scheduler_config.json: {complaint}"):
        diffusers_process({**SCHEDULER, field: value}, "scheduler_config.json")


def test_the_importer_knows_every_field_of_diffusers_ddpm_and_ddim_schedulers_and_the_harmless_ones_pass():
    from diffusers import DDIMScheduler, DDPMScheduler

    known = {*SCHEDULER_FIELDS_READ, *SCHEDULER_FIELDS_FIXED, *SCHEDULER_FIELDS_HARMLESS}
    for scheduler in (DDPMScheduler, DDIMScheduler):
        fields = {key for key in scheduler().config if not key.startswith("_")}
        assert fields <= known, (scheduler.__name__, fields - known)
    plain = diffusers_process(SCHEDULER, "plain")
    harmless = {**DDPMScheduler(**{k: v for k, v in SCHEDULER.items() if not k.startswith("_")}).config,
                "_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "tensor_format": "pt",
                "timestep_spacing": "trailing", "steps_offset": 1, "dynamic_thresholding_ratio": 0.9,
                "sample_max_value": 2.0}
    T, betas, mean_type, var_type, notes = diffusers_process(harmless, "harmless")
    assert (T, mean_type, var_type, notes) == plain[:1] + plain[2:] and np.array_equal(betas, plain[1])
    unclipped = diffusers_process({**SCHEDULER, "clip_sample": False, "clip_sample_range": 3.0}, "unclipped")
    assert "clip_sample: false" in unclipped[-1][0]  # a sampling choice, said in the checkpoint's notes
    ddim = diffusers_process(dict(DDIMScheduler().config), "ddim")
    assert ddim[2:4] == ("eps", "fixedsmall")
    cosine = DDPMScheduler(beta_schedule="squaredcos_cap_v2")  # read: Improved DDPM's cosine, as diffusers has it
    ours = diffusers_process(dict(cosine.config), "cosine")[1]
    np.testing.assert_allclose(ours, cosine.betas.double().numpy(), rtol=1e-5)


def test_the_predict_epsilon_of_older_diffusers_configs_is_read_not_ignored():
    """diffusers 0.7–0.10 wrote ``predict_epsilon`` where later versions write ``prediction_type`` (diffusers 0.42
    ignores the old field): false means the network predicts x_0."""
    assert diffusers_process({**SCHEDULER, "predict_epsilon": True}, "old")[2] == "eps"
    assert diffusers_process({**SCHEDULER, "predict_epsilon": False}, "old")[2] == "xstart"
    with pytest.raises(ValueError, match="old: predict_epsilon true and prediction_type 'sample' disagree"):
        diffusers_process({**SCHEDULER, "predict_epsilon": True, "prediction_type": "sample"}, "old")


def test_ddpm_import_refuses_an_unimplemented_scheduler_field_before_writing(tmp_path):
    folder = tmp_path / "model"
    save_diffusers_folder(folder, SMALL, {**SCHEDULER, "thresholding": True})
    out = tmp_path / "run" / "checkpoint.pt"
    result = run_import(folder, "--out", out, check=False)
    assert result.returncode != 0 and "thresholding = true is not supported" in result.stderr
    assert str(folder / "scheduler_config.json") in result.stderr and not out.parent.exists()


# ---------------------------------------------------------------------------------------------------------------
# Published CSV


@pytest.mark.parametrize("spoil, where", [
    (lambda row: row.replace(",fid,3.17,", ",fid,abc,"), "column value: 'abc' is not a finite number"),
    (lambda row: ",".join(row.split(",")[:10]), "10 fields where the header has 16; the row ends at column steps "
                                                 "(value ''): eta, variance, metric, value, std, note missing"),
    (lambda row: row.replace(",1000,", ",1e3,"), "column T: '1e3' is not an integer"),
])
def test_a_bad_published_row_is_refused_naming_file_line_column_and_value(tmp_path, spoil, where):
    lines = (ROOT / "config" / "published.csv").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if ",fid,3.17," in line)
    lines[row] = spoil(lines[row])
    bad = tmp_path / "published.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as err:
        load_published(bad)
    assert str(err.value).startswith(f"{bad}, line {row + 1}") and where in str(err.value), str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# KID on the classifier's features


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    images, labels = load_digits(), sklearn_digits().target
    path = tmp_path_factory.mktemp("classifier") / "classifier.pt"
    train_classifier(images[:1500], labels[:1500], path, seed=0)
    return path, images[:1500], images[1500:]


def _scaled_classifier(path, out, factor: float):
    """The same classifier with its penultimate features ``factor`` times larger (ReLU is positively homogeneous)."""
    state = torch.load(path, weights_only=True)
    for key in ("fc.weight", "fc.bias"):
        state["state_dict"][key] = state["state_dict"][key] * factor
    state["state_dict"]["head.weight"] = state["state_dict"]["head.weight"] / factor
    torch.save(state, out)
    return out


def test_kid_on_the_classifiers_features_is_readable_and_does_not_depend_on_their_scale(tmp_path, digits_classifier):
    path, train, held_out = digits_classifier
    noise = np.random.default_rng(1).integers(0, 256, size=held_out.shape, dtype=np.uint8)
    options = dict(extractor="classifier", metrics=("kid",))
    real = fidelity_metrics(held_out, train, weights_path=path, **options)
    features = extract_features(train, weights_path=path, **options)["penultimate"]
    assert float(features.pow(2).mean()) > 10  # unnormalised: the cubic kernel with γ = 1/d would give ~1e6
    assert real[KID_GAMMA] == pytest.approx(1 / float(features.double().pow(2).sum(1).mean()), rel=1e-12)
    noisy = fidelity_metrics(noise, train, weights_path=path, **options)
    assert abs(real["kid_mean"]) < 0.1 and real["kid_std"] < 0.1, real  # ×10³: tens, where it read ~10⁵ before
    assert 10 * abs(real["kid_mean"]) < noisy["kid_mean"] < 8, noisy  # γ x·y ≈ 1: kernel values of order (1 + 1)³
    larger = fidelity_metrics(held_out, train, weights_path=_scaled_classifier(path, tmp_path / "x10.pt", 10.0),
                              **options)
    assert larger["kid_mean"] == pytest.approx(real["kid_mean"], rel=1e-3, abs=1e-6)
    assert kid_kernel_gamma("inception-v3-compat", torch.ones(5, 2048)) == 1 / 2048  # torch-fidelity's, unchanged


def test_the_tables_say_how_kid_is_computed_and_hide_a_kid_scored_without_its_scale(tmp_path):
    scores = {"fid": 5.0, "is_mean": 2.0, "is_std": 0.1, "kid_mean": 0.002, "kid_std": 0.001, "precision": 0.5,
              "recall": 0.5, "extractor": "classifier", "num_samples": 300}
    runs = {}
    for name, extra in (("linear-T100-eps-fixedlarge-mse-s0", {KID_GAMMA: 0.01}),
                        ("linear-T100-eps-fixedlarge-mse-s1", {})):  # scored before KID's kernel was scaled
        folder = runs[name] = tmp_path / name
        write_point_scores(folder, {**scores, **extra})
        (folder / "nll.json").write_text(json.dumps({"bpd": 3.0, "bpd_stderr": 0.01, "num_images": 100}))
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 0.1}) + "\n")
    table = build_table(record_settings(runs), {}).set_index("setting")
    scaled, unscaled = table.loc["linear-T100-eps-fixedlarge-mse-s0"], table.loc["linear-T100-eps-fixedlarge-mse-s1"]
    assert scaled["KID ×10³ [classifier]"] == pytest.approx(2.0) and np.isnan(unscaled["KID ×10³ [classifier]"])
    assert unscaled["FID [classifier]"] == scaled["FID [classifier]"] == 5.0
    assert "γ = 1 / their mean squared norm over the reference images" in LEGEND and "slightly below 0" in LEGEND
