"""Evaluation jobs: bits/dim on the test split in shards (merged by :mod:`ddpm.gather`), and the scores of samples.

Each test image's noise is seeded by its index (as each sample is), so the bound does not depend on how the
test set is split into shards or batches.
"""

from __future__ import annotations

import numpy as np
import torch

from .checkpoint import checkpoint_provenance, load_for_sampling
from .provenance import check_provenance, provenance_arrays, read_provenance
from .datasets import check_images, open_split, read_manifest, split_sha256, to_model_range
from .io import load_npz, save_npz, write_json
from .progress import progress as progress_iter
from .noise import SampleNoise
from .speed import FastForward, Speed
from .vocabulary import SAMPLE_RECORD, SAMPLING_COST


@torch.no_grad()
def nll_shard(checkpoint, data_dir, *, start: int, count: int | None, batch_size: int = 100, seed: int = 0,
              device: str = "cpu", progress: bool = True, split: str = "test", speed: Speed = Speed(),
              decoder: str = "exact", timesteps_per_pass: int = 1) -> dict[str, np.ndarray]:
    """The variational bound (``calc_bpd_loop``, L_0 computed as ``decoder`` says) for images ``start`` …
    ``start + count - 1`` of the test split (or of the train split: DDPM Table 1 gives both).

    Returns per image ``total_bpd`` and ``prior_bpd``, per timestep the sums over these images of ``vb``
    (bits/dim) and ``xstart_mse`` (on [-1, 1]), so shards can be merged exactly, and the ``decoder``."""
    model, diffusion, state = load_for_sampling(checkpoint, device=device)
    model = FastForward(model, speed, device, inference=True)  # the bound's terms stay fp32 whatever the network's
    images = open_split(data_dir, split)  # on disk: each batch is read when it is scored
    if tuple(images.shape[1:]) != tuple(state["data_shape"]):
        raise ValueError(f"the {split} images of {data_dir} have shape (C, H, W) = {tuple(images.shape[1:])}, but "
                         f"{checkpoint} was trained on {tuple(state['data_shape'])}")
    stop = len(images) if count is None else start + count
    if not 0 <= start < stop <= len(images):  # never fewer images than asked, silently
        key = "evaluate.nll_num_images" if split == "test" else "evaluate.nll_train_images"
        raise ValueError(f"{split} images {start}..{stop - 1} are out of range: the {split} split of {data_dir} has "
                         f"{len(images)} images (config key '{key}')")
    totals, priors = [], []
    vb_sum = np.zeros(diffusion.num_timesteps)
    mse_sum = np.zeros(diffusion.num_timesteps)
    for first in progress_iter(range(start, stop, batch_size), desc="bits/dim batches", enabled=progress):
        last = min(first + batch_size, stop)
        x0 = to_model_range(images[first:last]).to(device)
        noise = SampleNoise(seed, range(first, last))
        out = diffusion.calc_bpd_loop(model, x0, generator=noise, progress=progress, decoder=decoder,
                                      timesteps_per_pass=timesteps_per_pass)
        totals.append(out["total_bpd"].cpu().numpy())
        priors.append(out["prior_bpd"].cpu().numpy())
        vb_sum += out["vb"].double().sum(0).cpu().numpy()  # in float64: sharding moves it ~1e-16
        mse_sum += out["xstart_mse"].double().sum(0).cpu().numpy()
    return {
        "indices": np.arange(start, stop),
        "total_bpd": np.concatenate(totals),
        "prior_bpd": np.concatenate(priors),
        "vb_sum": vb_sum,
        "xstart_mse_sum": mse_sum,
        "decoder": np.array(decoder),
    }


# ---------------------------------------------------------------------------------------------- the jobs' files
def write_nll_shard(checkpoint, data_dir, out, *, setting: str | None = None, **options) -> dict[str, np.ndarray]:
    """``ddpm evaluate nll``: :func:`nll_shard` saved with the checkpoint's provenance (checked against ``setting``
    and ``data_dir`` first)."""
    provenance = checkpoint_provenance(checkpoint, setting=setting, data_dir=data_dir)
    shard = nll_shard(checkpoint, data_dir, **options)
    save_npz(out, **shard, **provenance_arrays(provenance))
    return shard


def fid_conditions(extractor: str, weights, resolution, *, reference_images: int, preprocess: str | None = None
                   ) -> dict:
    """How a FID was computed, beside its value: the reference (the train split's first ``reference_images``), how
    the data set's images were brought to their size (``preprocess``, an image folder's; None: as published), the
    extractor's weights (sha256, or the name of torch-fidelity's Inception download) and the resize before the
    extractor (None: none)."""
    from .refstats import resize_record, weights_id

    return {"reference_split": "train", "reference_images": int(reference_images), "reference_preprocess": preprocess,
            "extractor_weights": weights_id(extractor, weights), "resize": resize_record(extractor, resolution, weights)}


def reference_split(data_dir, count: int | None = None):
    """FID's reference images: the first ``count`` of the train split of ``data_dir`` (all with None), on disk; fewer
    than ``count`` is refused, naming the config key."""
    images = open_split(data_dir, "train")
    if count is None:
        return images
    if count > len(images):
        raise ValueError(f"evaluate.ref_images: {count:,} reference images asked for, but the train split of "
                         f"{data_dir} has {len(images):,}")
    return images.head(count)


def write_scores(samples, data_dir, out, *, extractor: str, weights=None, device: str = "cpu",
                 test_reference: bool = False, training_step: int | None = None, setting: str | None = None,
                 ref_stats: str | None = None, ref_stats_foreign: bool = False, bootstrap_rounds: int = 0,
                 reference_images: int | None = None) -> dict:
    """``ddpm evaluate fid``: FID / IS / KID / precision-recall of the samples in ``samples`` against the train split
    of ``data_dir`` (its first ``reference_images``, default all: DDPM's LSUN FIDs took 50,000; read from disk as the
    extractor takes them) and FID against its test split (DDPM Table 1's second FID), as JSON with the samples'
    provenance, and with ``bootstrap_rounds`` the bootstrap standard errors of FID, IS and KID
    (:func:`ddpm.metrics.bootstrap_errors`). With ``setting``: samples of another setting, or of a model trained on
    other data, are refused.

    With ``ref_stats``: FID against that statistics file of the train split (``ddpm evaluate ref-stats``; checked by
    :func:`ddpm.refstats.read_ref_stats` before anything is computed, also against the split's checksum) instead of
    the train images' features, recorded as ``fid_reference``; a file from elsewhere (pytorch-fid, clean-fid) only
    with ``ref_stats_foreign``. KID and precision/recall take the train images' features either way."""
    from .metrics import fidelity_metrics
    from .refstats import fid_reference

    if ref_stats_foreign and ref_stats is None:
        raise ValueError("ref_stats_foreign (--foreign-ref-stats) says what the ref_stats file (--ref-stats) is, "
                         "but none was given")
    provenance = read_provenance(samples)
    if setting is not None:
        check_provenance(provenance, samples, setting=setting)
        if provenance.get("data_sha256"):
            check_provenance(provenance, samples, data_sha256=split_sha256(data_dir, "train"))
    reference = reference_split(data_dir, reference_images)
    found = load_npz(samples, ("images",), optional=SAMPLING_COST + SAMPLE_RECORD)
    images = found["images"]
    check_images(images, f"samples in {samples}", shape=reference.shape[1:])  # the data set's shape, exactly
    stats, reference_record = None, None
    if ref_stats is not None:
        *stats, reference_record = fid_reference(ref_stats, extractor=extractor, weights=weights,
                                                 resolution=reference.shape[2:], split="train",
                                                 foreign=ref_stats_foreign, split_sha256=split_sha256(data_dir, "train"),
                                                 num_images=len(reference))
    print(f"scoring {len(images)} samples with the {extractor} features against the {len(reference)} train images"
          + (f" (FID: against {ref_stats})" if ref_stats else "")
          + (f", {bootstrap_rounds} bootstrap rounds" if bootstrap_rounds else ""), flush=True)
    scores = fidelity_metrics(images, reference, extractor=extractor, weights_path=weights, device=device,
                              reference_stats=None if stats is None else tuple(stats), reference_name=ref_stats,
                              bootstrap_rounds=bootstrap_rounds)
    if reference_record is not None:
        scores["fid_reference"] = reference_record
    scores.update({key: found[key].item() for key in SAMPLING_COST + SAMPLE_RECORD if key in found})
    scores.update(fid_conditions(extractor, weights, reference.shape[2:], reference_images=len(reference),
                                 preprocess=read_manifest(data_dir).get("preprocess")))
    print(f"FID {scores['fid']:.4g}, IS {scores['is_mean']:.4g}", flush=True)
    if test_reference:
        test = open_split(data_dir, "test")
        print(f"FID against the {len(test)} test images", flush=True)
        scores["fid_test"] = fidelity_metrics(images, test, extractor=extractor, weights_path=weights, device=device,
                                              metrics=("fid",))["fid"]
        scores["num_test_reference"] = len(test)
    if training_step is not None:
        scores["training_step"] = training_step
    write_json(out, {**scores, **provenance})
    return scores
