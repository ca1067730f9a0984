"""Merging the shards of one setting's jobs: sample shards into one set of samples with what it cost, bits/dim shards
into the bound (DDPM Table 2's L_T … L_0 terms); torch-free, so a merge job starts without torch."""

from __future__ import annotations

import numpy as np

from .datasets import check_images
from .io import load_npz, save_npz, write_json
from .provenance import agreed_provenance, provenance_arrays
from .vocabulary import SAMPLE_RECORD, SAMPLING_COST


NLL_SHARD_KEYS = ("indices", "total_bpd", "prior_bpd", "vb_sum", "xstart_mse_sum", "decoder")


def gather_nll(shard_paths) -> dict:
    """Merge NLL shards into the test-set bound: mean bits/dim, its standard error, per-timestep terms, and the
    decoder likelihood they used; shards that used different ones are refused."""
    shards = [load_npz(p, NLL_SHARD_KEYS) for p in shard_paths]
    if not shards:
        raise ValueError("no NLL shards to gather")
    for path, shard in zip(shard_paths, shards):
        n = len(shard["indices"])
        if shard["total_bpd"].shape != (n,) or shard["prior_bpd"].shape != (n,) or \
                shard["vb_sum"].shape != shards[0]["vb_sum"].shape:
            raise ValueError(f"{path} is not an NLL shard of this run: its arrays have inconsistent shapes")
    decoders = {str(s["decoder"]) for s in shards}
    if len(decoders) > 1:
        raise ValueError(f"the NLL shards used different decoder likelihoods ({', '.join(sorted(decoders))}): delete "
                         f"the stale shards and run the workflow again")
    indices = np.concatenate([s["indices"] for s in shards])
    if len(np.unique(indices)) != len(indices):
        raise ValueError(f"NLL shards overlap: {len(indices) - len(np.unique(indices))} test images counted twice")
    total = np.concatenate([s["total_bpd"] for s in shards])
    n = len(total)
    vb = sum(s["vb_sum"] for s in shards) / n
    mse = sum(s["xstart_mse_sum"] for s in shards) / n
    return {
        "bpd": float(total.mean()),
        "bpd_stderr": float(total.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "prior_bpd": float(np.concatenate([s["prior_bpd"] for s in shards]).mean()),
        "num_images": n,
        "vb_per_timestep": vb.tolist(),
        "xstart_mse_per_timestep": mse.tolist(),
        "decoder": decoders.pop(),
    }


def gather_samples(shard_paths) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate sample shards in index order; every index 0 … N-1 must be present exactly once."""
    shards = [load_npz(p, ("images", "indices")) for p in shard_paths]
    if not shards:
        raise ValueError("no sample shards to gather")
    for path, shard in zip(shard_paths, shards):
        check_images(shard["images"], f"sample shard {path}", shape=shards[0]["images"].shape[1:])
        if shard["indices"].shape != (len(shard["images"]),):
            raise ValueError(f"sample shard {path} has {len(shard['images'])} images but indices of shape "
                             f"{shard['indices'].shape}")
    images = np.concatenate([s["images"] for s in shards])
    indices = np.concatenate([s["indices"] for s in shards])
    order = np.argsort(indices, kind="stable")
    if not np.array_equal(indices[order], np.arange(len(indices))):
        raise ValueError(f"sample shards do not cover indices 0..{len(indices) - 1} exactly once")
    return images[order], indices[order]


def write_gathered_nll(shards, out, *, split: str = "test", setting: str | None = None) -> dict:
    """``ddpm evaluate nll-gather``: :func:`gather_nll` of shards of one checkpoint, as JSON with its provenance."""
    provenance = agreed_provenance(shards, setting=setting)
    result = {**gather_nll(shards), "split": split, **provenance}
    write_json(out, result)
    return result


def tracked_bpd(result: dict) -> dict[str, float]:
    """What a bits/dim merge logs to its setting's MLflow run: ``bpd`` (test split) or ``bpd_train``, and its
    standard error."""
    metric = "bpd" if result["split"] == "test" else "bpd_train"
    return {metric: result["bpd"], f"{metric}_stderr": result["bpd_stderr"]}


def sampling_cost(shard_paths, count: int) -> dict:
    """What drawing the ``count`` images of the shards cost: network evaluations per image (one number: the shards
    must agree) and images per second of sampling (over all the shards' seconds). {} for shards that do not record
    it."""
    shards = [load_npz(p, (), optional=("sampling_seconds", SAMPLING_COST[0])) for p in shard_paths]
    if not all(len(shard) == 2 for shard in shards):
        return {}
    evaluations = {int(shard["network_evaluations"]) for shard in shards}
    if len(evaluations) > 1:
        raise ValueError(f"the sample shards took different numbers of network evaluations per image "
                         f"({sorted(evaluations)}): delete the stale shards and run the workflow again")
    seconds = sum(float(shard["sampling_seconds"]) for shard in shards)
    images_per_s = count / seconds if seconds > 0 else float("nan")
    return dict(zip(SAMPLING_COST, (evaluations.pop(), images_per_s)))


def sample_record(shard_paths) -> dict:
    """What the shards were drawn with (:data:`SAMPLE_RECORD`: EMA or raw weights, the seed, the noise's scheme),
    which they must agree on: a shard that does not record it (written before it was recorded) counts as another
    value beside shards that do; {} for shards that record none of it."""
    shards = [load_npz(p, (), optional=SAMPLE_RECORD) for p in shard_paths]
    record = {}
    for key in SAMPLE_RECORD:
        values = {shard[key].item() if key in shard else "not recorded" for shard in shards}
        if len(values) > 1:
            raise ValueError(f"the sample shards were drawn with different {key.replace('_', ' ')}s "
                             f"({sorted(map(str, values))}): delete the stale shards and run the workflow again")
        if values and values != {"not recorded"}:
            record[key] = values.pop()
    return record


def write_gathered_samples(shards, out, *, setting: str | None = None, sampler: str | None = None
                           ) -> tuple[np.ndarray, dict]:
    """``ddpm gather-samples``: :func:`gather_samples` of shards of one checkpoint and one sampler point (with
    ``setting``, ``sampler``: the ones this job is for), saved with their provenance and what they cost
    (:func:`sampling_cost`); returns the images and that cost."""
    provenance = agreed_provenance(shards, setting=setting, sampler=sampler)
    images, indices = gather_samples(shards)
    cost = sampling_cost(shards, len(images))
    record = sample_record(shards)
    save_npz(out, images=images, indices=indices, **{k: np.array(v) for k, v in {**cost, **record}.items()},
             **provenance_arrays(provenance))
    return images, cost
