"""A sweep in the config → its settings, each with a readable name that is also its folder.

A setting is one point of dataset × schedule × T × mean_type × var_type × loss_type × seed, plus the shared
training hyperparameters. Its name, e.g. ``linear-T1000-eps-fixedlarge-mse-s0``, names its folder
``results/runs/<dataset>/<name>/`` and its MLflow run.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import fields

from .train import TrainConfig

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
    """The names of all settings of the config's sweep (the cross product of its lists), in a stable order."""
    sweep = config["sweep"]
    names = [setting_name(dict(zip(SWEEP_AXES, values))) for values in itertools.product(*(sweep[a] for a in SWEEP_AXES))]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"the sweep lists a setting twice: {sorted(duplicates)}")
    return names


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
