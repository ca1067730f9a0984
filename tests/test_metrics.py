"""FID / IS / KID / precision-recall through torch-fidelity, offline.

The digits classifier is trained once per module on the first 1,500 digits; the remaining 297 are held out.
torch-fidelity's Inception weights cannot be downloaded here, so the Inception test writes a weights file with the
exact keys and shapes of torch-fidelity's own ``FeatureExtractorInceptionV3`` (random values) and runs the real
loading and feature code on it. Downloads are blocked and torch's cache is redirected to a temp dir.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_digits
from threadpoolctl import threadpool_limits

import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ddpm.datasets import load_digits, to_model_range
from ddpm.features import (ClassifierFeatureExtractor, EXTRACTOR_NAME, load_classifier,
                           register_classifier_extractor, train_classifier)
from ddpm.metrics import (INCEPTION_CONFIG_KEY, UInt8ImageDataset, fidelity_metrics, gaussian_baseline_samples,
                          write_stand_in_inception_weights)

N_TRAIN = 1500
METRIC_KEYS = ("fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall")


@pytest.fixture(scope="module", autouse=True)
def _offline(tmp_path_factory):
    """No download, ever; torch's cache (torch-fidelity's default cache_root) points at an empty temp dir."""
    def no_download(*args, **kwargs):
        raise AssertionError("tests must not download torch-fidelity weights")

    torch_home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tf_inception, "load_state_dict_from_url", no_download)
        mp.setenv("TORCH_HOME", str(torch_home))
        yield
    assert not any(torch_home.iterdir()), "something was written to torch's cache"


@pytest.fixture(scope="module")
def split():
    images, labels = load_digits(), sklearn_digits().target
    return images[:N_TRAIN], labels[:N_TRAIN], images[N_TRAIN:], labels[N_TRAIN:]


@pytest.fixture(scope="module")
def classifier(split, tmp_path_factory):
    train_x, train_y, _, _ = split
    path = tmp_path_factory.mktemp("classifier") / "digits_classifier.pt"
    summary = train_classifier(train_x, train_y, path, seed=0)
    return path, summary


@contextlib.contextmanager
def _single_threaded():
    """Tiny tensors (8×8 images, 128-d features): thread start-up and OpenBLAS/OpenMP spin-waiting cost more than
    they save, 4× so on a busy 2-core machine. Results do not depend on it; only the test's run time does."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ranked(split, classifier):
    """Classifier-feature metrics of held-out digits, the Gaussian baseline and uniform noise, each vs the train digits."""
    train_x, _, test_x, _ = split
    path, _ = classifier
    noise = np.random.default_rng(1).integers(0, 256, size=test_x.shape, dtype=np.uint8)
    sets = {"real": test_x, "gaussian": gaussian_baseline_samples(train_x, len(test_x), seed=0), "noise": noise}
    with _single_threaded():
        return {name: fidelity_metrics(x, train_x, extractor="classifier", weights_path=path) for name, x in sets.items()}


# ---------------------------------------------------------------------------------------------------------------
# Classifier


def predict_labels(path, images) -> np.ndarray:
    """The saved classifier's class predictions for uint8 images."""
    model, _ = load_classifier(path, "cpu")
    with torch.no_grad():
        return model(to_model_range(images)).argmax(1).numpy()


def test_classifier_generalises_and_file_is_plain(split, classifier):
    _, _, test_x, test_y = split
    path, summary = classifier
    assert summary["train_accuracy"] > 0.98 and summary["num_train"] == N_TRAIN and summary["num_classes"] == 10
    held_out = float((predict_labels(path, test_x) == test_y).mean())
    assert held_out > 0.9, held_out
    state = torch.load(path, weights_only=True)  # no pickled code
    assert state["input_shape"] == [1, 8, 8] and state["num_classes"] == 10
    assert state["train_accuracy"] == summary["train_accuracy"] and state["arch"]["feature_dim"] == 128
    assert not list(path.parent.glob("*.tmp"))  # atomic write left no temporary behind


def test_classifier_training_is_deterministic(split, tmp_path):
    train_x, train_y, _, _ = split
    a = train_classifier(train_x[:200], train_y[:200], tmp_path / "a.pt", steps=15, seed=3)
    b = train_classifier(train_x[:200], train_y[:200], tmp_path / "b.pt", steps=15, seed=3)
    train_classifier(train_x[:200], train_y[:200], tmp_path / "c.pt", steps=15, seed=4)
    sa, sb, sc = (load_classifier(tmp_path / f"{n}.pt")[1]["state_dict"] for n in "abc")
    assert a["final_loss"] == b["final_loss"] and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_extractor_follows_torch_fidelity_conventions(split, classifier):
    _, _, test_x, _ = split
    path, _ = classifier
    name = register_classifier_extractor(path)
    assert register_classifier_extractor(path) == name == EXTRACTOR_NAME  # idempotent
    assert FEATURE_EXTRACTORS_REGISTRY[name] is ClassifierFeatureExtractor
    assert {m: ClassifierFeatureExtractor.get_default_feature_layer_for_metric(m) for m in ("isc", "fid", "kid", "prc")} \
        == {"isc": "logits_unbiased", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}

    fe = ClassifierFeatureExtractor(name, ["penultimate", "logits_unbiased", "logits"], feature_extractor_weights_path=str(path))
    rgb = torch.stack([UInt8ImageDataset(test_x[:8])[i] for i in range(8)])  # grey replicated to (3, 8, 8)
    assert rgb.shape == (8, 3, 8, 8) and rgb.dtype == torch.uint8
    feats, unbiased, logits = fe(rgb)
    assert feats.shape == (8, 128) and unbiased.shape == logits.shape == (8, 10)
    torch.testing.assert_close(logits, unbiased + fe.model.head.bias)
    model, _ = load_classifier(path)
    torch.testing.assert_close(logits, model(torch.from_numpy(test_x[:8]).float() / 127.5 - 1))  # channels averaged back


# ---------------------------------------------------------------------------------------------------------------
# Metrics with the classifier


def test_metrics_rank_real_below_gaussian_below_noise(ranked):
    real, gauss, noise = ranked["real"], ranked["gaussian"], ranked["noise"]
    assert real["fid"] < 0.5 * gauss["fid"] and gauss["fid"] < 0.5 * noise["fid"], (real, gauss, noise)
    assert real["kid_mean"] < gauss["kid_mean"] < noise["kid_mean"]
    assert real["is_mean"] > noise["is_mean"] + 1
    assert real["precision"] > gauss["precision"] > noise["precision"]


def test_metric_values_are_well_formed(ranked, split):
    _, _, test_x, _ = split
    for result in ranked.values():
        assert all(math.isfinite(result[k]) for k in METRIC_KEYS), result
        assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
        assert result["is_mean"] >= 1 and result["fid"] >= 0
        assert result["extractor"] == "classifier"
        assert result["num_samples"] == len(test_x) and result["num_reference"] == N_TRAIN
        assert result["kid_subset_size"] == len(test_x)  # automatic: min(1000, smaller set)


def test_fid_alone_is_the_same_fid(ranked, split, classifier):
    train_x, _, test_x, _ = split
    with _single_threaded():
        alone = fidelity_metrics(test_x, train_x, extractor="classifier", weights_path=classifier[0], metrics=("fid",))
    assert alone["fid"] == pytest.approx(ranked["real"]["fid"], rel=1e-6)
    assert "is_mean" not in alone and "kid_mean" not in alone and "precision" not in alone
    with pytest.raises(ValueError, match="metrics must be some of isc, fid, kid, prc"):
        fidelity_metrics(test_x, train_x, extractor="classifier", weights_path=classifier[0], metrics=("fd",))


def test_rgb_and_grey_inputs_agree(split, classifier):
    _, _, test_x, _ = split
    grey, reference = test_x[:30], test_x[30:90]
    a = fidelity_metrics(grey, reference, extractor="classifier", weights_path=classifier[0], kid_subset_size=20)
    b = fidelity_metrics(np.repeat(grey, 3, axis=1), reference, extractor="classifier", weights_path=classifier[0],
                         kid_subset_size=20)
    assert a["kid_subset_size"] == 20
    for k in METRIC_KEYS:
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k


def test_gaussian_baseline(split):
    train_x = split[0]
    a = gaussian_baseline_samples(train_x, 500, seed=7)
    assert a.shape == (500, 1, 8, 8) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, gaussian_baseline_samples(train_x, 500, seed=7))
    assert not np.array_equal(a, gaussian_baseline_samples(train_x, 500, seed=8))
    # Per-pixel means are matched up to sampling error and the clipping at 0 / 255.
    assert np.abs(a.reshape(500, -1).mean(0) - train_x.reshape(N_TRAIN, -1).mean(0)).max() < 15


# ---------------------------------------------------------------------------------------------------------------
# Inception-v3 (torch-fidelity's own extractor, weights file of the right layout with random values)


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """A stand-in for weights-inception-2015-12-05-6726825d.pth: torch-fidelity's keys and shapes, random values."""
    return write_stand_in_inception_weights(tmp_path_factory.mktemp("inception") / "weights-inception-random.pth")


def test_inception_path_end_to_end_offline(random_inception_weights, monkeypatch):
    # Inception resizes every image to 299×299 first: ~0.3–1 s per image on 2 (busy) CPU cores. The resize target
    # is lowered here to 75×75, the smallest input Inception-v3 accepts (16× cheaper); weight loading, the network
    # and torch-fidelity's metric code are otherwise exactly those of a production run.
    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)
    digits = load_digits()
    result = fidelity_metrics(digits[:25], digits[25:50], extractor="inception-v3-compat",
                              weights_path=random_inception_weights, batch_size=25)
    assert all(math.isfinite(result[k]) for k in METRIC_KEYS), result
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1 and result["is_mean"] >= 1 - 1e-9
    assert result["fid"] > 0  # the random features are not degenerate
    assert result["extractor"] == "inception-v3-compat"
    assert (result["num_samples"], result["num_reference"], result["kid_subset_size"]) == (25, 25, 25)


def test_inception_weights_file_is_really_loaded(tmp_path):
    bad = tmp_path / "not-inception.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    digits = load_digits()[:10]
    with pytest.raises(RuntimeError, match="Missing key"):  # torch-fidelity's strict load_state_dict
        fidelity_metrics(digits, digits, extractor="inception-v3-compat", weights_path=bad)


def test_missing_inception_weights_says_how_to_provide_them(tmp_path):
    digits = load_digits()[:10]
    with pytest.raises(FileNotFoundError, match=INCEPTION_CONFIG_KEY.replace(".", r"\.")) as err:
        fidelity_metrics(digits, digits, extractor="inception-v3-compat", weights_path=tmp_path / "absent.pth")
    assert "weights-inception-2015-12-05-6726825d.pth" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# Input validation


@pytest.mark.parametrize("change, argument", [
    (lambda s, r: (s.astype(np.float32), r), "samples"),
    (lambda s, r: (s, r[:, 0]), "reference"),
    (lambda s, r: (np.repeat(s, 2, axis=1), r), "samples"),
    (lambda s, r: (s, np.zeros((20, 1, 16, 16), np.uint8)), "H×W"),
    (lambda s, r: (s[:5], r), "samples"),
    (lambda s, r: (list(s), r), "samples"),
])
def test_bad_inputs_name_the_argument(classifier, change, argument):
    digits = load_digits()[:20]
    samples, reference = change(digits, digits)
    with pytest.raises(ValueError, match=argument):
        fidelity_metrics(samples, reference, extractor="classifier", weights_path=classifier[0])


def test_bad_options_name_the_argument(classifier):
    digits = load_digits()[:20]
    with pytest.raises(ValueError, match="kid_subset_size"):
        fidelity_metrics(digits, digits[:12], extractor="classifier", weights_path=classifier[0], kid_subset_size=13)
    with pytest.raises(ValueError, match="extractor"):
        fidelity_metrics(digits, digits, extractor="vgg", weights_path=classifier[0])
    with pytest.raises(ValueError, match="weights_path"):
        fidelity_metrics(digits, digits, extractor="classifier")
    with pytest.raises(ValueError, match="train_images"):
        gaussian_baseline_samples(digits.astype(np.int64), 5, seed=0)
    with pytest.raises(ValueError, match="labels"):
        train_classifier(digits, np.zeros(3, dtype=np.int64), "unused.pt")


def test_the_classifier_fid_and_baseline_jobs_say_what_they_do_as_they_go(tmp_path, capsys):
    """Their logs are not empty until the end: the classifier prints its loss ten times, the FID and baseline jobs what
    they score against what before they score it."""
    from ddpm.cli import main
    from ddpm.datasets import prepare_dataset

    data = tmp_path / "data"
    prepare_dataset("digits", data)
    assert main(["classifier", "--data", str(data), "--out", str(tmp_path / "c.pt"), "--steps", "30"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "training the feature extractor on 1497 train images, 30 steps"
    assert [line.split(":")[0] for line in lines[1:11]] == [f"classifier step {s}/30" for s in range(3, 31, 3)]
    assert main(["evaluate", "baseline", "--kind", "test_split", "--data", str(data), "--weights",
                 str(tmp_path / "c.pt"), "--num-samples", "50", "--out", str(tmp_path / "b.json")]) == 0
    assert capsys.readouterr().out.startswith("scoring the test split baseline: 50 images with the classifier features "
                                              "against the 1497 train images\n")
    from ddpm.datasets import load_split
    from ddpm.io import save_npz

    save_npz(tmp_path / "s.npz", images=load_split(data, "test")[0][:50], indices=np.arange(50))
    assert main(["evaluate", "fid", "--samples", str(tmp_path / "s.npz"), "--data", str(data), "--weights",
                 str(tmp_path / "c.pt"), "--test-reference", "--out", str(tmp_path / "f.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "scoring 50 samples with the classifier features against the 1497 train images, 50 bootstrap rounds"
    assert lines[1].startswith("FID ") and lines[2] == "FID against the 300 test images"


def test_one_pass_of_torch_fidelitys_functions_gives_calculate_metrics_numbers(split, classifier):
    """fidelity_metrics extracts each image set's features once and calls torch-fidelity's metric functions itself;
    its numbers must be those of torch-fidelity's own calculate_metrics with the same options (KID's kernel scaled to
    the classifier's features: the γ it records, :func:`ddpm.metrics.kid_kernel_gamma`)."""
    import tempfile

    import torch_fidelity

    from ddpm.metrics import _extractor_kwargs

    train_x, _, test_x, _ = split
    ours = fidelity_metrics(test_x, train_x, extractor="classifier", weights_path=classifier[0], seed=3)
    with tempfile.TemporaryDirectory() as scratch:
        theirs = torch_fidelity.calculate_metrics(
            input1=UInt8ImageDataset(test_x), input2=UInt8ImageDataset(train_x), isc=True, fid=True, kid=True,
            prc=True, **_extractor_kwargs("classifier", classifier[0]), isc_splits=10, kid_subset_size=len(test_x),
            kid_kernel_poly_gamma=ours["kid_kernel_gamma"], batch_size=200, cuda=False, rng_seed=3, cache=False,
            cache_root=scratch, datasets_root=scratch, datasets_download=False, save_cpu_ram=True, verbose=False)
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-7)  # float64 statistics here
    for key, their_key in (("is_mean", "inception_score_mean"), ("is_std", "inception_score_std"),
                           ("kid_mean", "kernel_inception_distance_mean"), ("kid_std", "kernel_inception_distance_std"),
                           ("precision", "precision"), ("recall", "recall")):
        assert ours[key] == theirs[their_key], key


def test_bootstrap_errors_shrink_with_more_samples_and_repeat_with_the_seed(split, classifier):
    """The standard errors of FID, IS and KID over the samples: reproducible from the seed, other for another seed,
    and smaller for 4× the samples (≈ 1/√n); the scores themselves are those without the bootstrap."""
    train_x, _, test_x, _ = split
    options = dict(extractor="classifier", weights_path=classifier[0], kid_subset_size=50)
    few = fidelity_metrics(test_x[:60], train_x, bootstrap_rounds=40, **options)
    assert few == fidelity_metrics(test_x[:60], train_x, bootstrap_rounds=40, **options)
    other_seed = fidelity_metrics(test_x[:60], train_x, bootstrap_rounds=40, seed=1, **options)
    assert other_seed["fid_se"] != few["fid_se"]
    plain = fidelity_metrics(test_x[:60], train_x, **options)
    assert "fid_se" not in plain and {k: few[k] for k in plain} == plain
    many = fidelity_metrics(train_x[:240], train_x[240:], bootstrap_rounds=40, **options)
    assert few["bootstrap_rounds"] == many["bootstrap_rounds"] == 40
    for key in ("fid_se", "is_se", "kid_se"):
        assert math.isfinite(few[key]) and few[key] > 0, key
    assert many["fid_se"] < few["fid_se"] and many["is_se"] < few["is_se"]
    with pytest.raises(ValueError, match="bootstrap_rounds"):
        fidelity_metrics(test_x[:60], train_x, bootstrap_rounds=-1, **options)


def test_two_scores_are_distinguishable_only_beyond_twice_their_combined_error():
    import pandas as pd

    from ddpm.report.tables import compare_to_best, distinguishable

    assert not distinguishable(10.0, 3.0, 17.0, 4.0)  # 7 < 2 × 5
    assert distinguishable(10.0, 3.0, 21.0, 4.0)  # 11 > 10
    table = pd.DataFrame({"FID": [30.0, 20.0, 25.0, 80.0, 18.0, float("nan"), 9.0],
                          "FID ±": [2.0, 2.0, 2.0, 5.0, 1.0, 1.0, 1.0],
                          "status": ["finished"] * 3 + [None, None, "diverged", None]})
    verdicts = compare_to_best(table, "FID", "FID ±", table["status"].notna())
    # the best is the settings' lowest, 20 ± 2 (not the reference row's 18); 25 ± 2 lies within 2√8 ≈ 5.7 of it,
    # 30 ± 2 does not; the reference row 18 ± 1 is below it within 2√5 ≈ 4.5, 9 ± 1 beyond; a row without a score
    # gets nothing
    assert list(verdicts) == ["worse", "best", "not distinguishable", "worse", "not distinguishable", "", "better"]
