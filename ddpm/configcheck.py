"""Config values of the type the schema asks for, before the schema sees them.

Two things reach a Snakemake config with the wrong type, and the JSON schema alone turns each into an unhelpful
error or, worse, into a silently different run:

* YAML 1.1 (PyYAML) reads ``1e-3`` as the *string* ``'1e-3'``: a number needs a dot (``1.0e-3``). Numbers written
  that way are taken as numbers, with a hint.
* Snakemake's ``--config section={key: value}`` parses nested values as strings (``{steps: 60}`` gives ``'60'``).
  Integers, numbers, booleans and nulls written as text are taken as what the schema asks for.

And JSON Schema counts ``50.0`` as an integer, so ``T: [50.0]`` would name a setting ``T50.0`` and ``steps: 60.0``
would pass the check and fail in the training job: integers must be written as integers.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

from .vocabulary import HUB_MODEL_ID

_INTEGER = re.compile(r"[+-]?\d+")
_YAML11_FLOAT = re.compile(r"[-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+][0-9]+)?")  # what PyYAML reads as a float
_NULLS = ("null", "~", "")


#: The checkout's root: the workflow's Snakefile, its schema and the default config live there (``pip install -e``).
ROOT = Path(__file__).resolve().parents[1]
#: The JSON schema of a workflow config (its defaults fill in what a config leaves out).
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
#: The config the workflow runs when no ``--configfile`` is given (the Snakefile loads the one beside it): the offline
#: demo. It is only that: a config given with ``--configfile`` is the whole config, plus the schema's defaults.
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"


class ConfigError(ValueError):
    """A config value that cannot be used; the message names its key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config key '{key}': {message}")
        self.key = key


def coerce_types(config: dict, schema: dict) -> list[str]:
    """Turn the values of ``config`` (in place) into the types ``schema`` gives them where that is unambiguous;
    return the hints to show the user. Raises :class:`ConfigError` for a float where an integer is required."""
    hints: list[str] = []
    _walk(config, schema, schema, "", hints)
    return hints


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:  # only local references: "#/$defs/<name>"
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _types(schema: dict) -> set[str]:
    kind = schema.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def _branch(value, schema: dict, root: dict) -> dict:
    """The branch of an ``anyOf`` that fits the value's shape: the array branch for a list, else a scalar one."""
    branches = [_resolve(b, root) for b in schema.get("anyOf", [])]
    if not branches:
        return schema
    wants_array = isinstance(value, list)
    for branch in branches:
        if ("array" in _types(branch)) == wants_array:
            return branch
    return schema


def _walk(value, schema: dict, root: dict, key: str, hints: list[str]):
    schema = _branch(value, _resolve(schema, root), root)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in value:
            if name in properties:
                value[name] = _walk(value[name], properties[name], root, f"{key}.{name}".lstrip("."), hints)
        return value
    if isinstance(value, list):
        if "items" in schema:
            value[:] = [_walk(item, schema["items"], root, key, hints) for item in value]
        return value
    return _scalar(value, schema, key, hints)


def _scalar(value, schema: dict, key: str, hints: list[str]):
    types = _types(schema)
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and "integer" in types and "number" not in types:
        written = f"; write {int(value)}" if value.is_integer() else ""
        raise ConfigError(key, f"{value!r} is not an integer{written}")
    if not isinstance(value, str) or "string" in types:
        return value
    text = value.strip()
    if text.lower() in _NULLS and ("null" in types or None in schema.get("enum", [])):
        return None
    if "integer" in types and _INTEGER.fullmatch(text):
        return int(text)
    if "integer" in types and "number" not in types and _is_float(text):
        raise ConfigError(key, f"{value!r} is not an integer")
    if "number" in types and _is_float(text):
        number = float(text)
        if not _YAML11_FLOAT.fullmatch(text) and re.search(r"[eE]", text):
            hints.append(f"config key '{key}': YAML reads {text} as text (a YAML 1.1 number needs a dot, e.g. "
                         f"{_with_dot(text)}); taken as the number {number!r}")
        return number
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return value


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity")


def _with_dot(text: str) -> str:
    """``1e-3`` as YAML 1.1 reads a number: a dot in the mantissa and a sign in the exponent (``1.0e-3``)."""
    mantissa, _, exponent = text.lower().partition("e")
    mantissa = mantissa if "." in mantissa else f"{mantissa}.0"
    return f"{mantissa}e{exponent if exponent[:1] in ('+', '-') else '+' + exponent}"


def resolve_config(config: dict, schema_path: str | Path = SCHEMA_PATH) -> tuple[dict, list[str]]:
    """The config a workflow runs, as the Snakefile resolves it: ``config`` (what the config files and ``--config``
    gave, merged; not changed) with its values coerced to the schema's types (:func:`coerce_types`), validated
    against the schema with its defaults filled in, and ``scale: tiny`` applied (:func:`ddpm.settings.apply_scale`).
    Returns it and the hints to show. A value the schema refuses raises ``jsonschema.ValidationError``."""
    import yaml
    from snakemake.utils import validate

    from .settings import apply_scale

    resolved = copy.deepcopy(config)
    hints = coerce_types(resolved, yaml.safe_load(Path(schema_path).read_text()))
    validate(resolved, str(schema_path))
    resolved.update(apply_scale(resolved))
    return resolved, hints


def load_config(configfiles=(), overrides: dict | None = None) -> tuple[dict, list[str]]:
    """The resolved config (:func:`resolve_config`) of ``configfiles`` merged in order, then ``overrides`` (what
    ``--config`` gives), as ``snakemake --configfile … --config …`` from the checkout's root runs it; no config file
    means :data:`DEFAULT_CONFIG`."""
    from snakemake.common.configfile import load_configfile
    from snakemake.utils import update_config

    merged: dict = {}
    for path in configfiles or (DEFAULT_CONFIG,):
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        update_config(merged, load_configfile(str(path)))
    update_config(merged, copy.deepcopy(overrides or {}))
    return resolve_config(merged)


#: What the workflow writes at the top of a results folder (its rules' outputs, the MLflow store and its artifacts),
#: and what else belongs there: SQLite's side files, the reports Snakemake bundles (hidden entries are not looked at).
RESULTS_ENTRIES = ("data", "runs", "tracking", "logs", "benchmarks", "tables", "baselines", "figures", "mlflow.db",
                   "mlartifacts")
_RESULTS_EXTRAS = re.compile(r"mlflow\.db-(journal|wal|shm)|.*\.(html|zip)")


def check_results_dir(text: str) -> Path:
    """``results_dir`` as a folder this workflow may fill: not empty, not a filesystem's root, and not a folder that
    already holds something other than results (a checkout, a home folder); returns it, resolved. Raises
    :class:`ConfigError` naming what is wrong."""
    if not str(text).strip():
        raise ConfigError("results_dir", "is empty: name the folder the results go to (default: results)")
    folder = Path(text).expanduser().resolve()
    if folder == Path(folder.anchor):
        raise ConfigError("results_dir", f"{text!r} is the root of the filesystem: name a folder of its own for the "
                                         "results (default: results)")
    if folder.exists() and not folder.is_dir():
        raise ConfigError("results_dir", f"{folder} is a file, not a folder")
    foreign = sorted(entry.name for entry in folder.iterdir()
                     if entry.name not in RESULTS_ENTRIES and not _RESULTS_EXTRAS.fullmatch(entry.name)
                     and not entry.name.startswith(".")) \
        if folder.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError("results_dir", f"{folder} already holds things that are not this workflow's results "
                          f"({shown}): name a folder of its own (new, or one holding only "
                          f"{', '.join(RESULTS_ENTRIES)})")
    return folder


# ---------------------------------------------------------------------------------------------- what the schema cannot say
def check_workflow_config(config: dict) -> None:
    """What the JSON schema cannot say about a resolved config (:func:`resolve_config`), checked before any job is
    planned; raises :class:`ConfigError` naming the key: the results folder, the sampler points (against every
    setting's T), paths that must exist, sizes the data set and the model preset must take, shards that cut into whole
    batches, the GPUs, the speed-ups, the β schedules, published weights, FID over training and the reconstruction."""
    from .samplers.point import expand_sampling
    from .settings import expand_sweep

    check_results_dir(config["results_dir"])
    settings = expand_sweep(config)
    try:  # every point is checked against every setting's T (S <= T) before any job runs
        expand_sampling(config, sorted({s.T for s in settings}))
    except ValueError as err:
        raise ConfigError(str(err).split(":")[0], str(err).split(": ", 1)[1]) from None
    _check_paths(config)
    _check_sizes(config)
    _check_jobs(config)
    _check_schedules(config, settings)
    if config["pretrained"]["source"] is not None:
        check_pretrained(config, settings)
    late = [s for s in config["fid_over_training"]["steps"] if s >= config["train"]["steps"]]
    if late:
        raise ConfigError("fid_over_training.steps", f"{late} not before the last training step "
                          f"({config['train']['steps']}); the final checkpoint is always the curve's last point")
    _check_reconstruction(config, settings)


def _check_paths(config: dict) -> None:
    """Paths that must exist, what each data set needs, the folders and store the jobs write."""
    from .datasets import imagefolder_has_classes

    dataset, name = config["dataset"], config["dataset"]["name"]
    if dataset["path"] is not None and not Path(dataset["path"]).exists():
        raise ConfigError("dataset.path", f"{dataset['path']} does not exist")
    if name == "imagefolder":
        needs = [("dataset.path", dataset["path"], "the folder of images"),
                 ("dataset.image_size", dataset["image_size"], "an image size (images are resized and center-cropped)"),
                 ("evaluate.nll_num_images", config["evaluate"]["nll_num_images"], "the number of test images to score")]
        if config["reconstruction"]["steps"]:
            needs.append(("reconstruction.num_images", config["reconstruction"]["num_images"],
                          "the number of test images to encode and decode"))
        for key, value, what in needs:
            if value is None:
                raise ConfigError(key, f"imagefolder needs {what}")
        if config["evaluate"]["feature_extractor"] == "classifier" and not imagefolder_has_classes(Path(dataset["path"])):
            raise ConfigError("evaluate.feature_extractor", f"the classifier extractor learns the classes of the "
                              f"images, but {dataset['path']} has images outside class subfolders: put each class's "
                              f"images in a subfolder of their own, or set evaluate.feature_extractor: "
                              f"inception-v3-compat")
    if name == "cifar10" and dataset["path"] is None and not dataset["download"]:
        raise ConfigError("dataset.path", "cifar10 needs a local cifar-10-batches-py folder, or dataset.download: true")
    for key in ("inception_weights", "ref_stats"):
        path = config["evaluate"][key]
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"evaluate.{key}", f"{path} is not a file")
    _check_writable(config)


def _check_writable(config: dict) -> None:
    """The results folder and the SQLite store must be writable: one line now, not a failure in every job."""
    import os

    results = Path(config["results_dir"]).resolve()
    existing = next(p for p in (results, *results.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise ConfigError("results_dir", f"{existing} is read-only: results cannot be written under {results}")
    store = results / "mlflow.db"
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config["mlflow"]["tracking_uri"]
    if uri is None and store.exists() and not os.access(store, os.W_OK):
        raise ConfigError("mlflow.tracking_uri", f"the MLflow store {store} is read-only: make it writable, or point "
                          f"mlflow.tracking_uri (or MLFLOW_TRACKING_URI) at a store you can write")


def _check_sizes(config: dict) -> None:
    """Sizes the model preset must take, and counts the data set cannot give (where its splits' sizes are known
    before preparation)."""
    from .datasets import NATIVE_IMAGE_SIZES, known_test_size, known_train_size
    from .presets import check_config, preset

    name, fraction = config["dataset"]["name"], config["dataset"]["test_fraction"]
    size = config["dataset"]["image_size"] or NATIVE_IMAGE_SIZES[name]
    try:
        check_config(preset(config["train"]["preset"], image_size=size))
    except ValueError as err:
        raise ConfigError("dataset.image_size", f"model preset '{config['train']['preset']}' cannot take "
                          f"{size}x{size} images: {err}") from None
    if config["sample"]["num_samples"] < 2:
        raise ConfigError("sample.num_samples", "need at least 2 samples")
    train_size, test_size = known_train_size(name, fraction), known_test_size(name, fraction)
    limits = [("train.batch_size", config["train"]["batch_size"], train_size, "train split"),
              ("evaluate.ref_images", config["evaluate"]["ref_images"], train_size, "train split"),
              ("evaluate.nll_num_images", config["evaluate"]["nll_num_images"], test_size, "test split"),
              ("evaluate.nll_train_images", config["evaluate"]["nll_train_images"], train_size, "train split"),
              ("reconstruction.num_images", config["reconstruction"]["num_images"], test_size, "test split")]
    for key, value, limit, split in limits:
        if value is not None and limit is not None and value > limit:
            raise ConfigError(key, f"{value} is more than the {split} of {name} has ({limit} images)")


def _check_jobs(config: dict) -> None:
    """Shards that cut into whole batches, a global batch that splits over the GPUs, nodes only where SLURM is, and
    speed-ups that exist."""
    import shutil

    from .settings import Speed

    # Shards that are multiples of the batch size are cut into the same batches as one big shard: every sample and
    # bits/dim term is then the same bit for bit whatever the shard size (another batch size rounds differently).
    for section, shard, batch in (("sample", "shard_size", "batch_size"), ("evaluate", "nll_shard_size", "nll_batch_size")):
        if config[section][shard] % config[section][batch]:
            raise ConfigError(f"{section}.{shard}", f"{config[section][shard]} is not a multiple of "
                              f"{section}.{batch} ({config[section][batch]})")
    train = config["train"]
    processes = train["gpus"] * train["nodes"]
    if train["batch_size"] % processes:
        raise ConfigError("train.batch_size", f"{train['batch_size']} does not split evenly over the {processes} GPUs "
                          f"of train.gpus × train.nodes: each GPU takes an equal share of the global batch")
    if train["nodes"] > 1 and shutil.which("srun") is None:
        raise ConfigError("train.nodes", f"{train['nodes']} nodes need a SLURM cluster (srun is not on the PATH); see "
                          "README, 'Run on a cluster'")
    try:
        Speed.parse(config["speed"])
    except ValueError as err:
        raise ConfigError("speed", str(err)) from None


def _check_schedules(config: dict, settings) -> None:
    """Each setting's β schedule can be built (``train.schedule_rescale`` at a small T pushes β_T past 1): refused
    here, not in every training job."""
    from .schedules import make_betas

    rescale = config["train"]["schedule_rescale"]
    for setting in settings:
        try:
            make_betas(setting.schedule, setting.T, rescale=rescale)
        except ValueError as err:
            raise ConfigError("train.schedule_rescale" if rescale else "sweep.T",
                              f"setting {setting.name}: {err}") from None


def check_pretrained(config: dict, settings) -> None:
    """An evaluation of published weights: one model per setting (``pretrained.source`` one model for a sweep of
    one setting, or each setting's name mapped to its own), and no training to follow."""
    from .jobflags import pretrained_value

    names = [setting.name for setting in settings]
    for key in ("source", "flags", "format", "revision"):
        value = config["pretrained"].get(key)
        if isinstance(value, dict) and set(value) != set(names):
            raise ConfigError(f"pretrained.{key}", f"maps {', '.join(sorted(value))}, but the sweep's settings are "
                              f"{', '.join(names)}: one entry for each")
    if not isinstance(config["pretrained"]["source"], dict) and len(settings) != 1:
        raise ConfigError("sweep", f"pretrained.source is one model, but the sweep has {len(settings)} settings: give "
                          f"the one setting the source is (its schedule, T, mean_type, var_type, loss_type, seed), "
                          f"or map each setting's name to its source")
    if config["fid_over_training"]["steps"]:
        raise ConfigError("fid_over_training.steps", "published weights have no training to follow: leave it empty")
    tiny = config["scale"] == "tiny"
    for name in names:
        source = pretrained_value(config, "source", name)
        if not Path(source).exists() and (tiny or not re.fullmatch(HUB_MODEL_ID, source)):
            raise ConfigError("pretrained.source", f"{source} does not exist" + (
                " (scale: tiny needs a local source that generates the digits' 8×8 grey images; a Hub id is fetched "
                "only at full scale)" if tiny else " and is not a Hugging Face model id (owner/name)"))


def _check_reconstruction(config: dict, settings) -> None:
    """DDIM Table 2's S are encoded and decoded by every setting: S ≤ T for each (as the sampler points are checked);
    the skip is one DDIM takes."""
    from .samplers.families.ddim import reconstruction_point

    try:
        reconstruction_point(None, config["reconstruction"]["skip"]).check("reconstruction")
    except ValueError as err:
        raise ConfigError("reconstruction.skip", str(err).split(": ", 1)[1]) from None
    shortest = min(settings, key=lambda setting: setting.T)
    beyond = [S for S in sorted(config["reconstruction"]["steps"]) if S > shortest.T]
    if beyond:
        raise ConfigError("reconstruction.steps", f"S = {beyond[0]} is more than the T = {shortest.T} steps of the "
                          f"process of the setting {shortest.name}")
