import json
import math
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from ddpm.configcheck import ConfigError, check_results_dir, resolve_config
from ddpm.datasets import NATIVE_IMAGE_SIZES, imagefolder_has_classes, known_test_size, known_train_size
from ddpm.presets import check_config, preset
from ddpm.schedules import make_betas
from ddpm.settings import Speed, expand_sampling, expand_sweep, train_arguments


SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
# YAML's `1e-3` (a string to YAML 1.1) and --config's nested values (strings) become the numbers the schema asks
# for (a float where an integer belongs, T: [50.0], is refused, naming the key); the schema's defaults fill in what
# the config leaves out; scale: tiny lays the CPU-sized overrides over it. `ddpm plan` resolves a config the same way.
_resolved, _hints = resolve_config(config, SCHEMA)
for hint in _hints:
    print(hint, file=sys.stderr)
config.clear()
config.update(_resolved)

# Rules call `ddpm` (and `torchrun`) from the PATH. Put the environment that runs this workflow first, so that
# `.venv/bin/snakemake` works without activating .venv; with --use-conda the rule's own environment, activated
# inside each job's shell, comes before it. (An environment variable, not part of any command: moving the checkout
# does not make Snakemake rerun anything.)
envvars:
    "PATH",  # the jobs' PATH, set here (a cluster's jobs get it as it is after this line)


JOB_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
os.environ["PATH"] = JOB_PATH

check_results_dir(config["results_dir"])  # before any output path is built on it
RESULTS = config["results_dir"].rstrip("/")
DATASET = config["dataset"]["name"]
NAME = config["name"]
ENV = "../envs/ddpm.yaml"
DATA = f"{RESULTS}/data/{DATASET}"
RUNS = f"{RESULTS}/runs/{NAME}"  # per sweep: two sweeps may train the same setting differently
# Logs and benchmark files: per sweep (two sweeps of one results folder may share setting names); the data set's jobs,
# whose outputs every sweep on that data set shares, beside them per data set.
LOGS, BENCHMARKS = f"{RESULTS}/logs/{NAME}", f"{RESULTS}/benchmarks/{NAME}"
DATA_LOGS, DATA_BENCHMARKS = f"{RESULTS}/logs/data/{DATASET}", f"{RESULTS}/benchmarks/data/{DATASET}"
TRACKING = f"{RESULTS}/tracking/{NAME}.json"  # where the sweep's jobs log to MLflow (rule mlflow_init)
SWEEP = {setting.name: setting for setting in expand_sweep(config)}  # name (its folder) → its axes
SETTINGS = list(SWEEP)
try:  # every point is checked against every setting's T (S <= T) before any job runs
    SAMPLING = {point.name: point for point in expand_sampling(config, sorted({s.T for s in SWEEP.values()}))}
except ValueError as err:
    raise ConfigError(str(err).split(":")[0], str(err).split(": ", 1)[1]) from None
SAMPLER_POINTS = list(SAMPLING)  # the first is each setting's own (main and paper tables, figures, FID over training)
PRIMARY = SAMPLER_POINTS[0]
PUBLISHED = config["published"] or str(Path(workflow.basedir) / "config" / "published.csv")
# Each setting's model: trained (rule train), or imported from published weights (rule import_pretrained).
PRETRAINED = config["pretrained"]
IMPORTED = PRETRAINED["source"] is not None
CHECKPOINT = f"{RUNS}/{{setting}}/checkpoint.pt"
RUN_ID = f"{RUNS}/{{setting}}/mlflow_run_id.txt"
SPEED = config["speed"]  # resolved on the node that runs the job: "auto" means what pays off on its device


def config_error(key, message):
    raise ConfigError(key, message)


def check_config_values():
    """What the JSON schema cannot say: paths that must exist, sizes the model preset must take."""
    dataset = config["dataset"]
    if dataset["path"] is not None and not Path(dataset["path"]).exists():
        config_error("dataset.path", f"{dataset['path']} does not exist")
    if DATASET == "imagefolder":
        if dataset["path"] is None:
            config_error("dataset.path", "imagefolder needs the folder of images")
        if dataset["image_size"] is None:
            config_error("dataset.image_size", "imagefolder needs an image size (images are resized and center-cropped)")
        if config["evaluate"]["nll_num_images"] is None:
            config_error("evaluate.nll_num_images", "imagefolder needs the number of test images to score")
        if config["reconstruction"]["steps"] and config["reconstruction"]["num_images"] is None:
            config_error("reconstruction.num_images", "imagefolder needs the number of test images to encode and decode")
        if config["evaluate"]["feature_extractor"] == "classifier" and not imagefolder_has_classes(Path(dataset["path"])):
            config_error("evaluate.feature_extractor", f"the classifier extractor learns the classes of the images, "
                         f"but {dataset['path']} has images outside class subfolders: put each class's images in a "
                         f"subfolder of their own, or set evaluate.feature_extractor: inception-v3-compat")
    if DATASET == "cifar10" and dataset["path"] is None and not dataset["download"]:
        config_error("dataset.path", "cifar10 needs a local cifar-10-batches-py folder, or dataset.download: true")
    size = dataset["image_size"] or NATIVE_IMAGE_SIZES[DATASET]
    try:
        check_config(preset(config["train"]["preset"], image_size=size))
    except ValueError as err:
        config_error("dataset.image_size", f"model preset '{config['train']['preset']}' cannot take {size}x{size} images: {err}")
    weights = config["evaluate"]["inception_weights"]
    if weights is not None and not Path(weights).is_file():
        config_error("evaluate.inception_weights", f"{weights} is not a file")
    stats = config["evaluate"]["ref_stats"]
    if stats is not None and not Path(stats).is_file():
        config_error("evaluate.ref_stats", f"{stats} is not a file")
    if config["sample"]["num_samples"] < 2:
        config_error("sample.num_samples", "need at least 2 samples")
    # Shards that are multiples of the batch size are cut into the same batches as one big shard: every sample and
    # bits/dim term is then the same bit for bit whatever the shard size (another batch size rounds differently).
    for section, shard, batch in (("sample", "shard_size", "batch_size"), ("evaluate", "nll_shard_size", "nll_batch_size")):
        if config[section][shard] % config[section][batch]:
            config_error(f"{section}.{shard}", f"{config[section][shard]} is not a multiple of "
                         f"{section}.{batch} ({config[section][batch]})")
    train = config["train"]
    processes = train["gpus"] * train["nodes"]
    if train["batch_size"] % processes:
        config_error("train.batch_size", f"{train['batch_size']} does not split evenly over the {processes} GPUs of "
                     f"train.gpus × train.nodes: each GPU takes an equal share of the global batch")
    if train["nodes"] > 1 and shutil.which("srun") is None:
        config_error("train.nodes", f"{train['nodes']} nodes need a SLURM cluster (srun is not on the PATH); see "
                     "README, 'Run on a cluster'")
    try:
        Speed.parse(config["speed"])
    except ValueError as err:
        config_error("speed", str(err))
    check_sizes()
    check_writable()
    if IMPORTED:
        check_pretrained()
    check_schedules()
    late = [s for s in config["fid_over_training"]["steps"] if s >= config["train"]["steps"]]
    if late:
        config_error("fid_over_training.steps", f"{late} not before the last training step ({config['train']['steps']}); "
                     "the final checkpoint is always the curve's last point")


def check_schedules():
    """Each setting's β schedule can be built (``train.schedule_rescale`` at a small T pushes β_T past 1): refused
    here, not in every training job."""
    for setting in SWEEP.values():
        try:
            make_betas(setting.schedule, setting.T, rescale=config["train"]["schedule_rescale"])
        except ValueError as err:
            config_error("train.schedule_rescale" if config["train"]["schedule_rescale"] else "sweep.T",
                         f"setting {setting.name}: {err}")


def check_pretrained():
    """An evaluation of published weights: one model, so one setting, and no training to follow."""
    source = PRETRAINED["source"]
    if len(SETTINGS) != 1:
        config_error("sweep", f"pretrained.source is one model, but the sweep has {len(SETTINGS)} settings: give the "
                     f"one setting the source is (its schedule, T, mean_type, var_type, loss_type, seed)")
    if config["fid_over_training"]["steps"]:
        config_error("fid_over_training.steps", "published weights have no training to follow: leave it empty")
    local = Path(source).exists()
    if not local and (config["scale"] == "tiny" or not re.fullmatch(r"[\w.-]+/[\w.-]+", source)):
        config_error("pretrained.source", f"{source} does not exist" + (
            " (scale: tiny needs a local source that generates the digits' 8×8 grey images; a Hub id is fetched only "
            "at full scale)" if config["scale"] == "tiny" else " and is not a Hugging Face model id (owner/name)"))


def check_sizes():
    """Counts that the data set cannot give (where its splits' sizes are known before preparation)."""
    fraction = config["dataset"]["test_fraction"]
    train_size, test_size = known_train_size(DATASET, fraction), known_test_size(DATASET, fraction)
    limits = [("train.batch_size", config["train"]["batch_size"], train_size, "train split"),
              ("evaluate.ref_images", config["evaluate"]["ref_images"], train_size, "train split"),
              ("evaluate.nll_num_images", config["evaluate"]["nll_num_images"], test_size, "test split"),
              ("evaluate.nll_train_images", config["evaluate"]["nll_train_images"], train_size, "train split"),
              ("reconstruction.num_images", config["reconstruction"]["num_images"], test_size, "test split")]
    for key, value, limit, split in limits:
        if value is not None and limit is not None and value > limit:
            config_error(key, f"{value} is more than the {split} of {DATASET} has ({limit} images)")


def check_writable():
    """The results folder and the SQLite store must be writable: one line now, not a failure in every job."""
    results = Path(RESULTS).resolve()
    existing = next(p for p in (results, *results.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        config_error("results_dir", f"{existing} is read-only: results cannot be written under {results}")
    store = results / "mlflow.db"
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config["mlflow"]["tracking_uri"]
    if uri is None and store.exists() and not os.access(store, os.W_OK):
        config_error("mlflow.tracking_uri", f"the MLflow store {store} is read-only: make it writable, or point "
                     f"mlflow.tracking_uri (or MLFLOW_TRACKING_URI) at a store you can write")


check_config_values()


wildcard_constraints:
    setting="|".join(SETTINGS),
    sampler="|".join(SAMPLER_POINTS),
    shard=r"\d+",
    step=r"\d+",
    extractor=re.escape(config["evaluate"]["feature_extractor"]),


def train_resources(train):
    """One node: ``gpu`` GPUs (Snakemake's count; the SLURM executor asks ``--gpus``). Several nodes (SLURM only):
    one task per node with ``train.gpus`` GPUs each (``--gres`` counts per node), started by ``srun`` in the job
    itself (the executor's ``mpi`` resource)."""
    if train["nodes"] == 1:
        return {"gpu": train["gpus"]}
    return {"nodes": train["nodes"], "tasks": train["nodes"], "gres": f"gpu:{train['gpus']}", "mpi": "srun"}


def train_launcher(train):
    """The command that starts ``ddpm train`` for the train job. One process; torchrun's DistributedDataParallel
    on several GPUs of one node; or one torchrun per node, meeting at the job's first node (c10d rendezvous)."""
    gpus, nodes = train["gpus"], train["nodes"]
    if nodes > 1:
        return (f"srun --ntasks-per-node=1 torchrun --nnodes {nodes} --nproc_per_node {gpus} --rdzv_backend c10d"
                ' --rdzv_endpoint "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):$((29500 + SLURM_JOB_ID % 10000))"'
                ' --rdzv_id "$SLURM_JOB_ID" -m ddpm.cli')
    # ddpm claim-gpus picks the GPUs: Snakemake counts them but does not hand them out.
    if gpus == 1:
        return "ddpm claim-gpus 1 -- ddpm"
    return f"ddpm claim-gpus {gpus} -- torchrun --standalone --nnodes 1 --nproc_per_node {gpus} -m ddpm.cli"


def shards(total, size):
    """Shard indices 0 … ⌈total/size⌉-1; shard i covers items [i·size, min((i+1)·size, total))."""
    return list(range(math.ceil(total / size)))


def shard_range(shard, total, size):
    start = int(shard) * size
    return start, min(size, total - start)


# DDIM Table 2's reconstruction jobs (rules/reconstruction.smk): one per setting and S.
RECONSTRUCTION = config["reconstruction"]
RECONSTRUCTION_STEPS = sorted(RECONSTRUCTION["steps"])
# null: the whole test split (imagefolder's size is unknown before preparation: check_config_values requires it).
RECONSTRUCTION_IMAGES = RECONSTRUCTION["num_images"] or known_test_size(DATASET, config["dataset"]["test_fraction"])


def check_reconstruction_steps():
    """Every S is encoded and decoded by every setting: S ≤ T for each (as the sampler points are checked)."""
    T_min = min(setting.T for setting in SWEEP.values())
    beyond = [S for S in RECONSTRUCTION_STEPS if S > T_min]
    if beyond:
        config_error("reconstruction.steps", f"S = {beyond[0]} is more than the T = {T_min} steps of the process "
                     f"of the setting {next(n for n, s in SWEEP.items() if s.T == T_min)}")


check_reconstruction_steps()


NUM_SAMPLES = config["sample"]["num_samples"]
SAMPLE_SHARDS = shards(NUM_SAMPLES, config["sample"]["shard_size"])
# imagefolder's test split is unknown before preparation: check_config_values requires evaluate.nll_num_images.
NLL_IMAGES = config["evaluate"]["nll_num_images"] or known_test_size(DATASET, config["dataset"]["test_fraction"])
NLL_SHARDS = shards(NLL_IMAGES, config["evaluate"]["nll_shard_size"])
NLL_TRAIN_IMAGES = config["evaluate"]["nll_train_images"]  # None: no train-set bits/dim
NLL_TRAIN_SHARDS = shards(NLL_TRAIN_IMAGES or 0, config["evaluate"]["nll_shard_size"])
# FID over training: snapshots of the EMA weights, each sampled (in shards of sample.shard_size) and scored.
SNAPSHOT_STEPS = sorted(config["fid_over_training"]["steps"])
SNAPSHOT_SAMPLES = config["fid_over_training"]["num_samples"] or NUM_SAMPLES
SNAPSHOT_SHARDS = shards(SNAPSHOT_SAMPLES, config["sample"]["shard_size"])


def sampler_args(name):
    """The ``ddpm sample`` flags of the sampler point ``name``."""
    point = SAMPLING[name]
    flags = f"--sampler {point.sampler} --skip {point.skip}" + (" --steps %d" % point.steps if point.steps else "")
    flags += f" --eta {point.eta}" if point.sampler == "ddim" else f" --variance {point.variance}"
    return flags + ("" if point.clip else " --no-clip")


def import_arguments(wildcards):
    """The ``ddpm import`` flags of a setting: its axes (the source must be that setting), format and revision."""
    axes = SWEEP[wildcards.setting].axes()
    flags = " ".join(f"--{axis.replace('_', '-')} {value}" for axis, value in axes.items())
    for key in ("format", "revision"):
        if PRETRAINED[key] is not None:
            flags += f" --{key} {shlex.quote(str(PRETRAINED[key]))}"
    return flags


def extractor_weights():
    """The feature extractor's weights file: the trained classifier, or the local Inception weights (or none)."""
    if config["evaluate"]["feature_extractor"] == "classifier":
        return f"{DATA}/classifier.pt"
    return config["evaluate"]["inception_weights"] or []


#: FID's reference: the train split's first evaluate.ref_images images (None: all of them); its statistics are
#: computed once (rule ref_stats) or a file from elsewhere (evaluate.ref_stats).
REF_IMAGES = config["evaluate"]["ref_images"]
REF_IMAGES_ARGS = "" if REF_IMAGES is None else f"--ref-images {REF_IMAGES}"
REF_STATS_SUFFIX = "" if REF_IMAGES is None else f"-first{REF_IMAGES}"
FOREIGN_REF_STATS = config["evaluate"]["ref_stats"]
REF_STATS = FOREIGN_REF_STATS or f"{DATA}/ref-stats/{config['evaluate']['feature_extractor']}-train{REF_STATS_SUFFIX}.npz"


def ref_stats_args():
    """The FID jobs' flags: the reference images, and the statistics file, said to be foreign when it has no record
    of ours beside it."""
    foreign = FOREIGN_REF_STATS is not None and not Path(FOREIGN_REF_STATS).with_suffix(".json").is_file()
    return f"--ref-stats {shlex.quote(REF_STATS)}" + (" --foreign-ref-stats" if foreign else "") + \
        (f" {REF_IMAGES_ARGS}" if REF_IMAGES_ARGS else "")


#: the bootstrap standard errors of FID, IS and KID beside every score (ddpm.metrics.bootstrap_errors)
BOOTSTRAP_ARGS = f"--bootstrap-rounds {config['evaluate']['bootstrap_rounds']}"


def extractor_args():
    weights = extractor_weights()
    args = f"--extractor {config['evaluate']['feature_extractor']}"
    return args + (f" --weights {shlex.quote(weights)}" if weights else "")


def final_outputs():
    return (
        [f"{RESULTS}/tables/{NAME}{kind}.{ext}"
         for kind in ("", "-paper", "-rate-distortion", "-fid-over-training", "-samplers", "-reconstruction")
         for ext in ("csv", "md", "tex")]
        + [f"{RESULTS}/figures/{NAME}-{figure}.png"
           for figure in ("loss", "rate-distortion", "schedules", "fid-over-training", "samplers")]
        + expand(f"{RUNS}/{{setting}}/{{figure}}.png", setting=SETTINGS, figure=["progressive", "interpolation"])
        + expand(f"{RUNS}/{{setting}}/samplers/{{sampler}}/samples.png", setting=SETTINGS, sampler=SAMPLER_POINTS)
    )
