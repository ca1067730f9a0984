"""FID's reference statistics as files (ddpm.refstats, `ddpm evaluate ref-stats`, `ddpm evaluate fid --ref-stats`).

FID from a statistics file must be torch-fidelity's FID against the images the file was computed from; a second
evaluation must read the reference's statistics, not compute them; a file that changed, or that is of another
extractor, weights, split, resolution or data, is refused naming which; a file from elsewhere (pytorch-fid's layout)
only when asked for, and labelled foreign in the scores. All offline, with the digits classifier as extractor.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
import torch_fidelity.metric_fid as metric_fid

from ddpm import refstats
from ddpm.cli import main
from ddpm.datasets import load_split, prepare_dataset, split_sha256
from ddpm.evaluate import write_scores
from ddpm.features import train_classifier
from ddpm.io import save_npz
from ddpm.metrics import fidelity_metrics, gaussian_baseline_samples
from ddpm.refstats import (compute_ref_stats, read_ref_stats, record_path, resize_record,
                           same_weights, weights_id, write_ref_stats)
from ddpm.store import sha256_file

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = dict(extractor="classifier")
N_SAMPLES = 120


@pytest.fixture(scope="module", autouse=True)
def _offline(tmp_path_factory):
    """No download, ever; torch's cache points at an empty temp dir."""
    def no_download(*args, **kwargs):
        raise AssertionError("tests must not download torch-fidelity weights")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tf_inception, "load_state_dict_from_url", no_download)
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The digits prepared as `ddpm prepare` does: 8×8, train and test splits."""
    folder = tmp_path_factory.mktemp("data") / "digits"
    prepare_dataset("digits", folder)
    return folder


@pytest.fixture(scope="module")
def classifier(data, tmp_path_factory):
    """A digits classifier file (short training: the features need not be good, only fixed)."""
    path = tmp_path_factory.mktemp("classifier") / "classifier.pt"
    train_classifier(*load_split(data, "train"), path, steps=150, seed=0)
    return path


@pytest.fixture(scope="module")
def stats(data, classifier, tmp_path_factory):
    """The train split's statistics file and its record, as `ddpm evaluate ref-stats` writes them."""
    path = tmp_path_factory.mktemp("stats") / "train.npz"
    record = write_ref_stats(data, path, split="train", weights=classifier, **CLASSIFIER)
    return path, record


@pytest.fixture(scope="module")
def samples(data, tmp_path_factory):
    """Samples to score: the train split's Gaussian baseline (clearly unlike the digits: FID well above 0)."""
    images = gaussian_baseline_samples(load_split(data, "train")[0], N_SAMPLES, seed=0)
    path = tmp_path_factory.mktemp("samples") / "samples.npz"
    save_npz(path, images=images, indices=np.arange(N_SAMPLES))
    return path, images


@pytest.fixture
def stats_rows(monkeypatch):
    """The number of feature rows of every μ, Σ torch-fidelity fits from now on (its one function that does)."""
    rows = []
    fit = metric_fid.fid_features_to_statistics

    def counting(features):
        rows.append(int(features.shape[0]))
        return fit(features)

    monkeypatch.setattr(metric_fid, "fid_features_to_statistics", counting)
    return rows


def _copy(stats_path: Path, folder: Path) -> Path:
    """A copy of a statistics file with its record."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(stats_path, folder / stats_path.name)
    shutil.copy(record_path(stats_path), record_path(folder / stats_path.name))
    return folder / stats_path.name


# ---------------------------------------------------------------------------------------------------------------
# The file and its record


def test_file_holds_torch_fidelitys_statistics_and_says_of_what(data, classifier, stats):
    path, record = stats
    train = load_split(data, "train")[0]
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["mu", "sigma"]  # pytorch-fid's layout
        mu, sigma = f["mu"], f["sigma"]
    assert mu.dtype == sigma.dtype == np.float64 and mu.shape == (128,) and sigma.shape == (128, 128)
    again_mu, again_sigma = compute_ref_stats(train, weights=classifier, **CLASSIFIER)
    np.testing.assert_allclose(mu, again_mu, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sigma, again_sigma, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sigma, sigma.T, atol=1e-12)
    assert np.abs(mu).max() > 0 and np.trace(sigma) > 0  # features are not all zero

    assert json.loads(record_path(path).read_text()) == record
    assert record_path(path) == path.with_name("train.json")
    assert record == {
        "format": "ddpm-ref-stats-v1", "origin": "ddpm", "extractor": "classifier",
        "extractor_weights_sha256": sha256_file(classifier), "feature_layer": "penultimate", "feature_dim": 128,
        "input_resolution": [8, 8], "resize": None, "dataset": "digits", "split": "train",
        "split_sha256": split_sha256(data, "train"), "num_images": len(train), "npz_sha256": sha256_file(path),
    }
    assert not list(path.parent.glob(".*.tmp"))  # atomic writes left no temporary behind


def test_inception_is_recorded_by_torch_fidelitys_weights_and_resize():
    name = weights_id("inception-v3-compat")
    assert name == tf_inception.URL_INCEPTION_V3.rsplit("/", 1)[-1] == "weights-inception-2015-12-05-6726825d.pth"
    assert same_weights(name, "6726825d" + "0" * 56)  # the same file, downloaded once and passed as a file later
    assert not same_weights(name, "6726825e" + "0" * 56)
    assert not same_weights("a" * 64, "b" * 64)
    resize = resize_record("inception-v3-compat", (8, 8))
    assert resize["size"] == [299, 299] and "TensorFlow" in resize["method"]


# ---------------------------------------------------------------------------------------------------------------
# FID from the file


def fid_from_stats(samples, mu, sigma, **extractor) -> float:
    """FID of ``samples`` against reference statistics: the samples' statistics as the reference's were computed, then
    the Fréchet distance (what ``ddpm evaluate fid --ref-stats`` computes)."""
    from ddpm.metrics import fid_between

    return fid_between(compute_ref_stats(samples, **extractor), (mu, sigma))


def test_fid_from_file_is_fid_against_the_images(data, classifier, stats, samples):
    path, _ = stats
    images = samples[1]
    train = load_split(data, "train")[0]
    direct = fidelity_metrics(images, train, weights_path=classifier, metrics=("fid",), **CLASSIFIER)["fid"]
    mu, sigma, meta = read_ref_stats(path, resolution=(8, 8), split="train", weights=classifier, **CLASSIFIER)
    assert meta["origin"] == "ddpm" and meta["npz_sha256"] == sha256_file(path)
    from_file = fid_from_stats(images, mu, sigma, weights=classifier, **CLASSIFIER)
    assert direct > 1.0  # a real distance, not a degenerate 0
    assert from_file == pytest.approx(direct, rel=1e-6)
    real = fid_from_stats(load_split(data, "test")[0], mu, sigma, weights=classifier, **CLASSIFIER)
    assert real < 0.5 * from_file  # held-out digits are closer to the train split than the Gaussian baseline


def test_scores_with_the_file_read_the_reference_statistics_instead_of_computing_them(
        data, classifier, stats, samples, tmp_path, monkeypatch, stats_rows):
    path, record = stats
    n_train = len(load_split(data, "train")[0])
    plain = write_scores(samples[0], data, tmp_path / "plain.json", weights=classifier, **CLASSIFIER)
    assert sorted(stats_rows) == sorted([N_SAMPLES, n_train])  # without the file: the train images' μ, Σ are fitted

    stats_rows.clear()

    def no_reference_statistics(*args, **kwargs):
        raise AssertionError("the reference statistics were computed again")

    monkeypatch.setattr(refstats, "compute_ref_stats", no_reference_statistics)
    for attempt in range(2):
        scores = write_scores(samples[0], data, tmp_path / f"file-{attempt}.json", weights=classifier,
                              ref_stats=str(path), **CLASSIFIER)
    assert stats_rows == [N_SAMPLES, N_SAMPLES]  # only the samples' μ, Σ, once per evaluation
    assert scores["fid"] == pytest.approx(plain["fid"], rel=1e-6)
    for key in ("is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall", "num_reference"):
        assert scores[key] == plain[key], key  # the other metrics still use the images, unchanged
    written = json.loads((tmp_path / "file-1.json").read_text())
    assert written["fid_reference"] == {"stats": str(path), "npz_sha256": record["npz_sha256"], "origin": "ddpm",
                                        "split": "train", "num_images": n_train}
    assert written["fid"] == scores["fid"] and "fid_reference" not in json.loads((tmp_path / "plain.json").read_text())


# ---------------------------------------------------------------------------------------------------------------
# Refusals


def test_changed_file_is_refused_naming_the_checksum(stats, classifier, tmp_path):
    copy = _copy(stats[0], tmp_path)
    data = bytearray(copy.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch") as err:
        read_ref_stats(copy, resolution=8, split="train", weights=classifier, **CLASSIFIER)
    assert str(copy) in str(err.value)


def test_file_of_another_extractor_split_resolution_weights_or_data_is_refused_naming_which(
        data, classifier, stats, tmp_path):
    path = stats[0]
    ok = dict(resolution=(8, 8), split="train", weights=classifier, **CLASSIFIER)
    read_ref_stats(path, **ok, split_sha256=split_sha256(data, "train"))  # the right one passes

    with pytest.raises(ValueError, match="extractor is 'classifier' there, 'inception-v3-compat' here"):
        read_ref_stats(path, resolution=(8, 8), split="train", extractor="inception-v3-compat")
    with pytest.raises(ValueError, match=r"input_resolution is \[8, 8\] there, \[16, 16\] here"):
        read_ref_stats(path, **{**ok, "resolution": 16})
    with pytest.raises(ValueError, match="split is 'train' there, 'test' here"):
        read_ref_stats(path, **{**ok, "split": "test"})
    with pytest.raises(ValueError, match="split_sha256 is"):
        read_ref_stats(path, **ok, split_sha256=split_sha256(data, "test"))

    other = tmp_path / "other.pt"
    train_classifier(*load_split(data, "train"), other, steps=5, seed=1)
    with pytest.raises(ValueError, match="extractor_weights_sha256 is .* here \\(other weights\\)"):
        read_ref_stats(path, **{**ok, "weights": other})

    test_stats = tmp_path / "test.npz"
    assert write_ref_stats(data, test_stats, split="test", weights=classifier, **CLASSIFIER)["split"] == "test"
    with pytest.raises(ValueError, match="split is 'test' there, 'train' here"):
        read_ref_stats(test_stats, **ok)

    big = tmp_path / "digits16"
    prepare_dataset("digits", big, image_size=16)
    big_stats = tmp_path / "train16.npz"
    record = write_ref_stats(big, big_stats, num_images=200, weights=classifier, **CLASSIFIER)
    assert record["input_resolution"] == [16, 16] and record["num_images"] == 200
    assert record["resize"]["size"] == [8, 8]  # the 8×8 classifier sees them resized
    with pytest.raises(ValueError, match=r"input_resolution is \[16, 16\] there, \[8, 8\] here"):
        read_ref_stats(big_stats, **ok)


def test_scores_against_a_wrong_file_are_refused_before_anything_is_computed(
        data, classifier, stats, samples, tmp_path, stats_rows):
    test_stats = tmp_path / "test.npz"
    write_ref_stats(data, test_stats, split="test", num_images=50, weights=classifier, **CLASSIFIER)
    stats_rows.clear()
    with pytest.raises(ValueError, match="split is 'test' there, 'train' here"):
        write_scores(samples[0], data, tmp_path / "scores.json", weights=classifier, ref_stats=str(test_stats),
                     **CLASSIFIER)
    assert stats_rows == [] and not (tmp_path / "scores.json").exists()
    with pytest.raises(ValueError, match="ref_stats_foreign"):
        write_scores(samples[0], data, tmp_path / "scores.json", weights=classifier, ref_stats_foreign=True,
                     **CLASSIFIER)


def test_record_that_names_another_file_or_no_record_is_refused(stats, classifier, tmp_path):
    copy = _copy(stats[0], tmp_path)
    record = json.loads(record_path(copy).read_text())
    record_path(copy).write_text(json.dumps({**record, "origin": "elsewhere"}))
    with pytest.raises(ValueError, match="not the record of a `ddpm evaluate ref-stats` file"):
        read_ref_stats(copy, resolution=8, split="train", weights=classifier, **CLASSIFIER)
    record_path(copy).unlink()
    with pytest.raises(ValueError, match="no record train.json beside it"):
        read_ref_stats(copy, resolution=8, split="train", weights=classifier, **CLASSIFIER)
    with pytest.raises(ValueError, match=r"must end in \.npz"):
        write_ref_stats(tmp_path, tmp_path / "stats.npy", weights=classifier, **CLASSIFIER)


# ---------------------------------------------------------------------------------------------------------------
# Files from elsewhere


@pytest.fixture(scope="module")
def foreign(stats, tmp_path_factory):
    """The train statistics as pytorch-fid writes them: mu and sigma in an .npz, nothing beside it."""
    with np.load(stats[0]) as f:
        mu, sigma = f["mu"], f["sigma"]
    path = tmp_path_factory.mktemp("foreign") / "fid_stats_digits_train.npz"
    np.savez(path, mu=mu, sigma=sigma)
    return path


def test_foreign_file_only_when_asked_and_only_its_dimension_checked(foreign, classifier, tmp_path):
    options = dict(resolution=(32, 32), split="test", weights=classifier, **CLASSIFIER)  # nothing to check them by
    with pytest.raises(ValueError, match="foreign=True"):
        read_ref_stats(foreign, **options)
    mu, sigma, meta = read_ref_stats(foreign, foreign=True, **options)
    assert meta == {"origin": "foreign", "npz_sha256": sha256_file(foreign)}
    with np.load(foreign) as f:
        np.testing.assert_array_equal(mu, f["mu"])
        np.testing.assert_array_equal(sigma, f["sigma"])

    bad = {"dim.npz": dict(mu=mu[:64], sigma=sigma[:64, :64]), "nosigma.npz": dict(mu=mu),
           "notsquare.npz": dict(mu=mu, sigma=sigma[:, :127]), "mismatch.npz": dict(mu=mu[:127], sigma=sigma)}
    for name, arrays in bad.items():
        np.savez(tmp_path / name, **arrays)
    for name, message in (("dim.npz", "64 features but extractor='classifier' gives 128"),
                          ("nosigma.npz", "has no array 'sigma'"), ("notsquare.npz", "sigma must be square"),
                          ("mismatch.npz", r"match mu \(127, 127\)")):
        with pytest.raises(ValueError, match=message):
            read_ref_stats(tmp_path / name, foreign=True, **options)


def test_scores_against_a_foreign_file_are_labelled_foreign(data, classifier, stats, foreign, samples, tmp_path):
    out = tmp_path / "fid_is.json"
    fid = ["evaluate", "fid", "--samples", str(samples[0]), "--data", str(data), "--weights", str(classifier),
           "--ref-stats", str(foreign), "--out", str(out)]
    assert main(fid) == 2 and not out.exists()  # refused without --foreign-ref-stats
    assert main([*fid, "--foreign-ref-stats"]) == 0
    scores = json.loads(out.read_text())
    assert scores["fid_reference"] == {"stats": str(foreign), "npz_sha256": sha256_file(foreign),
                                       "origin": "foreign", "split": None, "num_images": None}
    mu, sigma, _ = read_ref_stats(stats[0], resolution=8, split="train", weights=classifier, **CLASSIFIER)
    assert scores["fid"] == fid_from_stats(samples[1], mu, sigma, weights=classifier, **CLASSIFIER)  # same arrays
    assert main(["evaluate", "fid", "--samples", str(samples[0]), "--data", str(data), "--weights", str(classifier),
                 "--foreign-ref-stats", "--out", str(tmp_path / "x.json")]) == 2  # says what no file is


# ---------------------------------------------------------------------------------------------------------------
# Command line


def test_cli_writes_the_file_and_its_record(data, classifier, tmp_path):
    out = tmp_path / "stats" / "test.npz"
    result = subprocess.run(
        [sys.executable, "-m", "ddpm.cli", "evaluate", "ref-stats", "--data", str(data), "--split", "test",
         "--out", str(out), "--feature-extractor", "classifier", "--weights", str(classifier), "--num-images", "50",
         "--threads", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "50 test images" in result.stdout
    record = json.loads(record_path(out).read_text())
    assert record["split"] == "test" and record["num_images"] == 50 and record["npz_sha256"] == sha256_file(out)
    assert record["split_sha256"] == split_sha256(data, "test")
    mu, sigma, _ = read_ref_stats(out, resolution=(8, 8), split="test", weights=classifier, **CLASSIFIER)
    expected_mu, expected_sigma = compute_ref_stats(load_split(data, "test")[0][:50], weights=classifier, **CLASSIFIER)
    np.testing.assert_allclose(mu, expected_mu, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-6, atol=1e-7)

    bad = subprocess.run(
        [sys.executable, "-m", "ddpm.cli", "evaluate", "ref-stats", "--data", str(data), "--out",
         str(tmp_path / "few.npz"), "--weights", str(classifier), "--num-images", "3"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert bad.returncode == 2 and "num_images must be in 10.." in bad.stderr
    assert not (tmp_path / "few.npz").exists() and not (tmp_path / "few.json").exists()
