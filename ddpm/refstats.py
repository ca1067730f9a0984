"""FID's reference statistics as files: the feature mean μ and covariance Σ of a data split, computed once and reused.

FID (Heusel et al. 2017) compares two Gaussians fitted to features; the reference's never changes between the runs of
a sweep, so ``ddpm evaluate ref-stats`` writes it once and ``ddpm evaluate fid --ref-stats`` reads it back. Features
and statistics are torch-fidelity's own (its feature extractors, ``get_featuresdict_from_dataset``,
``fid_features_to_statistics``), and FID from two statistics is its ``fid_statistics_to_metric``: nothing of the
formula is written here.

A statistics file is pytorch-fid's layout — an ``.npz`` with ``mu`` (d,) and ``sigma`` (d, d), float64 — with a record
beside it (same stem, ``.json``) that says what it is the statistics of::

    {"format", "origin": "ddpm", "extractor", "extractor_weights_sha256", "feature_layer", "feature_dim",
     "input_resolution": [H, W], "resize", "dataset", "split", "split_sha256", "num_images", "npz_sha256"}

:func:`read_ref_stats` refuses a file whose bytes are not those the record vouches for, or that was made for another
extractor, weights, resolution, split or data. A statistics file from elsewhere (pytorch-fid's, clean-fid's: ``mu``
and ``sigma``, no record) is taken only when asked for (``foreign=True``), with only its feature dimension checked.
Every file's ``sigma`` must be a covariance, symmetric positive semi-definite within rounding
(:func:`check_covariance`): against anything else FID can be any number, negative included.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .datasets import SPLITS, check_images, load_split, read_manifest, split_sha256
from .io import load_npz, read_json, save_npz, write_json
from .store import sha256_file

REF_STATS_FORMAT = "ddpm-ref-stats-v1"
MIN_IMAGES = 10  # as ddpm.metrics: a covariance needs several images, FID of a handful means nothing


# ----------------------------------------------------------------------------------------------------------------
# What a statistics file is of


def record_path(npz_path: str | os.PathLike) -> Path:
    """The record beside a statistics file: ``stats/train.npz`` → ``stats/train.json``."""
    return Path(npz_path).with_suffix(".json")


def feature_layer(extractor: str) -> str:
    """torch-fidelity's FID layer of ``extractor`` (``"2048"`` for Inception, ``"penultimate"`` for the classifier)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from .features import ClassifierFeatureExtractor

    cls = {"inception-v3-compat": FeatureExtractorInceptionV3, "classifier": ClassifierFeatureExtractor}[extractor]
    return cls.get_default_feature_layer_for_metric("fid")


def feature_dim(extractor: str, weights=None) -> int:
    """The length of ``extractor``'s FID features: 2048 for Inception, the classifier file's ``feature_dim``."""
    if extractor == "inception-v3-compat":
        return int(feature_layer(extractor))
    from .features import load_classifier

    return int(load_classifier(weights)[1]["arch"]["feature_dim"])


def weights_id(extractor: str, weights=None) -> str:
    """What the extractor's weights are known by: the sha256 of the weights file; for Inception without one, the
    file name of torch-fidelity's download (``weights-inception-2015-12-05-6726825d.pth``: torch.hub's name, which
    carries the first hex digits of its sha256)."""
    if weights is not None:
        return sha256_file(weights)
    if extractor == "inception-v3-compat":
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        return URL_INCEPTION_V3.rsplit("/", 1)[-1]
    raise ValueError(f"extractor={extractor!r} needs a weights file")


def same_weights(recorded: str, current: str) -> bool:
    """Whether two :func:`weights_id` are the same weights: equal, or a torch.hub file name and a sha256 that
    starts with the hash in that name (torch-fidelity's Inception downloaded once, passed as a file another time)."""
    from torch.hub import HASH_REGEX

    if recorded == current:
        return True
    for name, digest in ((recorded, current), (current, recorded)):
        found = HASH_REGEX.search(name)
        if found and len(found.group(1)) >= 8 and re.fullmatch(r"[0-9a-f]{64}", digest) \
                and digest.startswith(found.group(1)):
            return True
    return False


def resize_record(extractor: str, resolution, weights=None) -> dict | None:
    """How torch-fidelity's ``extractor`` resizes images of ``resolution`` (H, W) before its network: Inception always
    to 299×299, bilinearly as TensorFlow 1.x did (``interpolate_bilinear_2d_like_tensorflow1x``); the classifier not
    at all at its training size (None), else bilinearly with antialiasing to that size."""
    height, width = (int(s) for s in resolution)
    if extractor == "inception-v3-compat":
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        size = FeatureExtractorInceptionV3.INPUT_IMAGE_SIZE
        return {"method": "bilinear, as TensorFlow 1.x (torch-fidelity interpolate_bilinear_2d_like_tensorflow1x)",
                "size": [size, size]}
    from .features import load_classifier

    input_shape = [int(s) for s in load_classifier(weights)[1]["input_shape"][1:]]
    if input_shape == [height, width]:
        return None
    return {"method": "bilinear, antialiased (torch.nn.functional.interpolate)", "size": input_shape}


# ----------------------------------------------------------------------------------------------------------------
# Computing


def _fid_statistics(images: np.ndarray, *, extractor: str, weights, device: str, batch_size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """μ, Σ of ``images``' FID features, float64, by the code :func:`ddpm.metrics.fidelity_metrics` uses
    (torch-fidelity's extractor and ``fid_features_to_statistics``)."""
    from .metrics import extract_features, fid_statistics

    (features,) = extract_features(images, extractor=extractor, weights_path=weights, metrics=("fid",),
                                   batch_size=batch_size, device=device).values()
    return fid_statistics(features)


def compute_ref_stats(images: np.ndarray, *, extractor: str, weights=None, device: str = "cpu",
                      batch_size: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """FID's reference statistics of ``images`` (uint8 (N, C, H, W), C ∈ {1, 3}): the mean (d,) and covariance (d, d)
    of their ``extractor`` features, float64, exactly those torch-fidelity fits when it computes FID against them."""
    check_images(images, "images", min_count=MIN_IMAGES)
    return _fid_statistics(images, extractor=extractor, weights=weights, device=device, batch_size=batch_size)


def _checked_arrays(mu, sigma, what) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` (d,) and ``sigma`` (d, d), finite, as float64; a ValueError naming ``what`` otherwise."""
    mu, sigma = np.asarray(mu), np.asarray(sigma)
    if mu.ndim != 1 or len(mu) < 1:
        raise ValueError(f"{what}: mu must be a vector (d,), got shape {mu.shape}")
    if sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{what}: sigma must be square and match mu ({len(mu)}, {len(mu)}), got shape {sigma.shape}")
    if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
        raise ValueError(f"{what}: mu and sigma must be floating point, got {mu.dtype} and {sigma.dtype}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{what}: mu or sigma contains NaN or Inf")
    sigma = sigma.astype(np.float64)
    check_covariance(sigma, f"{what}: sigma")
    return mu.astype(np.float64), sigma


#: How far from symmetric positive semi-definite a covariance may be, relative to its Frobenius norm ‖Σ‖_F: rounding
#: a covariance's entries (float32 storage: relative 6e-8 each) moves each eigenvalue by at most ‖E‖_2 ≤ ‖E‖_F ≤
#: 6e-8 ‖Σ‖_F (Weyl), and computing it in float64 far less; 1e-6 leaves a margin of ~17 over float32 and still refuses
#: any matrix that is not a covariance (FID against one can be any number, negative included).
COVARIANCE_TOLERANCE = 1e-6


def check_covariance(sigma: np.ndarray, what: str) -> None:
    """Refuse a ``sigma`` that is not a covariance: not symmetric (‖Σ − Σᵀ‖_F above :data:`COVARIANCE_TOLERANCE`
    ‖Σ‖_F) or not positive semi-definite (an eigenvalue below −tolerance · ‖Σ‖_F, tested by a Cholesky factorisation
    of Σ + tolerance · ‖Σ‖_F · I; the eigenvalue is computed only to name it)."""
    scale = float(np.linalg.norm(sigma))
    if scale == 0:  # all features constant: a covariance, if a degenerate one
        return
    tolerance = COVARIANCE_TOLERANCE * scale
    asymmetry = float(np.linalg.norm(sigma - sigma.T))
    if asymmetry > tolerance:
        raise ValueError(f"{what} is not symmetric: ‖Σ − Σᵀ‖ = {asymmetry:.6g}, more than {COVARIANCE_TOLERANCE:g} of "
                         f"‖Σ‖ = {scale:.6g}; not a covariance matrix")
    symmetric = (sigma + sigma.T) / 2
    try:
        np.linalg.cholesky(symmetric + tolerance * np.eye(len(sigma)))
    except np.linalg.LinAlgError:
        smallest = float(np.linalg.eigvalsh(symmetric)[0])
        raise ValueError(f"{what} is not positive semi-definite: its smallest eigenvalue is {smallest:.6g}, below "
                         f"−{tolerance:.3g} ({COVARIANCE_TOLERANCE:g} of ‖Σ‖ = {scale:.6g}); not a covariance matrix "
                         f"(FID against it could be any number, negative included)") from None


# ----------------------------------------------------------------------------------------------------------------
# Files


def write_ref_stats(data_dir, out_npz, *, split: str = "train", extractor: str, weights=None, device: str = "cpu",
                    num_images: int | None = None, batch_size: int = 200) -> dict:
    """``ddpm evaluate ref-stats``: :func:`compute_ref_stats` of the ``split`` images of the prepared ``data_dir``
    (its first ``num_images``, default all), written to ``out_npz`` (``mu``, ``sigma``, float64) and its record
    :func:`record_path` beside it, each atomically; the old record goes first, so a half-done rewrite leaves no
    record that vouches for the new file. Returns the record."""
    out_npz = Path(out_npz)
    if out_npz.suffix != ".npz":
        raise ValueError(f"the statistics file must end in .npz (its record goes beside it as .json), got {out_npz}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    images = load_split(data_dir, split)[0]
    if num_images is not None:
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) \
                or not MIN_IMAGES <= num_images <= len(images):
            raise ValueError(f"num_images must be in {MIN_IMAGES}..{len(images)} (the {split} split of {data_dir} "
                             f"has {len(images)} images), got {num_images!r}")
        images = images[:int(num_images)]
    mu, sigma = compute_ref_stats(images, extractor=extractor, weights=weights, device=device, batch_size=batch_size)
    resolution = [int(s) for s in images.shape[2:]]
    record = {
        "format": REF_STATS_FORMAT,
        "origin": "ddpm",
        "extractor": extractor,
        "extractor_weights_sha256": weights_id(extractor, weights),
        "feature_layer": feature_layer(extractor),
        "feature_dim": int(len(mu)),
        "input_resolution": resolution,
        "resize": resize_record(extractor, resolution, weights),
        "dataset": read_manifest(data_dir).get("dataset"),
        "split": split,
        "split_sha256": split_sha256(data_dir, split),
        "num_images": int(len(images)),
    }
    record_path(out_npz).unlink(missing_ok=True)
    save_npz(out_npz, mu=mu, sigma=sigma)
    record["npz_sha256"] = sha256_file(out_npz)
    write_json(record_path(out_npz), record)
    return record


def read_ref_stats(path, *, extractor: str, resolution, split: str, weights=None, foreign: bool = False,
                   split_sha256: str | None = None, num_images: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, dict]:
    """``mu``, ``sigma`` (float64) and the record of a statistics file, refused (ValueError naming what) unless it is
    what this evaluation needs: the file's sha256 is the record's ``npz_sha256`` (unchanged since written), and it was
    made with ``extractor`` and ``weights``, from images of ``resolution`` ((H, W) or one int), of ``split`` (and,
    where given, of the split whose images have ``split_sha256``, and of its first ``num_images``).

    A file without a record (pytorch-fid's or clean-fid's layout) is refused unless ``foreign``; then only its
    feature dimension is checked against ``extractor``'s, and the record returned is
    ``{"origin": "foreign", "npz_sha256": ...}``."""
    from .metrics import _extractor_kwargs

    _extractor_kwargs(extractor, weights)  # a known extractor, with its weights file where it needs one
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics file not found: {path} (write one with "
                                "`ddpm evaluate ref-stats`)")
    meta_path = record_path(path)
    if not meta_path.is_file():
        if not foreign:
            raise ValueError(f"{path} has no record {meta_path.name} beside it, so nothing says what it is the "
                             f"statistics of: not written by `ddpm evaluate ref-stats`. A statistics file from "
                             f"elsewhere (pytorch-fid, clean-fid: mu and sigma) is used only when asked for "
                             f"(foreign=True, --foreign-ref-stats)")
        meta = {"origin": "foreign", "npz_sha256": sha256_file(path)}
    else:
        meta = _read_record(meta_path)
        actual = sha256_file(path)
        if actual != meta.get("npz_sha256"):
            raise ValueError(f"checksum mismatch for {path}: its record {meta_path.name} has npz_sha256 "
                             f"{meta.get('npz_sha256')}, the file has {actual}; the file changed or is corrupt since "
                             f"it was written: write it again (`ddpm evaluate ref-stats`)")
    arrays = load_npz(path, ("mu", "sigma"))
    mu, sigma = _checked_arrays(arrays["mu"], arrays["sigma"], str(path))
    if meta["origin"] == "ddpm":
        _check_record(path, meta, mu, extractor=extractor, weights=weights, resolution=resolution, split=split,
                      split_sha256=split_sha256, num_images=num_images)
    expected = feature_dim(extractor, weights)
    if len(mu) != expected:
        raise ValueError(f"{path} has statistics of {len(mu)} features but extractor={extractor!r} gives {expected}: "
                         f"they are statistics of another feature extractor")
    return mu, sigma, meta


def _read_record(meta_path: Path) -> dict:
    meta = read_json(meta_path, hint="write the statistics again")
    if meta.get("format") != REF_STATS_FORMAT or meta.get("origin") != "ddpm":
        raise ValueError(f"{meta_path} is not the record of a `ddpm evaluate ref-stats` file")
    return meta


def _check_record(path: Path, meta: dict, mu: np.ndarray, *, extractor, weights, resolution, split,
                  split_sha256, num_images=None) -> None:
    """Every way the record says the file is of something else than this evaluation needs, in one ValueError."""
    height, width = (resolution, resolution) if isinstance(resolution, (int, np.integer)) else resolution
    wanted = {"extractor": extractor, "input_resolution": [int(height), int(width)], "split": split}
    if split_sha256 is not None:
        wanted["split_sha256"] = split_sha256
    if num_images is not None:
        wanted["num_images"] = int(num_images)
    problems = [f"{key} is {meta.get(key)!r} there, {value!r} here" for key, value in wanted.items()
                if meta.get(key) != value]
    if extractor == meta.get("extractor"):  # weights of another extractor differ anyway: named once, as extractor
        current = weights_id(extractor, weights)
        if not same_weights(str(meta.get("extractor_weights_sha256")), current):
            problems.append(f"extractor_weights_sha256 is {meta.get('extractor_weights_sha256')!r} there, "
                            f"{current!r} here (other weights)")
    if meta.get("feature_dim") != len(mu):
        problems.append(f"feature_dim is {meta.get('feature_dim')!r} in the record but mu has {len(mu)} features")
    if problems:
        raise ValueError(f"{path} are statistics of something else than this evaluation needs: "
                         + "; ".join(problems) + ". Write the statistics for it (`ddpm evaluate ref-stats`)")


def fid_reference(path, *, extractor: str, weights=None, resolution, split: str = "train", foreign: bool = False,
                  split_sha256: str | None = None, num_images: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, dict]:
    """The statistics file ``path`` checked by :func:`read_ref_stats` (μ, Σ; of the split's first ``num_images``
    where given), and what to record of it as a FID's reference: ``{"stats", "npz_sha256", "origin", "split",
    "num_images"}`` (split and num_images None for a foreign file)."""
    mu, sigma, meta = read_ref_stats(path, extractor=extractor, resolution=resolution, split=split, weights=weights,
                                     foreign=foreign, split_sha256=split_sha256, num_images=num_images)
    return mu, sigma, {"stats": str(path), "npz_sha256": meta["npz_sha256"], "origin": meta["origin"],
                       "split": meta.get("split"), "num_images": meta.get("num_images")}
