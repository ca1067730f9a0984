"""A sweep in the config → its settings, each with a readable name that is also its folder.

A setting is one point of dataset × schedule × T × mean_type × var_type × loss_type × seed, plus the shared
training hyperparameters (:class:`TrainConfig`, what a checkpoint records). Its name, e.g.
``linear-T1000-eps-fixedlarge-mse-s0``, names its folder ``results/runs/<name>/<name>/`` and its MLflow run. This
module imports neither torch nor the rest of the package.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, fields

@dataclass
class TrainConfig:
    dataset: str = "digits"
    schedule: str = "linear"
    T: int = 1000
    schedule_rescale: bool = False  # scale the linear endpoints by 1000/T (IDDPM)
    mean_type: str = "eps"
    var_type: str = "fixedlarge"
    loss_type: str = "mse"
    timestep_sampler: str | None = None  # None: importance sampling for "kl", uniform otherwise
    preset: str = "tiny"
    dropout: float | None = None  # None: the preset's
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 5000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    flip: bool = False  # random horizontal flips (CIFAR-10: yes; digits: no, a flipped digit is another glyph)
    seed: int = 0
    log_every: int = 50
    preview_every: int = 0  # draw a grid of EMA samples every this many steps (0: never); logged to MLflow
    checkpoint_every: int = 0  # save the resume state every this many steps (0: never; SIGTERM still saves it)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config keys {sorted(unknown)}; valid keys: {sorted(known)}")
        return cls(**d)


#: The axes of a sweep, in the order they appear in a setting's name.
SWEEP_AXES = ("schedule", "T", "mean_type", "var_type", "loss_type", "seed")
_NAME = re.compile(r"^(?P<schedule>[a-z0-9]+)-T(?P<T>\d+)-(?P<mean_type>[a-z]+)-(?P<var_type>[a-z_]+)-(?P<loss_type>[a-z]+)-s(?P<seed>\d+)$")


def setting_name(setting: dict) -> str:
    return "{schedule}-T{T}-{mean_type}-{var_type}-{loss_type}-s{seed}".format(**setting)


def parse_setting_name(name: str) -> dict:
    match = _NAME.match(name)
    if not match:
        raise ValueError(f"not a setting name: {name!r} (expected e.g. linear-T1000-eps-fixedlarge-mse-s0)")
    axes = match.groupdict()
    return {**axes, "T": int(axes["T"]), "seed": int(axes["seed"])}


def expand_sweep(config: dict) -> list[str]:
    """The names of all settings of the config's sweep, in a stable order.

    Without ``sweep.rows``: the cross product of the sweep's lists. With it: for each row in turn, the cross product
    of the sweep's lists with the row's values in place of them (a row gives a value or a list per axis), e.g. the
    six (mean, variance, loss) rows of DDPM's Table 2, each crossed with the sweep's seeds."""
    sweep = config["sweep"]
    rows = sweep.get("rows") or [{}]
    names = []
    for row in rows:
        unknown = set(row) - set(SWEEP_AXES)
        if unknown:
            raise ValueError(f"sweep.rows: unknown axis {sorted(unknown)}; valid axes: {', '.join(SWEEP_AXES)}")
        axes = [_as_list(row[a]) if a in row else sweep[a] for a in SWEEP_AXES]
        names += [setting_name(dict(zip(SWEEP_AXES, values))) for values in itertools.product(*axes)]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"the sweep lists a setting twice: {sorted(duplicates)}")
    return names


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def train_config(config: dict, name: str) -> TrainConfig:
    """The full, resolved training configuration of setting ``name``."""
    train = dict(config["train"])
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig.from_dict({**{k: v for k, v in train.items() if k in known},
                                  **parse_setting_name(name), "dataset": config["dataset"]["name"]})


def train_arguments(config: dict, name: str) -> str:
    """The ``ddpm train`` flags of setting ``name`` (what a Snakemake rule passes on)."""
    resolved = train_config(config, name)
    flags = []
    for f in fields(TrainConfig):
        value = getattr(resolved, f.name)
        if value is not None:
            flags.append(f"--{f.name.replace('_', '-')} {str(value).lower() if isinstance(value, bool) else value}")
    return " ".join(flags)


#: ``scale: tiny`` — the same sweep (the same settings and objectives) on digits with the CPU-sized network and
#: few steps, so that every code path of a paper config runs without a GPU. Keys not listed keep the paper's values.
TINY_SCALE = {
    "dataset": {"name": "digits", "path": None, "download": False, "image_size": None, "test_fraction": 0.1667},
    "train": {"preset": "tiny", "steps": 40, "batch_size": 32, "warmup": 5, "ema_decay": 0.9, "log_every": 10,
              "preview_every": 20, "checkpoint_every": 20, "threads": 1},
    "sample": {"num_samples": 100, "shard_size": 50, "batch_size": 50, "steps": 20, "grid_size": 36},
    "evaluate": {"feature_extractor": "classifier", "inception_weights": None, "classifier_steps": 300,
                 "nll_num_images": 10, "nll_shard_size": 10, "nll_batch_size": 10},
    "fid_over_training": {"num_samples": None},
}


def apply_scale(config: dict) -> dict:
    """The config to run: as given for ``scale: full``; for ``scale: tiny``, :data:`TINY_SCALE` laid over it and
    ``-tiny`` added to its name (its results, tables and MLflow experiment stay apart from the full run's).
    ``paper_sweep`` keeps the original name: the published numbers are looked up under it."""
    scaled = {**config, "paper_sweep": config["name"]}
    if config.get("scale", "full") == "full":
        return scaled
    if config["scale"] != "tiny":
        raise ValueError(f"config key 'scale': unknown scale {config['scale']!r}; valid scales: full, tiny")
    for section, values in TINY_SCALE.items():
        scaled[section] = {**config.get(section, {}), **values}
    # What the full config turns on stays on, at the tiny size: the code path of a curve, not the curve.
    if scaled["fid_over_training"].get("steps"):
        scaled["fid_over_training"]["steps"] = [TINY_SCALE["train"]["steps"] // 2]
    if scaled["evaluate"].get("nll_train_images"):
        scaled["evaluate"]["nll_train_images"] = TINY_SCALE["evaluate"]["nll_num_images"]
    scaled["name"] = f"{config['name']}-tiny"
    return scaled
