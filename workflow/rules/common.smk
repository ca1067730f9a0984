import json
import math
import os
import re
import shlex
import sys
from pathlib import Path

from ddpm.configcheck import check_workflow_config, resolve_config
from ddpm.datasets import known_test_size
from ddpm.report import OUTPUTS as REPORT_OUTPUTS
from ddpm.samplers import expand_sampling
from ddpm.jobflags import (bootstrap_flags, extractor_flags, import_flags, pretrained_value, ref_stats_flags,
                           reference_flags, sampler_flags, train_flags)
from ddpm.settings import expand_sweep


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

check_workflow_config(config)  # what the schema cannot say, before any path is built or job planned
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
SAMPLING = {point.name: point for point in expand_sampling(config)}  # checked against every T above
SAMPLER_POINTS = list(SAMPLING)  # the first is each setting's own (main and paper tables, figures, FID over training)
PRIMARY = SAMPLER_POINTS[0]
PUBLISHED = config["published"] or str(Path(workflow.basedir) / "config" / "published.csv")
# Each setting's model: trained (rule train), or imported from published weights (rule import_pretrained).
PRETRAINED = config["pretrained"]
IMPORTED = PRETRAINED["source"] is not None
CHECKPOINT = f"{RUNS}/{{setting}}/checkpoint.pt"
RUN_ID = f"{RUNS}/{{setting}}/mlflow_run_id.txt"
SPEED = config["speed"]  # resolved on the node that runs the job: "auto" means what pays off on its device


wildcard_constraints:
    setting="|".join(SETTINGS),
    sampler="|".join(map(re.escape, SAMPLER_POINTS)),  # a point's name may hold "+"
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
# null: the whole test split (imagefolder's size is unknown before preparation: ddpm.configcheck requires it).
RECONSTRUCTION_IMAGES = RECONSTRUCTION["num_images"] or known_test_size(DATASET, config["dataset"]["test_fraction"])


NUM_SAMPLES = config["sample"]["num_samples"]
SAMPLE_SHARDS = shards(NUM_SAMPLES, config["sample"]["shard_size"])
# imagefolder's test split is unknown before preparation: ddpm.configcheck requires evaluate.nll_num_images.
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
    return sampler_flags(SAMPLING[name])


def import_source(wildcards):
    """The published weights a setting is imported from (``pretrained.source``, or its entry there)."""
    return pretrained_value(config, "source", wildcards.setting)


def import_arguments(wildcards):
    """The ``ddpm import`` flags of a setting: its axes (the source must be that setting), format and revision."""
    return import_flags(config, SWEEP[wildcards.setting])


def extractor_weights():
    """The feature extractor's weights file: the trained classifier, or the local Inception weights (or none)."""
    if config["evaluate"]["feature_extractor"] == "classifier":
        return f"{DATA}/classifier.pt"
    return config["evaluate"]["inception_weights"] or []


#: FID's reference: the train split's first evaluate.ref_images images (None: all of them); its statistics are
#: computed once (rule ref_stats) or a file from elsewhere (evaluate.ref_stats).
REF_IMAGES = config["evaluate"]["ref_images"]
REF_IMAGES_ARGS = reference_flags(config)
REF_STATS_SUFFIX = "" if REF_IMAGES is None else f"-first{REF_IMAGES}"
FOREIGN_REF_STATS = config["evaluate"]["ref_stats"]
REF_STATS = FOREIGN_REF_STATS or f"{DATA}/ref-stats/{config['evaluate']['feature_extractor']}-train{REF_STATS_SUFFIX}.npz"


def ref_stats_args():
    """The FID jobs' flags: the reference images, and the statistics file, said to be foreign when it has no record
    of ours beside it."""
    foreign = FOREIGN_REF_STATS is not None and not Path(FOREIGN_REF_STATS).with_suffix(".json").is_file()
    return ref_stats_flags(config, REF_STATS, foreign=foreign)


BOOTSTRAP_ARGS = bootstrap_flags(config)


def extractor_args():
    return extractor_flags(config, extractor_weights() or None)


def report_outputs():
    """rule report's outputs, from ddpm.report.OUTPUTS (the report's one list of tables and figures, which
    `ddpm report` writes to the same paths): each table's CSV, Markdown and LaTeX files, and what the Snakemake report
    shows, under its category and with its caption (workflow/report/): each table's HTML page, each figure."""
    tables, figures = f"{RESULTS}/tables", f"{RESULTS}/figures"
    outputs = {}
    for output in REPORT_OUTPUTS:
        shown = report(output.shown(tables, figures, NAME), category=output.category,
                       caption=f"../report/{output.caption}")  # relative to rules/report.smk, which calls this
        if output.medium == "table":
            outputs[output.key] = output.files(tables, figures, NAME)
            outputs[f"{output.key}_html"] = shown
        else:
            outputs[output.key] = shown
    return outputs


def final_outputs():
    return (
        [path for output in REPORT_OUTPUTS for path in output.files(f"{RESULTS}/tables", f"{RESULTS}/figures", NAME)]
        + expand(f"{RUNS}/{{setting}}/{{figure}}.png", setting=SETTINGS, figure=["progressive", "interpolation"])
        + expand(f"{RUNS}/{{setting}}/samplers/{{sampler}}/samples.png", setting=SETTINGS, sampler=SAMPLER_POINTS)
    )
