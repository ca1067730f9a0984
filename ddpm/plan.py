"""``ddpm plan``: what a config will cost before it is submitted, for the config as the workflow would run it.

Three parts, each from the config alone (no data read, no job run):

* **jobs and their work**: the jobs per Snakemake rule (the counts ``snakemake -n`` lists), and per kind what they do:
  trainings × steps × batch (images); network evaluations of sampling (each sampler point on each setting, FID over
  training's snapshots, the progressive and interpolation figures), of bits/dim (test split and
  ``evaluate.nll_train_images``: T per image) and of DDIM reconstruction (``reconstruction``); images through FID's
  feature extractor;
* **hours**, the work divided by the rates of a ``ddpm bench`` record (:func:`ddpm.benchrecords.find_record`: the
  newest GPU record in ``benchmarks/``, else the newest CPU one, said so), each rate scaled by the ratio of the
  network's FLOPs per image where the config's network differs from the record's (:func:`network_flops`);
* **disk**, approximate: prepared data, checkpoints, samples, reference statistics, the MLflow store.

:func:`make_plan` returns it all as a dict (``ddpm plan --json``), :func:`format_plan` as text. Torch is imported only
to count evaluations (:mod:`ddpm.samplers`), parameters and FLOPs, inside the functions that do.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

from .benchrecords import BENCHMARKS, device_note, find_record, is_gpu, missing_rates, read_record, shown_path
from .configcheck import ConfigError, check_pretrained, load_config
from .datasets import NATIVE_IMAGE_SIZES, known_test_size, known_train_size, list_image_files
from .presets import PRESETS
from .samplers.families.ddim import reconstruction_point
from .settings import expand_sweep
from .samplers.point import SamplerPoint, expand_sampling

#: Image channels of each dataset as prepared (imagefolder images are converted to RGB).
DATASET_CHANNELS = {"digits": 1, "cifar10": 3, "imagefolder": 3}
#: FID's feature dimension per extractor (torch-fidelity's Inception pool; ``ddpm.features``' classifier default).
FEATURE_DIMS = {"inception-v3-compat": 2048, "classifier": 128}
#: The progressive figure's samples (``ddpm progressive --count``' default, as the rule runs it).
PROGRESSIVE_IMAGES = 8
#: The interpolation figure's decoded images (λ = 0, 0.1, …, 1) and where it starts (half of the sampler's steps).
INTERPOLATION_IMAGES, INTERPOLATION_T_FRACTION = 11, 0.5
#: The bench record's rate of each kind: training images/s, sampling and bits/dim network evaluations (image-steps)/s.
RATE_KEYS = {"training": "train_images_per_s", "sampling": "sample_image_steps_per_s",
             "bits/dim": "bpd_image_steps_per_s", "reconstruction": "sample_image_steps_per_s",
             "FID": "fid_images_per_s"}
#: Rough sizes of the MLflow store: bytes per logged metric value (SQLite row and index), per metrics.jsonl line.
MLFLOW_BYTES_PER_VALUE, METRICS_LINE_BYTES, TRAIN_METRICS = 100, 120, 4
KINDS = ("training", "sampling", "bits/dim", "reconstruction", "FID")


# ---------------------------------------------------------------------------------------------- the config
def parse_overrides(entries) -> dict:
    """``--config KEY=VALUE …`` as Snakemake parses it (:func:`snakemake.cli.parse_config`)."""
    from snakemake.cli import parse_config

    try:
        return parse_config(list(entries or []))
    except ValueError as err:
        raise ConfigError("--config", f"{err} (in {' '.join(entries)})") from None


def resolve(configfiles=(), entries=()) -> dict:
    """The config the workflow runs for ``snakemake --configfile FILES --config ENTRIES``
    (:func:`ddpm.configcheck.load_config`); a value the schema refuses becomes a :class:`ConfigError` naming its key."""
    from jsonschema import ValidationError

    overrides = parse_overrides(entries)
    try:
        return load_config(list(configfiles), overrides)[0]
    except (ValueError, OSError):
        raise
    except Exception as err:  # snakemake's WorkflowError around jsonschema's ValidationError
        cause = err.__context__
        if isinstance(cause, ValidationError):
            key = ".".join(str(p) for p in cause.absolute_path) or "(top level)"
            raise ConfigError(key, cause.message) from None
        raise ValueError(f"cannot read the config {', '.join(map(str, configfiles)) or '(default)'}: {err}") from None


def check(config: dict, settings) -> None:
    """The workflow's refusals that change what is planned (``workflow/rules/common.smk``), naming the key; the
    rest (writable folders, srun, Inception weights) are ``snakemake -n``'s to report."""
    dataset, pretrained = config["dataset"], config.get("pretrained") or {}
    if dataset["name"] == "imagefolder":
        for key, value in (("path", dataset["path"]), ("image_size", dataset["image_size"])):
            if value is None:
                raise ConfigError(f"dataset.{key}", f"imagefolder needs dataset.{key}")
        if config["evaluate"]["nll_num_images"] is None:
            raise ConfigError("evaluate.nll_num_images", "imagefolder needs the number of test images to score")
        if reconstruction(config)["steps"] and reconstruction(config)["num_images"] is None:
            raise ConfigError("reconstruction.num_images", "imagefolder needs the number of test images to encode "
                              "and decode")
    late = [s for s in config["fid_over_training"]["steps"] if s >= config["train"]["steps"]]
    if late:
        raise ConfigError("fid_over_training.steps", f"{late} not before the last training step")
    for S in reconstruction(config)["steps"]:
        for T in {s.T for s in settings}:
            if S > T:
                raise ConfigError("reconstruction.steps", f"S = {S} is more than the T = {T} steps of the process")
    if pretrained.get("source") is not None:
        check_pretrained(config, settings)


def reconstruction(config: dict) -> dict:
    """The config's ``reconstruction`` section with its defaults (absent from an older schema: none)."""
    section = config.get("reconstruction") or {}
    return {"steps": list(section.get("steps") or []), "skip": section.get("skip", "uniform"),
            "num_images": section.get("num_images")}


# ---------------------------------------------------------------------------------------------- the data
def count_folder_images(path) -> int | None:
    """Images under an imagefolder's ``path`` (as ``ddpm prepare`` lists them); None where there is no such folder."""
    try:
        return len(list_image_files(Path(path)))
    except (OSError, ValueError):
        return None


def dataset_facts(config: dict) -> dict:
    """Channels, image size and the split sizes (None: unknown before preparation, with ``why``)."""
    dataset = config["dataset"]
    name, fraction = dataset["name"], dataset["test_fraction"]
    size = dataset["image_size"] or NATIVE_IMAGE_SIZES[name]
    train, test, why = known_train_size(name, fraction), known_test_size(name, fraction), None
    if name == "imagefolder":
        n = count_folder_images(dataset["path"])
        if n is None:
            why = f"dataset.path {dataset['path']} has no images here (the workflow refuses it until it does)"
        else:
            test = int(round(n * fraction))  # ddpm.datasets.seeded_split
            train = n - test
    return {"name": name, "channels": DATASET_CHANNELS[name], "image_size": size, "train": train, "test": test,
            "unknown": why}


# ---------------------------------------------------------------------------------------------- the jobs
def shards(total: int, size: int) -> int:
    return math.ceil(total / size) if total else 0


def job_counts(config: dict, settings, points, data: dict) -> dict[str, int]:
    """Jobs per Snakemake rule, as ``snakemake -n`` counts them on a fresh results folder (rules with none left
    out)."""
    n, sample, evaluate = len(settings), config["sample"], config["evaluate"]
    snapshots = len(config["fid_over_training"]["steps"])
    snapshot_samples = config["fid_over_training"]["num_samples"] or sample["num_samples"]
    nll_images = evaluate["nll_num_images"] or data["test"] or 0
    nll_train = evaluate["nll_train_images"] or 0
    imported = (config.get("pretrained") or {}).get("source") is not None
    counts = {
        "all": 1, "report": 1, "mlflow_init": 1, "prepare_data": 1, "baseline": 2,
        "train_classifier": int(evaluate["feature_extractor"] == "classifier"),
        "ref_stats": int(evaluate["ref_stats"] is None),
        "import_pretrained" if imported else "train": n,
        "progressive": n, "interpolate": n,
        "sample": n * len(points) * shards(sample["num_samples"], sample["shard_size"]),
        "gather_samples": n * len(points), "sample_grid": n * len(points), "fid_is": n * len(points),
        "sample_snapshot": n * snapshots * shards(snapshot_samples, sample["shard_size"]),
        "gather_snapshot_samples": n * snapshots, "fid_snapshot": n * snapshots,
        "nll": n * shards(nll_images, evaluate["nll_shard_size"]), "gather_nll": n,
        "nll_train": n * shards(nll_train, evaluate["nll_shard_size"]), "gather_nll_train": n if nll_train else 0,
        "reconstruction": n * len(reconstruction(config)["steps"]),
    }
    return {rule: count for rule, count in counts.items() if count}


# ---------------------------------------------------------------------------------------------- the work
def evaluations(T: int, point: SamplerPoint) -> int:
    """Network evaluations per image of ``point`` on T steps (:func:`ddpm.samplers.network_evaluations`: DDIM's
    quadratic skip counts its distinct steps, e.g. 49 for S = 50 of T = 1000)."""
    from .samplers import network_evaluations

    return network_evaluations(T, point)


def _item(what: str, jobs: int, images: int, per_image: list[int], total: int, partial: bool = False) -> dict:
    """One line of a kind's work; ``partial``: ``total`` leaves out what depends on an unknown split size."""
    return {"what": what, "jobs": jobs, "images": images, "per_image": sorted(set(per_image)), "total": total,
            "partial": partial}


def _known(*counts) -> tuple[int, bool]:
    """The sum of the known counts, and whether any was unknown (None)."""
    return sum(c for c in counts if c is not None), None in counts


def sampling_work(config: dict, settings, points, jobs: dict) -> list[dict]:
    """Network evaluations of sampling: every point on every setting, FID over training's snapshots (the first
    point), the progressive and interpolation figures (the first point)."""
    N = config["sample"]["num_samples"]
    items = []
    for point in points:
        per = [evaluations(s.T, point) for s in settings]
        items.append(_item(f"{point.name} ({_plural(len(settings), 'setting')} × {N:,} samples)",
                           jobs.get("sample", 0) // len(points), N * len(settings), per, N * sum(per)))
    first = [evaluations(s.T, points[0]) for s in settings]
    steps = config["fid_over_training"]["steps"]
    if steps:
        M = config["fid_over_training"]["num_samples"] or N
        items.append(_item(f"FID over training: {len(steps)} snapshots × {M:,} samples, {points[0].name}",
                           jobs["sample_snapshot"], len(settings) * len(steps) * M, first, len(steps) * M * sum(first)))
    items.append(_item(f"progressive figure ({PROGRESSIVE_IMAGES} samples)", len(settings),
                       PROGRESSIVE_IMAGES * len(settings), first, PROGRESSIVE_IMAGES * sum(first)))
    decode = [max(1, round(INTERPOLATION_T_FRACTION * e)) for e in first]  # ddpm.sample.interpolate: from t = S/2
    items.append(_item(f"interpolation figure ({INTERPOLATION_IMAGES} images from t = T/2)", len(settings),
                       INTERPOLATION_IMAGES * len(settings), decode, INTERPOLATION_IMAGES * sum(decode)))
    return items


def bpd_work(config: dict, settings, data: dict, jobs: dict) -> list[dict]:
    """Network evaluations of bits/dim: T per image (one term of the bound per step), test split and train images."""
    evaluate, Ts = config["evaluate"], [s.T for s in settings]
    items = []
    for split, images, rule in (("test", evaluate["nll_num_images"] or data["test"], "nll"),
                                ("train", evaluate["nll_train_images"], "nll_train")):
        if images:
            items.append(_item(f"{split} split, {images:,} images", jobs.get(rule, 0), images * len(settings), Ts,
                               images * sum(Ts)))
    return items


def reconstruction_work(config: dict, settings, data: dict) -> list[dict]:
    """DDIM reconstruction: per S, each image encoded and decoded on the S steps of ``reconstruction.skip``."""
    section = reconstruction(config)
    images = section["num_images"] or data["test"]
    items = []
    for S in section["steps"]:
        per = [2 * evaluations(s.T, reconstruction_point(S, section["skip"])) for s in settings]
        items.append(_item(f"S = {S} ({section['skip']}), {_count(images)} images encoded and decoded", len(settings),
                           (images or 0) * len(settings), per, (images or 0) * sum(per), images is None))
    return items


def fid_work(config: dict, settings, points, data: dict, jobs: dict) -> list[dict]:
    """Images through FID's feature extractor. Every FID job extracts its samples and the reference images (KID and
    precision/recall take their features; FID takes the statistics file); ``evaluate.fid_test`` extracts the
    samples again with the test split. The reference statistics once; the two baselines like a FID job."""
    evaluate, N = config["evaluate"], config["sample"]["num_samples"]
    reference = evaluate.get("ref_images") or data["train"]
    test = data["test"] if evaluate["fid_test"] else 0
    items = []

    def scored(what, jobs_, samples):
        per_job, partial = _known(samples, reference, samples if evaluate["fid_test"] else 0, test)
        return _item(what, jobs_, jobs_ * samples, [], jobs_ * per_job, partial)

    def what(samples):
        return (f"{samples:,} samples and the {_count(reference)} reference images"
                + (f", the samples again with the {_count(test)} test images" if evaluate["fid_test"] else ""))

    items.append(scored("per sampler point: " + what(N), jobs.get("fid_is", 0), N))
    if jobs.get("fid_snapshot"):
        M = config["fid_over_training"]["num_samples"] or N
        items.append(scored("per snapshot: " + what(M), jobs["fid_snapshot"], M))
    if jobs.get("ref_stats"):
        items.append(_item(f"reference statistics: {_count(reference)} train images", 1, reference or 0, [],
                           *_known(reference)))
    tests = None if data["test"] is None else min(N, data["test"])
    items.append(_item(f"baselines: {N:,} Gaussian samples, {_count(tests)} test images, the reference twice", 2,
                       N + (tests or 0), [], *_known(N, tests, reference, reference)))
    return items


def training_work(config: dict, settings) -> list[dict]:
    """Trainings × steps × batch size (images); none for imported weights."""
    if (config.get("pretrained") or {}).get("source") is not None:
        return []
    train = config["train"]
    images = train["steps"] * train["batch_size"]
    what = f"{_plural(len(settings), 'training')} × {train['steps']:,} steps × {train['batch_size']} images"
    return [{"what": what, "jobs": len(settings),
             "steps": train["steps"], "batch_size": train["batch_size"], "images": images * len(settings),
             "per_image": [], "total": images * len(settings), "partial": False}]


def work_by_kind(config: dict, settings, points, data: dict, jobs: dict) -> dict[str, dict]:
    """Per kind: its items, their jobs, and the total (training: images; sampling, bits/dim, reconstruction: network
    evaluations; FID: images through the extractor); ``partial`` where it leaves out what an unknown split size
    would add."""
    kinds = {"training": training_work(config, settings), "sampling": sampling_work(config, settings, points, jobs),
             "bits/dim": bpd_work(config, settings, data, jobs),
             "reconstruction": reconstruction_work(config, settings, data),
             "FID": fid_work(config, settings, points, data, jobs)}
    units = {"training": "images", "FID": "images"}
    out = {}
    for kind, items in kinds.items():
        out[kind] = {"items": items, "jobs": sum(i["jobs"] for i in items), "total": sum(i["total"] for i in items),
                     "partial": any(i["partial"] for i in items), "unit": units.get(kind, "network evaluations")}
    return out


# ---------------------------------------------------------------------------------------------- the network
def _model(preset: str, image_size: int, channels: int, learn_sigma: bool = False):
    import torch

    from .unet import create_model

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return create_model(preset, learn_sigma=learn_sigma, image_size=image_size, in_channels=channels)


@lru_cache(maxsize=None)
def network_flops(preset: str, image_size: int, channels: int) -> int:
    """FLOPs of one forward pass of one image (``torch.utils.flop_counter.FlopCounterMode`` on the meta device)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = _model(preset, image_size, channels)
    with torch.device("meta"):
        x, t = torch.empty(1, channels, image_size, image_size), torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(x, t)
    return int(counter.get_total_flops())


@lru_cache(maxsize=None)
def network_parameters(preset: str, image_size: int, channels: int, learn_sigma: bool) -> int:
    """Parameters of the network a setting trains (twice the output channels with a learned Σ)."""
    return sum(p.numel() for p in _model(preset, image_size, channels, learn_sigma).parameters())


def learns_sigma(setting) -> bool:
    return setting.var_type in ("learned", "learned_range")


# ---------------------------------------------------------------------------------------------- the rates
def work_needs_reconstruction(config: dict) -> bool:
    return bool(reconstruction(config)["steps"])


def rates(config: dict, data: dict, record: dict, path: Path) -> tuple[dict, dict, list[str]]:
    """The record's rates for this config's network: the config's speed (``plain``: the record's plain path, else
    its optimised one), scaled by the record network's FLOPs per image over the config's where they differ."""
    part = "plain" if config["speed"] == "plain" else "optimised"
    missing = missing_rates(record, part)
    if missing:
        raise ValueError(f"bench record {path}: missing or not a positive number: {', '.join(missing)} (config key "
                         f"'speed' is {config['speed']!r})")
    measured = record[part]
    preset, size, channels = config["train"]["preset"], data["image_size"], data["channels"]
    theirs = PRESETS[record["preset"]]
    same = (preset, size, channels) == (record["preset"], theirs.image_size, theirs.in_channels)
    scale, notes = 1.0, []
    flops = {"record": None, "config": None}
    if same:
        notes.append(f"the record measured this config's network ({preset}, {channels}×{size}²): rates as measured")
    else:
        flops = {"record": network_flops(record["preset"], theirs.image_size, theirs.in_channels),
                 "config": network_flops(preset, size, channels)}
        scale = flops["record"] / flops["config"]
        notes.append(f"rates scaled ×{scale:.4g} from the record's network ({record['preset']}, "
                     f"{theirs.in_channels}×{theirs.image_size}², {flops['record'] / 1e9:.4g} GFLOP per image) to "
                     "this "
                     f"config's ({preset}, {channels}×{size}², {flops['config'] / 1e9:.4g} GFLOP per image), by the "
                     "FLOPs of one forward pass" + ("; a network this much smaller is bound by per-step overheads "
                                                   "more than by FLOPs: expect it to take longer" if scale > 4 else ""))
    out = {kind: measured[key] * scale for kind, key in RATE_KEYS.items() if kind != "FID"}
    if not missing_rates(record, "plain"):  # ddpm.reconstruction runs the network in fp32 whatever the speed-ups
        out["reconstruction"] = record["plain"][RATE_KEYS["reconstruction"]] * scale
        if work_needs_reconstruction(config):
            notes.append("reconstruction: the record's plain fp32 sampling rate (ddpm.reconstruction leaves bf16 and "
                         "TF32 out)")
    fid = measured.get(RATE_KEYS["FID"], record.get(RATE_KEYS["FID"]))  # not the diffusion network's: not scaled
    out["FID"] = fid if isinstance(fid, (int, float)) and not isinstance(fid, bool) and fid > 0 else None
    source = {"path": shown_path(path), "device": record["device"], "device_name": record.get("device_name"),
              "gpu": is_gpu(record), "preset": record["preset"], "speed": record.get("speed"), "part": part,
              "batch_size": record.get("batch_size"), "sample_batch": record.get("sample_batch"),
              "date": record.get("date"), "scale": scale, "flops_per_image": flops}
    return out, source, notes


# ---------------------------------------------------------------------------------------------- the disk
def disk(config: dict, settings, points, data: dict, jobs: dict) -> dict[str, int | None]:
    """Approximate bytes of what the run leaves (None: unknown). Checkpoints: ``checkpoint.pt`` holds the model,
    the EMA and Adam's two moments (fp32, as ``ddpm.train`` saves its training state); an imported one the EMA
    weights; snapshots the EMA only. Samples: uint8 shards plus the gathered ``samples.npz``."""
    C, H = data["channels"], data["image_size"]
    image = C * H * H
    sample, N = config["sample"], config["sample"]["num_samples"]
    imported = (config.get("pretrained") or {}).get("source") is not None
    params = [network_parameters(config["train"]["preset"], H, C, learns_sigma(s)) for s in settings]
    snapshots = len(config["fid_over_training"]["steps"])
    M = config["fid_over_training"]["num_samples"] or N
    known = None if data["train"] is None else (data["train"] + data["test"])
    train = config["train"]
    logged = math.ceil(train["steps"] / train["log_every"]) if not imported else 0
    previews = train["steps"] // train["preview_every"] if train["preview_every"] and not imported else 0
    grids = len(settings) * len(points) * sample["grid_size"] * image
    mlflow = len(settings) * (logged * (TRAIN_METRICS * MLFLOW_BYTES_PER_VALUE + METRICS_LINE_BYTES)
                              + previews * 36 * image) + grids
    dim = FEATURE_DIMS[config["evaluate"]["feature_extractor"]]
    out = {
        "prepared data": None if known is None else known * (image + 8),  # uint8 images, int64 labels
        "checkpoints": sum(4 * p * (1 if imported else 4) for p in params),
        "snapshots": sum(4 * p * snapshots for p in params),
        "samples": 2 * image * len(settings) * len(points) * N,
        "snapshot samples": 2 * image * len(settings) * snapshots * M,
        "reference statistics": 8 * (dim * dim + dim) if jobs.get("ref_stats") else 0,
        "MLflow store and run files (rough)": mlflow,
    }
    total, partial = _known(*out.values())
    return {"parts": out, "resume_per_training": 0 if imported else 16 * max(params), "total": total,
            "partial": partial}


# ---------------------------------------------------------------------------------------------- the plan
def make_plan(config: dict, record_path=None, *, benchmarks=BENCHMARKS) -> dict:
    """The plan of a resolved config (:func:`resolve`): jobs per rule, work, hours (from ``record_path``, else
    :func:`ddpm.benchrecords.find_record` in ``benchmarks``), disk, and notes saying what is estimated how."""
    settings = expand_sweep(config)
    Ts = sorted({s.T for s in settings})
    try:
        points = expand_sampling(config, Ts)
    except ValueError as err:
        raise ConfigError(str(err).split(":")[0], str(err).split(": ", 1)[-1]) from None
    check(config, settings)
    data = dataset_facts(config)
    jobs = job_counts(config, settings, points, data)
    work = work_by_kind(config, settings, points, data, jobs)
    notes = [] if data["unknown"] is None else [f"{data['unknown']}: its split sizes are unknown, and what "
                                                "depends on them is not counted"]
    if record_path is not None:
        path, record = Path(record_path), read_record(record_path)
    else:
        path, record, found = find_record(benchmarks)
        notes += found
    hours, source = {kind: None for kind in KINDS}, None
    if record is not None:
        rate, source, scaled = rates(config, data, record, path)
        notes += scaled
        for kind in KINDS:
            total = work[kind]["total"]
            if rate[kind]:
                hours[kind] = total / rate[kind] / 3600  # at least, where the work is partial
            work[kind]["rate"] = rate[kind]
        notes.insert(0, device_note(record, path, None if record_path is not None else benchmarks))
        notes.append(f"rates of the record's {source['part']} path ({source['speed'] or 'plain'}) at batch "
                     f"{source['batch_size']} (training) and {source['sample_batch']} (sampling, bits/dim); this "
                     f"config trains at batch {config['train']['batch_size']} and samples at "
                     f"{config['sample']['batch_size']}: not rescaled for batch size")
        if rate["FID"] is None:
            notes.append("FID: the record has no feature-extraction rate: its images are counted, its hours are not "
                         "measured (and not in the total)")
    if config["train"]["gpus"] * config["train"]["nodes"] > 1 and work["training"]["jobs"]:
        notes.append("training on several GPUs: GPU-hours assume they scale perfectly")
    counted = [h for h in hours.values() if h is not None]
    hours["total"] = sum(counted) if record is not None else None
    space = disk(config, settings, points, data, jobs)
    if space["resume_per_training"]:
        notes.append(f"while a setting trains, its resume.pt takes another {_bytes(space['resume_per_training'])} "
                     "(model, EMA, Adam's moments); it is deleted when the training ends")
    notes.append("disk: approximate (uint8 images, fp32 weights; .npz and PNG overheads and logs left out)")
    return {"name": config["name"], "scale": config["scale"], "settings": [s.name for s in settings],
            "sampler_points": [p.name for p in points], "dataset": data, "preset": config["train"]["preset"],
            "jobs": jobs, "total_jobs": sum(jobs.values()), "work": work, "record": source, "hours": hours,
            "disk": space, "notes": notes}


# ---------------------------------------------------------------------------------------------- the text
def _bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def _hours(h: float | None) -> str:
    if h is None:
        return "–"
    if h < 0.01:
        return f"{h * 3600:.3g} s"
    return f"{h:,.0f} h" if h >= 100 else f"{h:.3g} h"


def _count(n: int | None) -> str:
    return "unknown" if n is None else f"{n:,}"


def _total(entry: dict) -> str:
    return ("at least " if entry["partial"] else "") + f"{entry['total']:,}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_plan(plan: dict) -> str:
    """The plan as text: jobs per rule, work and hours per kind, disk, notes."""
    data, source = plan["dataset"], plan["record"]
    lines = [f"ddpm plan: {plan['name']} (scale {plan['scale']}): {_plural(len(plan['settings']), 'setting')} × "
             f"{_plural(len(plan['sampler_points']), 'sampler point')}; {data['name']} "
             f"{data['channels']}×{data['image_size']}², "
             f"preset {plan['preset']}", "",
             f"Jobs by rule ({plan['total_jobs']} in all, as `snakemake -n` counts them on an empty results folder):"]
    jobs = plan["jobs"]
    lines += ["  " + "  ".join(f"{rule} {count}" for rule, count in list(jobs.items())[i:i + 6])
              for i in range(0, len(jobs), 6)]
    rate_source = "" if source is None else f" (rates: {source['path']})"
    lines += ["", f"Work and hours by kind{rate_source}:"]
    for kind in KINDS:
        entry = plan["work"][kind]
        if not entry["items"]:
            continue
        rate = entry.get("rate")
        rate_text = f" at {rate:,.4g}/s" if rate else (" (no rate: not measured)" if source else "")
        lines.append(f"  {kind}: {_plural(entry['jobs'], 'job')}, {_total(entry)} {entry['unit']}{rate_text}"
                     f" → {'at least ' if entry['partial'] and plan['hours'][kind] else ''}"
                     f"{_hours(plan['hours'][kind])}")
        for item in entry["items"]:
            if item["per_image"]:
                per = "/".join(map(str, item["per_image"]))
                lines.append(f"      {item['what']}: {_count(item['images'])} images × {per} evaluations = "
                             f"{_total(item)}")
            else:
                lines.append(f"      {item['what']}: {_plural(item['jobs'], 'job')}, {_total(item)} "
                             f"{entry['unit']}")
    if plan["hours"]["total"] is not None:
        unit = "GPU-hours" if source and source["gpu"] else "hours on a CPU, not GPU-hours"
        least = any(plan["work"][k]["partial"] and plan["hours"][k] for k in KINDS)
        lines.append(f"  total: {'at least ' if least else ''}{_hours(plan['hours']['total'])} ({unit}), "
                     "FID extraction "
                     f"{'included' if plan['hours']['FID'] is not None else 'not included'}")
    lines += ["", "Disk (approximate):"]
    lines += [f"  {part}: {_bytes(size)}" for part, size in plan["disk"]["parts"].items() if size != 0]
    lines.append(f"  total: {'at least ' if plan['disk']['partial'] else ''}{_bytes(plan['disk']['total'])}")
    lines += ["", "Notes:"] + [f"  - {note}" for note in plan["notes"]]
    return "\n".join(lines)


def run(configfiles=(), entries=(), *, bench=None, as_json: bool = False, benchmarks=BENCHMARKS) -> str:
    """``ddpm plan``: the text (or JSON) of the plan of ``snakemake --configfile FILES --config ENTRIES``."""
    plan = make_plan(resolve(configfiles, entries), bench, benchmarks=benchmarks)
    return json.dumps(plan, indent=2) if as_json else format_plan(plan)
