"""The flags each workflow rule passes to its ``ddpm`` command, rendered from the resolved config in one place (the
rules in ``workflow/rules/`` only build paths and call these). Torch-free: the workflow renders them while it parses.

A rendered string is part of its rule's command: a change here reruns the jobs of that rule, so each function keeps
its output stable for a config that has not changed.
"""

from __future__ import annotations

import shlex
from dataclasses import fields

from .samplers.point import SamplerPoint
from .settings import Setting, TrainConfig, train_config

#: The training keys that change no weight: how often it logs the loss, draws a preview and saves its resume state
#: (a resumed training is the same bit for bit). A change of them reruns no training.
CADENCE_KEYS = ("log_every", "preview_every", "checkpoint_every")


def _value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def train_flags(config: dict, setting: Setting, *, cadence: bool = False) -> str:
    """``ddpm train``'s flags of ``setting``: those that decide what it trains, or with ``cadence`` those of
    :data:`CADENCE_KEYS` alone."""
    resolved = train_config(config, setting)
    return " ".join(f"--{f.name.replace('_', '-')} {_value(getattr(resolved, f.name))}" for f in fields(TrainConfig)
                    if getattr(resolved, f.name) is not None and (f.name in CADENCE_KEYS) == cadence)


def sampler_flags(point: SamplerPoint) -> str:
    """``ddpm sample``'s flags that draw ``point``: its family, skip, S and the family's own keys (``--clip`` or
    ``--no-clip`` only where the point's clipping is not its family's default)."""
    family = point.family
    flags = f"--sampler {point.sampler} --skip {point.skip}" + (f" --steps {point.steps}" if point.steps else "")
    flags += "".join(f" --{key} {getattr(point, key)}" for key in family.keys)
    return flags + ("" if point.clip == family.clip else " --clip" if point.clip else " --no-clip")


def pretrained_value(config: dict, key: str, setting_name: str):
    """``pretrained.<key>`` of one setting: the value, or the setting's entry where the config maps each setting's
    name to its own (a sweep of several published models)."""
    value = config["pretrained"][key]
    return value.get(setting_name) if isinstance(value, dict) else value


def import_flags(config: dict, setting: Setting) -> str:
    """``ddpm import``'s flags of a setting: its axes (the source must be that setting), format, revision and
    improved-diffusion's flags (one ``--flags=…`` word: they start with dashes)."""
    flags = " ".join(f"--{axis.replace('_', '-')} {value}" for axis, value in setting.axes().items())
    for key in ("format", "revision", "flags"):
        value = pretrained_value(config, key, setting.name)
        if value is not None:
            flags += f" {shlex.quote(f'--{key}={value}')}"
    return flags


def extractor_flags(config: dict, weights: str | None) -> str:
    """The scoring jobs' feature extractor and its weights file (the trained classifier, or local Inception
    weights)."""
    flags = f"--feature-extractor {config['evaluate']['feature_extractor']}"
    return flags + (f" --weights {shlex.quote(weights)}" if weights else "")


def reference_flags(config: dict) -> str:
    """FID's reference: the train split's first ``evaluate.ref_images`` images ("" for all of them)."""
    count = config["evaluate"]["ref_images"]
    return "" if count is None else f"--ref-images {count}"


def ref_stats_flags(config: dict, path: str, *, foreign: bool) -> str:
    """The FID jobs' reference statistics file (``foreign``: one from elsewhere, with no record of ours beside it)
    and the reference images."""
    reference = reference_flags(config)
    return f"--ref-stats {shlex.quote(path)}" + (" --foreign-ref-stats" if foreign else "") + \
        (f" {reference}" if reference else "")


def bootstrap_flags(config: dict) -> str:
    """The bootstrap behind the standard errors of FID, IS and KID (``ddpm.metrics.bootstrap_errors``)."""
    return f"--bootstrap-rounds {config['evaluate']['bootstrap_rounds']}"
