"""``ddpm evaluate``: FID / IS / KID, reference statistics, bits/dim, DDIM's reconstruction error, the baselines."""

from __future__ import annotations

import json

from ..samplers.families.ddim import DDIM
from ..vocabulary import BOOTSTRAP_ROUNDS, DECODERS, EXTRACTORS

from .common import (
    ReadPath, WritePath, _add_job_expectations, _add_runtime, _add_tracking, _device, _log, _log_to_run, _runs,
    _speed, _tag, passes_divergence_on,
)


def _add_reference_images(p):
    p.add_argument("--ref-images", type=int, default=None,
                   help="the reference: the first N train images (default: all; DDPM's LSUN FIDs took 50,000)")


def _add_bootstrap(p):
    p.add_argument("--bootstrap-rounds", type=int, default=BOOTSTRAP_ROUNDS,
                   help="rounds of the bootstrap over the samples behind the standard errors of FID, IS and KID "
                        f"(fid_se, is_se, kid_se; 0: none; default: {BOOTSTRAP_ROUNDS})")


def add_fid(p):
    p.add_argument("--samples", required=True, type=ReadPath, help="the gathered samples.npz")
    p.add_argument("--data", required=True, type=ReadPath, help="the prepared data folder: its train split is the reference")
    p.add_argument("--feature-extractor", default="classifier", choices=EXTRACTORS, help="(default: classifier)")
    p.add_argument("--weights", type=ReadPath, help="extractor weights (the classifier file, or local Inception weights)")
    p.add_argument("--test-reference", action="store_true", help="also FID against the test split (fid_test)")
    p.add_argument("--training-step", type=int,
                   help="the samples come from the checkpoint of this step: also log the scores to MLflow as a curve "
                        "(fid_over_training, is_mean_over_training, … at this step)")
    p.add_argument("--snapshot", action="store_true",
                   help="a snapshot for FID over training, not the final checkpoint: log only the curve's point")
    p.add_argument("--sampler-file", type=ReadPath, help="the samples' sampler.json: log to the sampler point's run")
    p.add_argument("--grid", type=ReadPath, help="the samples' grid (a PNG), attached to the runs the scores go to")
    p.add_argument("--ref-stats", type=ReadPath, help="FID against this statistics file of the train split (`ddpm evaluate "
                   "ref-stats`, checked against --feature-extractor, --weights and --data) instead of the train images' "
                   "features; KID and precision/recall still use the train images")
    p.add_argument("--foreign-ref-stats", action="store_true",
                   help="--ref-stats is a file from elsewhere (pytorch-fid / clean-fid layout: mu and sigma, no .json "
                        "record beside it): use it, checking only its feature dimension")
    _add_reference_images(p)
    _add_bootstrap(p)
    p.add_argument("--out", required=True, type=WritePath, help="the scores, fid_is.json")
    _add_job_expectations(p)
    _add_tracking(p, sampler_run=True)
    _add_runtime(p)


@passes_divergence_on("out", inputs="samples")
def cmd_fid(args):
    from ..evaluate import write_scores
    from ..metrics import fid_tags, tracked_scores
    from ..samplers.point import read_sampler_file
    from ..tracking import finish_run

    scores = write_scores(args.samples, args.data, args.out, extractor=args.feature_extractor, weights=args.weights,
                          device=_device(args.device), test_reference=args.test_reference,
                          training_step=args.training_step, setting=args.setting, ref_stats=args.ref_stats,
                          ref_stats_foreign=args.foreign_ref_stats, bootstrap_rounds=args.bootstrap_rounds,
                          reference_images=args.ref_images)
    point = read_sampler_file(args.sampler_file) if args.sampler_file else None
    runs = _runs(args, point)
    for index, (metrics, step) in enumerate(tracked_scores(scores, snapshot=args.snapshot)):
        if index == 0 and not args.snapshot:  # the final checkpoint's scores and what sampling cost (listed first)
            _log(runs.scores, metrics, step=runs.step)
        else:  # a point of FID over training
            _log(runs.curve, metrics, step=step)
    if args.grid:
        _log(runs.scores, {}, artifact=args.grid)
    if not args.snapshot:  # how the final scores were computed: sample count, extractor, reference, weights, seed
        _tag(runs.scores, fid_tags(scores))
    if point is not None:  # the point's last job
        for uri, run_id in runs.scores:
            finish_run(uri, run_id)
    print(json.dumps(scores))


def add_ref_stats(p):
    p.add_argument("--data", required=True, type=ReadPath, help="the prepared data folder (`ddpm prepare`)")
    p.add_argument("--split", choices=["train", "test"], default="train",
                   help="the split whose images the statistics are of (default: train, FID's reference)")
    p.add_argument("--out", required=True, type=WritePath, help="the statistics file, .npz (mu, sigma: pytorch-fid's layout); its "
                   "record goes beside it (same stem, .json)")
    p.add_argument("--feature-extractor", default="classifier", choices=EXTRACTORS,
                   help="the feature extractor FID will be computed with (default: classifier)")
    p.add_argument("--weights", type=ReadPath, help="extractor weights (the classifier file, or local Inception weights)")
    p.add_argument("--num-images", type=int, default=None, help="the split's first N images (default: all)")
    p.add_argument("--batch-size", type=int, default=200, help="images per batch of features (default: 200)")
    _add_runtime(p)


def cmd_ref_stats(args):
    from ..refstats import write_ref_stats

    record = write_ref_stats(args.data, args.out, split=args.split, extractor=args.feature_extractor,
                             weights=args.weights, device=_device(args.device), num_images=args.num_images,
                             batch_size=args.batch_size)
    print(f"FID statistics of {record['num_images']} {args.split} images ({record['feature_dim']} "
          f"{args.feature_extractor} features) in {args.out}")


def add_nll(p):
    p.add_argument("--checkpoint", required=True, type=ReadPath, help="a checkpoint.pt (trained or imported)")
    p.add_argument("--data", required=True, type=ReadPath, help="the prepared data folder")
    p.add_argument("--split", choices=["test", "train"], default="test", help="whose images (default: test)")
    p.add_argument("--start", type=int, default=0, help="index of the first image")
    p.add_argument("--count", type=int, default=None, help="how many images (default: the rest of the split)")
    p.add_argument("--batch-size", type=int, default=200, help="images per batch (default: 200)")
    p.add_argument("--timesteps-per-pass", type=int, default=1,
                   help="timesteps of a batch that go through the network together: batch × this inputs a pass; "
                        "a batch of few images keeps the network busier so (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="with the index, seeds each image's noise (default: 0)")
    p.add_argument("--decoder", choices=DECODERS, default="exact",
                   help="L_0's decoder likelihood: exact (normal CDF), or official (the papers' code: tanh "
                        "approximation, every bin floored at 1e-12) for parity with published NLLs (default: exact)")
    p.add_argument("--out", required=True, type=WritePath, help="the shard's per-image terms (.npz)")
    _add_job_expectations(p)
    _add_runtime(p, speed=True)


@passes_divergence_on("out")
def cmd_nll(args):
    from ..evaluate import write_nll_shard

    shard = write_nll_shard(args.checkpoint, args.data, args.out, setting=args.setting, start=args.start,
                            count=args.count, batch_size=args.batch_size, seed=args.seed, device=_device(args.device),
                            split=args.split, speed=_speed(args), decoder=args.decoder,
                            timesteps_per_pass=args.timesteps_per_pass)
    print(f"bits/dim of {args.split} images {shard['indices'][0]}..{shard['indices'][-1]}: {shard['total_bpd'].mean():.4f}")


def add_nll_gather(p):
    p.add_argument("--shards", nargs="+", required=True, type=ReadPath, help="the bits/dim shards (.npz) of one setting")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="the shards' split: MLflow gets bpd (test) or bpd_train (train)")
    p.add_argument("--out", required=True, type=WritePath, help="nll.json: bits/dim and its standard error")
    _add_job_expectations(p)
    _add_tracking(p)


@passes_divergence_on("out", inputs="shards")
def cmd_nll_gather(args):
    from ..gather import tracked_bpd, write_gathered_nll

    result = write_gathered_nll(args.shards, args.out, split=args.split, setting=args.setting)
    _log_to_run(args, tracked_bpd(result))
    print(f"bits/dim {result['bpd']:.4f} ± {result['bpd_stderr']:.4f} over {result['num_images']} {args.split} images")


def add_reconstruction(p):
    p.add_argument("--checkpoint", required=True, type=ReadPath, help="a checkpoint.pt (trained or imported)")
    p.add_argument("--data", required=True, type=ReadPath, help="the prepared data folder: its test split is encoded and decoded")
    p.add_argument("--steps", type=int, required=True, help="S, the steps of the encoding and of the decoding")
    p.add_argument("--skip", choices=DDIM.skips, default=DDIM.skips[0],
                   help="which S of the T steps: uniform or quadratic (DDIM Appendix D.2) (default: uniform)")
    p.add_argument("--count", type=int, default=None, help="test images 0..N-1 (default: the whole test split)")
    p.add_argument("--batch-size", type=int, default=250, help="images per batch (default: 250)")
    p.add_argument("--out", required=True, type=WritePath, help="the result (.json): the error, its standard error, S, the network "
                   "evaluations, the checkpoint's provenance")
    _add_job_expectations(p)
    _add_tracking(p)
    _add_runtime(p, speed=True)


@passes_divergence_on("out")
def cmd_reconstruction(args):
    from ..reconstruction import METRIC, tracked_reconstruction, write_reconstruction

    result = write_reconstruction(args.checkpoint, args.data, args.out, setting=args.setting, steps=args.steps,
                                  skip=args.skip, count=args.count, batch_size=args.batch_size,
                                  device=_device(args.device), speed=_speed(args))
    metrics, step = tracked_reconstruction(result)
    _log_to_run(args, metrics, step=step)
    print(f"reconstruction error (per-dimension MSE on [0, 1]) on S = {args.steps} steps each way, "
          f"{result['num_images']} test images: {result[METRIC]:.4g} ± {result[METRIC + '_stderr']:.2g}")


def add_baseline(p):
    p.add_argument("--kind", choices=["gaussian", "test_split"], required=True,
                   help="a Gaussian fitted to the train pixels, or the test split itself")
    p.add_argument("--data", required=True, type=ReadPath, help="the prepared data folder")
    p.add_argument("--feature-extractor", default="classifier", choices=EXTRACTORS, help="(default: classifier)")
    p.add_argument("--weights", type=ReadPath, help="extractor weights (the classifier file, or local Inception weights)")
    p.add_argument("--num-samples", type=int, default=1000, help="images to score (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Gaussian's draws (default: 0)")
    _add_reference_images(p)
    _add_bootstrap(p)
    p.add_argument("--out", required=True, type=WritePath, help="the scores (.json)")
    _add_runtime(p)


def cmd_baseline(args):
    from ..metrics import write_baseline_scores

    scores = write_baseline_scores(args.kind, args.data, args.out, num_samples=args.num_samples, seed=args.seed,
                                   extractor=args.feature_extractor, weights=args.weights, device=_device(args.device),
                                   bootstrap_rounds=args.bootstrap_rounds, reference_images=args.ref_images)
    print(json.dumps(scores))
