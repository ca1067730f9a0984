"""Sample-quality metrics, all computed by torch-fidelity's own feature extraction and metric functions (no
hand-written FID here), with bootstrap standard errors over the samples.

- FID: Fréchet distance between Gaussians fitted to the features of samples and reference
  (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash equilibrium").
- IS: exp E_x KL(p(y|x) || p(y)) over the samples (Salimans et al. 2016, "Improved techniques for training GANs").
- KID: unbiased MMD² with a cubic polynomial kernel k(x, y) = (γ x·y + 1)³, averaged over random subsets
  (Bińkowski et al. 2018, "Demystifying MMD GANs"); γ as :func:`kid_kernel_gamma` says.
- Precision / recall: the fraction of samples inside the reference's k-NN feature manifold and vice versa
  (Kynkäänniemi et al. 2019, "Improved precision and recall metric for assessing generative models").

Two feature extractors: ``"inception-v3-compat"`` — torch-fidelity's port of the TensorFlow Inception-v3 the papers
used, so numbers are comparable to them — and ``"classifier"``, a small CNN trained on the data set itself
(:mod:`ddpm.features`), for data where ImageNet features mean little (8×8 digits).

Also :func:`gaussian_baseline_samples`: the samples of a Gaussian fitted to the training pixels, the baseline every
trained model must beat.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpm.datasets import check_images, open_split
from ddpm.features import register_classifier_extractor
from ddpm.io import write_json
from ddpm.vocabulary import BOOTSTRAP_ROUNDS, EXTRACTORS, KID_GAMMA, SAMPLING_COST

#: torch-fidelity's metric groups: Inception score, FID, KID, precision/recall.
METRICS = ("isc", "fid", "kid", "prc")

INCEPTION_CONFIG_KEY = "evaluate.inception_weights"
KID_DEFAULT_SUBSET_SIZE = 1000  # torch-fidelity's and Bińkowski et al.'s default
#: The scores a FID job logs to its setting's MLflow run (its fid_is.json keeps them all).
TRACKED_SCORES = ("fid", "fid_se", "fid_test", "is_mean", "is_std", "is_se", "kid_mean", "kid_std", "kid_se",
                  "precision", "recall")
MIN_IMAGES = 10  # IS uses 10 splits; precision/recall need > 3 neighbours; FID needs a covariance


def cached_inception_weights() -> Path:
    """Where torch-fidelity looks for its Inception-v3 weights before downloading them (torch.hub's cache)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]


def write_stand_in_inception_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """A file in the layout of torch-fidelity's Inception-v3 weights (every key and shape of its
    ``FeatureExtractorInceptionV3``) with random values: He-normal convolutions (so that activations neither vanish
    nor explode through ~100 layers), identity batch norms, a scaled classifier. For what needs the network's shape
    and cost but cannot download the real file (tests, ``ddpm bench`` offline); its scores mean nothing."""
    import math

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):  # torch-fidelity's module, built without loading any weights
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    path = Path(path)
    empty = path.with_name(path.name + ".empty")
    torch.save({}, empty)
    try:
        skeleton = Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    finally:
        empty.unlink()
    generator, state = torch.Generator().manual_seed(seed), {}
    for key, value in skeleton.state_dict().items():
        if key.endswith("conv.weight"):
            value = torch.randn(value.shape, generator=generator) * math.sqrt(2.0 / value[0].numel())
        elif key == "fc.weight":
            value = torch.randn(value.shape, generator=generator) * (3.0 / math.sqrt(value.shape[1]))
        state[key] = value.clone()
    torch.save(state, path)
    return path


def inception_weights_help() -> str:
    """How to provide torch-fidelity's Inception-v3 weights on a machine without internet access."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    hub_file = cached_inception_weights()
    return (
        f"torch-fidelity's Inception-v3 weights are downloaded from {URL_INCEPTION_V3}. Without internet access, "
        f"fetch that file elsewhere and either set the config key `{INCEPTION_CONFIG_KEY}` to its path (passed on "
        f"as weights_path / torch-fidelity's feature_extractor_weights_path) or put it at {hub_file} "
        f"(torch.hub's cache, used when weights_path is None)."
    )


# ----------------------------------------------------------------------------------------------------------------
# Inputs


class UInt8ImageDataset(Dataset):
    """A torch Dataset over uint8 (N, C, H, W) images yielding uint8 (3, H, W) tensors, as torch-fidelity expects;
    one-channel images are replicated to three channels. ``images``: an array, or a prepared split on disk
    (:class:`~ddpm.store.SplitImages`), read one image at a time as torch-fidelity's loader asks for it."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = torch.from_numpy(np.ascontiguousarray(self.images[i]))
        return img.expand(3, -1, -1).contiguous() if img.shape[0] == 1 else img


def _check_inputs(samples, reference) -> None:
    check_images(samples, "samples", min_count=MIN_IMAGES)
    check_images(reference, "reference", min_count=MIN_IMAGES)
    if samples.shape[2:] != reference.shape[2:]:
        raise ValueError(f"samples are {samples.shape[2]}×{samples.shape[3]} but reference is "
                         f"{reference.shape[2]}×{reference.shape[3]}; they must have the same H×W")


def _kid_subset_size(kid_subset_size: int | None, n_samples: int, n_reference: int) -> int:
    """torch-fidelity needs a subset no larger than either set: default min(1000, smaller set)."""
    smaller = min(n_samples, n_reference)
    if kid_subset_size is None:
        return min(KID_DEFAULT_SUBSET_SIZE, smaller)
    if isinstance(kid_subset_size, bool) or not isinstance(kid_subset_size, (int, np.integer)):
        raise ValueError(f"kid_subset_size must be an int or None, got {kid_subset_size!r}")
    if not 2 <= kid_subset_size <= smaller:
        raise ValueError(f"kid_subset_size must be in 2..{smaller} (the smaller of samples={n_samples} and "
                         f"reference={n_reference}), got {kid_subset_size}")
    return int(kid_subset_size)


def _extractor_kwargs(extractor: str, weights_path: str | os.PathLike | None) -> dict:
    """torch-fidelity's feature_extractor / feature_extractor_weights_path for one of :data:`EXTRACTORS`."""
    if extractor == "inception-v3-compat":
        if weights_path is None:
            return {"feature_extractor": extractor}
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"Inception weights file not found: {weights_path}. {inception_weights_help()}")
        return {"feature_extractor": extractor, "feature_extractor_weights_path": str(weights_path)}
    if extractor == "classifier":
        if weights_path is None:
            raise ValueError("extractor='classifier' needs weights_path: a classifier file written by "
                             "ddpm.features.train_classifier")
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"classifier file not found: {weights_path} (train one with "
                                    "ddpm.features.train_classifier)")
        return {"feature_extractor": register_classifier_extractor(weights_path),
                "feature_extractor_weights_path": str(weights_path)}
    raise ValueError(f"unknown extractor {extractor!r}; valid extractors: {', '.join(EXTRACTORS)}")


@contextlib.contextmanager
def _on_device(device: str):
    """torch-fidelity takes only ``cuda=True/False`` and calls ``.cuda()``; select the CUDA index around the call."""
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    with (torch.cuda.device(dev) if dev.type == "cuda" and dev.index is not None else contextlib.nullcontext()):
        yield dev.type == "cuda"


# ----------------------------------------------------------------------------------------------------------------
# Metrics


def fidelity_metrics(
    samples: np.ndarray,
    reference: np.ndarray,
    *,
    extractor: str,
    weights_path: str | os.PathLike | None = None,
    kid_subset_size: int | None = None,
    batch_size: int = 200,
    device: str = "cpu",
    seed: int = 0,
    metrics: tuple[str, ...] = METRICS,
    reference_stats: tuple[np.ndarray, np.ndarray] | None = None,
    reference_name: str | None = None,
    bootstrap_rounds: int = 0,
) -> dict:
    """FID, IS, KID and precision/recall of ``samples`` against ``reference``, by torch-fidelity's own functions: its
    feature extractor and ``get_featuresdict_from_dataset`` (one pass over each image set for every metric), then
    ``isc_/kid_/prc_featuresdict_to_metric`` and ``fid_statistics_to_metric`` with the options
    ``calculate_metrics`` would pass them (the same numbers; tests/test_metrics.py compares them).

    ``samples``, ``reference``: uint8 (N, C, H, W), C ∈ {1, 3}, same H×W (grey images are replicated to RGB).
    ``extractor``: ``"inception-v3-compat"`` (``weights_path`` optional: torch-fidelity's weights file, downloaded
    by torch-fidelity when None) or ``"classifier"`` (``weights_path``: a :func:`ddpm.features.train_classifier`
    file). torch-fidelity's conventions apply: IS is of the samples alone, precision is the fraction of samples
    on the reference manifold and recall the converse, KID uses 100 subsets of ``kid_subset_size`` (default
    min(1000, smaller set)). ``reference_stats``: FID's reference (μ, Σ) (a statistics file, :mod:`ddpm.refstats`)
    in place of the reference images' features; ``reference`` is then read only for KID and precision/recall.
    ``reference_name``: what FID's reference is called in an error (its statistics file).

    ``bootstrap_rounds`` > 0: also the bootstrap standard error of FID, IS and KID over the sample set
    (:func:`bootstrap_errors`), as ``fid_se``, ``is_se``, ``kid_se``. Nothing is cached on disk.

    Returns ``fid, is_mean, is_std, kid_mean, kid_std, precision, recall`` (floats), ``extractor``,
    ``num_samples``, ``num_reference``, ``kid_subset_size`` and KID's ``kid_kernel_gamma``; with ``metrics`` a subset
    of :data:`METRICS` (e.g. ``("fid",)``), only those are computed and returned."""
    _check_inputs(samples, reference)
    unknown = set(metrics) - set(METRICS)
    if unknown or not metrics:
        raise ValueError(f"metrics must be some of {', '.join(METRICS)}; got {metrics!r}")
    if isinstance(bootstrap_rounds, bool) or not isinstance(bootstrap_rounds, (int, np.integer)) or bootstrap_rounds < 0:
        raise ValueError(f"bootstrap_rounds must be an int ≥ 0, got {bootstrap_rounds!r}")
    subset = _kid_subset_size(kid_subset_size, len(samples), len(reference))
    options = {"isc_splits": min(10, len(samples)), "kid_subset_size": subset, "rng_seed": int(seed),
               "save_cpu_ram": True, "verbose": False}
    fe_kwargs = _extractor_kwargs(extractor, weights_path)
    layers = _layers(fe_kwargs)
    needs_reference = any(m in ("kid", "prc") or (m == "fid" and reference_stats is None) for m in metrics)
    with _on_device(device) as cuda:  # one extractor (its weights loaded once) for both image sets
        module = _feature_extractor(fe_kwargs, sorted({layers[m] for m in metrics}), cuda)
        sample_features = _features(samples, module, batch_size, cuda)
        reference_features = _features(reference, module, batch_size, cuda) if needs_reference else {}
    if reference_name is None:
        reference_name = "the reference statistics" if reference_stats is not None else \
            f"the {len(reference)} reference images"
    reference_name = f"{reference_name} ({extractor} features)"
    if "fid" in metrics and reference_stats is None:
        reference_stats = fid_statistics(reference_features[layers["fid"]])
    if "kid" in metrics:
        options["kid_kernel_poly_gamma"] = kid_kernel_gamma(extractor, reference_features[layers["kid"]])
    raw = _scores(sample_features, reference_features, reference_stats, metrics, layers, options,
                  reference_name=reference_name)
    out = _summarise(raw, extractor, len(samples), len(reference), subset)
    if "kid" in metrics:
        out[KID_GAMMA] = options["kid_kernel_poly_gamma"]
    if bootstrap_rounds:
        out.update(bootstrap_errors(sample_features, reference_features, reference_stats, metrics, layers, options,
                                    rounds=int(bootstrap_rounds), seed=int(seed), reference_name=reference_name))
    return out


def kid_kernel_gamma(extractor: str, reference_features: torch.Tensor) -> float:
    """γ of KID's kernel k(x, y) = (γ x·y + 1)³. For Inception, Bińkowski et al.'s and torch-fidelity's 1/d: its pool
    features have coordinates of order one, the scale the kernel was made for, and its KID stays torch-fidelity's
    exactly. Another extractor's features can be of any scale (the digits classifier's ReLU features have a mean
    square of ~80): under a cubic kernel γ x·y ≫ 1 makes KID grow as the sixth power of that scale (~10⁶ where a
    readable KID is ~10⁻³) and its spread over subsets swamp it. There γ = 1 / the mean squared norm of the reference's
    features, so that γ x·x averages 1 over the reference: the features' unit, which the network chose, no longer
    matters (KID of features scaled by any c is the same)."""
    if extractor == "inception-v3-compat":
        return 1.0 / reference_features.shape[1]
    mean_square = float(reference_features.double().pow(2).sum(dim=1).mean())
    if not mean_square > 0:
        raise ValueError(f"every {extractor} feature of the reference images is 0: KID's kernel cannot be scaled to "
                         f"them (a classifier whose penultimate layer is dead: train it again)")
    return 1.0 / mean_square


def _layers(fe_kwargs: dict) -> dict[str, str]:
    """The feature layer torch-fidelity takes for each metric from the extractor of ``fe_kwargs``."""
    from torch_fidelity.utils import resolve_feature_layer_for_metric

    return {metric: resolve_feature_layer_for_metric(metric, **fe_kwargs) for metric in METRICS}


def extract_features(images: np.ndarray, *, extractor: str, weights_path=None, metrics: tuple[str, ...] = METRICS,
                     batch_size: int = 200, device: str = "cpu") -> dict[str, torch.Tensor]:
    """torch-fidelity's features of ``images`` (uint8 (N, C, H, W)) for ``metrics``, in one pass of its extractor:
    feature layer → (N, d) CPU tensor (``get_featuresdict_from_dataset``, as ``calculate_metrics`` runs it)."""
    fe_kwargs = _extractor_kwargs(extractor, weights_path)
    layers = _layers(fe_kwargs)
    with _on_device(device) as cuda:
        module = _feature_extractor(fe_kwargs, sorted({layers[m] for m in metrics}), cuda)
        return _features(images, module, batch_size, cuda)


def _feature_extractor(fe_kwargs: dict, layers: list[str], cuda: bool):
    """torch-fidelity's extractor of ``fe_kwargs`` (:func:`_extractor_kwargs`) giving ``layers``."""
    from torch_fidelity.utils import create_feature_extractor

    try:
        return create_feature_extractor(fe_kwargs["feature_extractor"], layers, cuda=cuda, verbose=False,
                                        **{k: v for k, v in fe_kwargs.items() if k != "feature_extractor"})
    except URLError as err:  # only reachable for inception without weights_path, when the download fails
        raise RuntimeError(f"could not download the Inception weights ({err}). {inception_weights_help()}") from err


def _features(images: np.ndarray, module, batch_size: int, cuda: bool) -> dict[str, torch.Tensor]:
    from torch_fidelity.utils import get_featuresdict_from_dataset

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return get_featuresdict_from_dataset(UInt8ImageDataset(images), module, int(batch_size), cuda, save_cpu_ram=True,
                                         verbose=False)


def fid_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """μ, Σ of FID features (torch-fidelity's ``fid_features_to_statistics``), both float64 (μ is float32 there:
    the conversion is exact)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    stats = fid_features_to_statistics(features)
    return np.asarray(stats["mu"], dtype=np.float64), np.asarray(stats["sigma"], dtype=np.float64)


def fid_between(sample_stats, reference_stats, *, reference_name: str = "the reference statistics") -> float:
    """FID between two (μ, Σ) pairs, by torch-fidelity's ``fid_statistics_to_metric``; never negative: a value below 0
    within rounding (:func:`fid_rounding`) is 0, one further below is refused, naming ``reference_name``."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    (mu1, sigma1), (mu2, sigma2) = sample_stats, reference_stats
    if len(mu1) != len(mu2):
        raise ValueError(f"the reference statistics have {len(mu2)} features but the samples' extractor gives "
                         f"{len(mu1)}: they are statistics of another feature extractor")
    fid = float(fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2},
                                         verbose=False)[KEY_METRIC_FID])
    if fid >= 0:
        return fid
    rounding = fid_rounding(sigma1, sigma2)
    if fid < -rounding:
        raise ValueError(f"FID of the samples ({len(mu1)} features) against {reference_name} is {fid:.6g}, below 0 "
                         f"beyond rounding (−{rounding:.3g}): a Σ is not a covariance matrix; no FID is written")
    return 0.0


def fid_rounding(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """How far below 0 rounding alone can take torch-fidelity's FID, ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂): it
    sums the square roots of the d eigenvalues of Σ₁Σ₂ (``numpy.linalg.eigvals``), each within about
    d·ε·‖Σ₁‖‖Σ₂‖ of its value (ε: float64's); where Σ₁Σ₂ is singular (fewer images than features), each null
    eigenvalue can so add up to √(d·ε·‖Σ₁‖‖Σ₂‖) to the trace, twice that to FID."""
    d = len(sigma1)
    return 2 * d * float(np.sqrt(d * np.finfo(np.float64).eps * np.linalg.norm(sigma1) * np.linalg.norm(sigma2)))


def _scores(sample_features: dict, reference_features: dict, reference_stats, metrics, layers: dict, options: dict,
            *, reference_name: str = "the reference statistics") -> dict:
    """torch-fidelity's metric functions on extracted features (its result keys)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID
    from torch_fidelity.metric_isc import isc_featuresdict_to_metric
    from torch_fidelity.metric_kid import kid_featuresdict_to_metric
    from torch_fidelity.metric_prc import prc_featuresdict_to_metric

    raw = {}
    if "isc" in metrics:
        raw.update(isc_featuresdict_to_metric(sample_features, layers["isc"], **options))
    if "fid" in metrics:
        raw[KEY_METRIC_FID] = fid_between(fid_statistics(sample_features[layers["fid"]]), reference_stats,
                                          reference_name=reference_name)
    if "kid" in metrics:
        raw.update(kid_featuresdict_to_metric(sample_features, reference_features, layers["kid"], **options))
    if "prc" in metrics:
        raw.update(prc_featuresdict_to_metric(sample_features, reference_features, layers["prc"], **options))
    return raw


#: Each bootstrap round computes KID on this many subsets (torch-fidelity's default is 100, for the value itself: here
#: the spread over rounds is wanted, and KID's kernels are most of a round's time).
BOOTSTRAP_KID_SUBSETS = 4


def bootstrap_errors(sample_features: dict, reference_features: dict, reference_stats, metrics, layers: dict,
                     options: dict, *, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0,
                     reference_name: str = "the reference statistics") -> dict:
    """The bootstrap standard errors of FID, IS and KID over the sample set (Efron & Tibshirani 1993): ``rounds``
    times, draw as many samples as there are with replacement (``numpy.random.default_rng(seed)``), compute each
    metric by torch-fidelity's functions on the drawn samples' features against the same reference, and take the
    standard deviation (ddof = 1) over rounds. It measures how much the score moves with the draw of the samples,
    the reference held fixed; a difference of two settings' scores below ~2√(se₁² + se₂²) is not distinguishable at
    this sample count (:func:`ddpm.report.tables.distinguishable`). Duplicates in a draw lower the features' spread, so
    FID's draws sit above the value itself: only their spread is used, never their mean."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN

    wanted = [m for m in ("fid", "isc", "kid") if m in metrics]
    keys = {"fid": (KEY_METRIC_FID, "fid_se"), "isc": (KEY_METRIC_ISC_MEAN, "is_se"),
            "kid": (KEY_METRIC_KID_MEAN, "kid_se")}
    rng = np.random.default_rng(seed)
    n = len(next(iter(sample_features.values())))
    draws = {m: [] for m in wanted}
    for _ in range(rounds):
        index = torch.from_numpy(rng.integers(0, n, size=n))
        drawn = {layer: features[index] for layer, features in sample_features.items()}
        raw = _scores(drawn, reference_features, reference_stats, wanted, layers,
                      {**options, "kid_subsets": BOOTSTRAP_KID_SUBSETS}, reference_name=reference_name)
        for m in wanted:
            draws[m].append(raw[keys[m][0]])
    out = {keys[m][1]: float(np.std(draws[m], ddof=1)) if rounds > 1 else float("nan") for m in wanted}
    return {**out, "bootstrap_rounds": int(rounds)}


def _summarise(raw: dict, extractor: str, n_samples: int, n_reference: int, kid_subset_size: int) -> dict:
    from torch_fidelity import (KEY_METRIC_FID, KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, KEY_METRIC_KID_MEAN,
                                KEY_METRIC_KID_STD, KEY_METRIC_PRECISION, KEY_METRIC_RECALL)

    keys = {"fid": KEY_METRIC_FID, "is_mean": KEY_METRIC_ISC_MEAN, "is_std": KEY_METRIC_ISC_STD,
            "kid_mean": KEY_METRIC_KID_MEAN, "kid_std": KEY_METRIC_KID_STD,
            "precision": KEY_METRIC_PRECISION, "recall": KEY_METRIC_RECALL}
    out = {ours: float(raw[theirs]) for ours, theirs in keys.items() if theirs in raw}
    out.update(extractor=extractor, num_samples=int(n_samples), num_reference=int(n_reference),
               kid_subset_size=int(kid_subset_size))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Baseline


#: The Gaussian baseline's full covariance is over at most this many pixel values (C·H·W): 3×32×32, CIFAR-10's, is
#: 75 MB in float64. Larger images are fitted at the largest side that fits, by averaging s×s blocks, and the draws
#: are enlarged back (each value repeated over its block); the baseline's JSON says so.
GAUSSIAN_MAX_DIM = 3 * 32 * 32
#: Images whose moments are summed at once (float64): the train split is read a block at a time, never whole.
GAUSSIAN_BLOCK = 2048


def gaussian_factor(shape) -> int:
    """The block side s by which the Gaussian baseline averages images of ``shape`` (C, H, W): 1 when C·H·W is at
    most :data:`GAUSSIAN_MAX_DIM`, else the smallest divisor s of H and W with C·(H/s)·(W/s) within it."""
    channels, height, width = (int(v) for v in shape)
    for s in range(1, max(height, width) + 1):
        if height % s == 0 and width % s == 0 and channels * (height // s) * (width // s) <= GAUSSIAN_MAX_DIM:
            return s
    return max(height, width)


def _pooled(images: np.ndarray, s: int) -> np.ndarray:
    """uint8 (n, C, H, W) → float64 (n, C·(H/s)·(W/s)): the means of s×s blocks."""
    n, c, h, w = images.shape
    x = images.astype(np.float64)
    if s > 1:
        x = x.reshape(n, c, h // s, s, w // s, s).mean(axis=(3, 5))
    return x.reshape(n, -1)


def gaussian_baseline_samples(train_images, n: int, seed: int) -> np.ndarray:
    """``n`` samples of a Gaussian fitted to ``train_images`` (uint8 (N, C, H, W), in memory or on disk): mean and
    full covariance over all C·H·W pixels in float64, drawn with ``numpy.random.default_rng(seed)``, rounded, clipped
    to 0..255. The moments are summed over blocks of images, so the split is never in memory as floats. Images of
    more than :data:`GAUSSIAN_MAX_DIM` values are fitted on s×s block means (:func:`gaussian_factor`) and each draw
    enlarged back by repeating its values.

    It reproduces every pixel's mean and every pairwise pixel correlation, and nothing more: a model that does not
    beat it on FID has learnt no more than second-order pixel statistics."""
    check_images(train_images, "train_images", min_count=2)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    shape = tuple(train_images.shape[1:])
    s = gaussian_factor(shape)
    total, count, first = None, 0, None
    for start in range(0, len(train_images), GAUSSIAN_BLOCK):
        x = _pooled(np.asarray(train_images[start:start + GAUSSIAN_BLOCK]), s)
        if first is None:  # centred on the first block's mean: the sums of squares keep their precision
            first = x.mean(axis=0)
            total, outer = np.zeros_like(first), np.zeros((len(first), len(first)))
        x = x - first
        total += x.sum(axis=0)
        outer += x.T @ x
        count += len(x)
    mean = total / count
    cov = (outer - count * np.outer(mean, mean)) / (count - 1)
    # Singular covariance (e.g. the digits' always-blank border pixels) is fine for the SVD method; cov is PSD.
    draws = np.random.default_rng(seed).multivariate_normal(mean + first, cov, size=int(n), method="svd",
                                                            check_valid="ignore")
    c, h, w = shape
    draws = draws.reshape(int(n), c, h // s, w // s)
    if s > 1:
        draws = draws.repeat(s, axis=2).repeat(s, axis=3)
    return np.clip(np.round(draws), 0, 255).astype(np.uint8)


def tracked_scores(scores: dict, *, snapshot: bool = False) -> list[tuple[dict, int]]:
    """What a FID job logs to its setting's MLflow run, as (metrics, step) pairs: the final checkpoint's
    :data:`TRACKED_SCORES` under their own names at step 0; where the samples come from the checkpoint of step N
    (``scores["training_step"]``), also as ``<name>_over_training`` at step N, a point of the curve of FID over
    training; for a snapshot (``snapshot``), only that point."""
    logged = {key: value for key, value in scores.items() if key in TRACKED_SCORES}
    cost = {key: value for key, value in scores.items() if key in SAMPLING_COST}  # beside the final's scores
    pairs = [] if snapshot else [({**logged, **cost}, 0)]
    if scores.get("training_step") is not None:
        pairs.append(({f"{key}_over_training": value for key, value in logged.items()}, scores["training_step"]))
    return pairs


#: How a FID / IS result was computed (its JSON's keys), as the tags ``ddpm.fid.<key>`` of the MLflow runs it goes to.
FID_CONDITIONS = ("num_samples", "extractor", "extractor_weights", "resize", "reference_split", "model_weights",
                  "sample_seed", "sample_noise")


def fid_tags(scores: dict) -> dict[str, str]:
    """:data:`FID_CONDITIONS` of ``scores`` as MLflow tags, and the reference statistics file where FID used one
    (``ddpm.fid.reference_stats``: its origin, ``ddpm`` or ``foreign``, and the start of its sha256)."""
    tags = {f"ddpm.fid.{key}": "none" if scores[key] is None else str(scores[key])
            for key in FID_CONDITIONS if key in scores}
    reference = scores.get("fid_reference")
    if reference:
        tags["ddpm.fid.reference_stats"] = f"{reference['origin']} {reference['npz_sha256'][:12]}"
    return tags


def write_baseline_scores(kind: str, data_dir, out, *, num_samples: int, seed: int = 0, extractor: str = "classifier",
                          weights=None, device: str = "cpu", bootstrap_rounds: int = 0,
                          reference_images: int | None = None) -> dict:
    """``ddpm evaluate baseline``: the reference rows of the main table, scored against the train split (its first
    ``reference_images``, as the samples' FIDs) exactly as samples are: ``gaussian``
    (:func:`gaussian_baseline_samples`, fitted to the whole train split) or ``test_split`` (its first
    ``num_samples`` images), as JSON."""
    train_images = open_split(data_dir, "train")
    reference = train_images if reference_images is None else train_images.head(reference_images)
    print(f"scoring the {kind.replace('_', ' ')} baseline: {num_samples} images with the {extractor} features against "
          f"the {len(reference)} train images", flush=True)
    extra = {}
    if kind == "gaussian":
        candidates = gaussian_baseline_samples(train_images, num_samples, seed)
        extra["gaussian_block"] = gaussian_factor(train_images.shape[1:])  # 1: fitted on the pixels themselves
    else:
        candidates = open_split(data_dir, "test")[:num_samples]
    scores = fidelity_metrics(candidates, reference, extractor=extractor, weights_path=weights, device=device,
                              bootstrap_rounds=bootstrap_rounds)
    write_json(out, {**scores, **extra, "baseline": kind})
    return scores
