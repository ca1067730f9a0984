"""One vocabulary: every enum and every default of the workflow's JSON schema against the Python registries and
defaults that the package and its command line use (a name or a default changed on one side only fails here)."""

import argparse
import importlib.metadata
import subprocess
import sys
from dataclasses import fields

import pytest
import yaml
from conftest import ROOT

from ddpm.cli import make_parser
from ddpm.datasets import DATASETS, NATIVE_IMAGE_SIZES, PREPROCESSES
from ddpm.presets import PRESETS
from ddpm.samplers.registry import FAMILIES, SAMPLERS, SKIPS
from ddpm.schedules import SCHEDULES
from ddpm.settings import SWEEP_AXES, TINY_SCALE, Setting, TrainConfig
from ddpm.samplers import DEFAULT_SAMPLING
from ddpm.vocabulary import (DECODERS, EXTRACTORS, IMPORT_FORMATS, LOSS_TYPES, MEAN_TYPES, ON_DIVERGENCE,
                             SAMPLE_VARIANCES, SCALES, TIMESTEP_SAMPLERS, VAR_TYPES)

SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())

#: Where each enum of the schema comes from (None: the schema also allows null).
ENUMS = {
    "scale": SCALES,
    "dataset.name": DATASETS,
    "$defs.schedule": tuple(SCHEDULES),
    "$defs.mean_type": MEAN_TYPES,
    "$defs.var_type": VAR_TYPES,
    "$defs.loss_type": LOSS_TYPES,
    "train.preset": tuple(PRESETS),
    "train.timestep_sampler": (*TIMESTEP_SAMPLERS, None),
    "train.on_divergence": ON_DIVERGENCE,
    "evaluate.feature_extractor": EXTRACTORS,
    "evaluate.decoder": DECODERS,
    "$defs.sample_variance": SAMPLE_VARIANCES,
    "$defs.import_format": IMPORT_FORMATS,
    "$defs.preprocess": PREPROCESSES,
}

#: Defaults that only the workflow has: how it shards, retries and places jobs, and where it keeps its files.
WORKFLOW_ONLY = {
    "published", "sweep.rows", "train.retries", "train.threads", "train.gpus", "train.nodes", "sample.shard_size",
    "evaluate.fid_test", "evaluate.nll_train_images", "evaluate.nll_shard_size", "fid_over_training.num_samples",
    "paper_sweep", "pretrained.source", "pretrained.format", "pretrained.revision", "evaluate.ref_stats",
    "reconstruction.steps",
}


def cli_default(*command: str, option: str):
    """The default of ``option`` (its dest) of the ``ddpm`` subcommand ``command`` (e.g. "evaluate", "nll")."""
    parser = make_parser()
    for name in command:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser.get_default(option)


def python_defaults() -> dict:
    """The package's default for every schema key that has one outside the workflow."""
    train = {f.name: f.default for f in fields(TrainConfig)}
    defaults = {f"train.{name}": value for name, value in train.items() if name not in SWEEP_AXES and name != "dataset"}
    defaults.update({f"sweep.{axis}": [value] for axis, value in Setting().axes().items()})
    defaults.update({
        "name": None, "results_dir": cli_default("track", "init", option="results"), "scale": SCALES[0],
        "speed": cli_default("train", option="speed"),
        "dataset.name": train["dataset"],
        "dataset.path": cli_default("prepare", option="path"),
        "dataset.download": cli_default("prepare", option="download"),
        "dataset.image_size": cli_default("prepare", option="image_size"),
        "dataset.test_fraction": cli_default("prepare", option="test_fraction"),
        "dataset.preprocess": cli_default("prepare", option="preprocess"),
        "train.on_divergence": cli_default("train", option="on_divergence"),
        "sample.num_samples": cli_default("evaluate", "baseline", option="num_samples"),
        "sample.batch_size": cli_default("sample", option="batch_size"),
        "sampling": [dict(row) for row in DEFAULT_SAMPLING],
        "sample.seed": cli_default("sample", option="seed"),
        "sample.grid_size": cli_default("grid", option="grid_size"),
        "evaluate.feature_extractor": cli_default("evaluate", "fid", option="feature_extractor"),
        "evaluate.inception_weights": cli_default("evaluate", "fid", option="weights"),
        "evaluate.classifier_steps": cli_default("classifier", option="steps"),
        "evaluate.bootstrap_rounds": cli_default("evaluate", "fid", option="bootstrap_rounds"),
        "evaluate.nll_num_images": cli_default("evaluate", "nll", option="count"),
        "evaluate.nll_batch_size": cli_default("evaluate", "nll", option="batch_size"),
        "evaluate.nll_timesteps_per_pass": cli_default("evaluate", "nll", option="timesteps_per_pass"),
        "pretrained.flags": cli_default("import", option="flags"),
        "evaluate.seed": cli_default("evaluate", "nll", option="seed"),
        "evaluate.decoder": cli_default("evaluate", "nll", option="decoder"),
        "evaluate.ref_images": cli_default("evaluate", "fid", option="ref_images"),
        "reconstruction.skip": cli_default("evaluate", "reconstruction", option="skip"),
        "reconstruction.num_images": cli_default("evaluate", "reconstruction", option="count"),
        "reconstruction.batch_size": cli_default("evaluate", "reconstruction", option="batch_size"),
        "fid_over_training.steps": cli_default("train", option="snapshot_steps"),
        "mlflow.tracking_uri": cli_default("track", "init", option="tracking_uri"),
    })
    return defaults


def schema_keys(node: dict, prefix: str = ""):
    """(dotted key, schema node) of every property of the schema, depth first."""
    for name, child in node.get("properties", {}).items():
        key = f"{prefix}{name}"
        yield key, child
        yield from schema_keys(child, f"{key}.")


def enum_locations(schema: dict) -> dict[str, list]:
    found = {key: node["enum"] for key, node in schema_keys(schema) if "enum" in node}
    found.update({f"$defs.{name}": node["enum"] for name, node in schema.get("$defs", {}).items() if "enum" in node})
    return found


def enum_disagreements(schema: dict) -> dict[str, tuple]:
    """Enum → (the schema's names, the package's) where they differ, or where either side has no counterpart."""
    found = enum_locations(schema)
    return {key: (found.get(key), list(ENUMS[key]) if key in ENUMS else None) for key in set(found) | set(ENUMS)
            if key not in found or key not in ENUMS or found[key] != list(ENUMS[key])}


def default_disagreements(schema: dict) -> dict[str, tuple]:
    """Key → (the schema's default, the package's) where they differ; a schema default with no Python counterpart
    that is not listed as the workflow's own, or a Python default the schema lacks, is reported with None."""
    given = {key: node["default"] for key, node in schema_keys(schema) if "default" in node and node.get("type") != "object"}
    python = python_defaults()
    found = {key: (given[key], None) for key in set(given) - set(python) - WORKFLOW_ONLY}
    found.update({key: (None, python[key]) for key in set(python) - set(given) - {"name"}})
    found.update({key: (given[key], python[key]) for key in set(given) & set(python) if given[key] != python[key]})
    return found


def test_every_enum_of_the_schema_is_a_registry_of_the_package():
    assert len(enum_locations(SCHEMA)) == len(ENUMS)
    assert enum_disagreements(SCHEMA) == {}


def test_every_default_of_the_schema_is_the_packages():
    assert not set(python_defaults()) & WORKFLOW_ONLY
    assert default_disagreements(SCHEMA) == {}


def test_the_tiny_scale_lays_the_schemas_dataset_defaults_over_a_config():
    schema = dict(schema_keys(SCHEMA))
    assert TINY_SCALE["dataset"] == {key: schema[f"dataset.{key}"]["default"] for key in TINY_SCALE["dataset"]}


def test_the_disagreements_of_the_old_schema_and_code_are_found():
    """TrainConfig's log_every 50 and checkpoint_every 0 against the schema's 100 and 1000 (as they stood before
    this test), a schedule missing from the schema, a new enum without a registry, a default nobody owns."""
    schema = yaml.safe_load(yaml.safe_dump(SCHEMA))
    train = schema["properties"]["train"]["properties"]
    train["log_every"]["default"], train["checkpoint_every"]["default"] = 50, 0
    train["ema_warmup"] = {"type": "integer", "default": 0}
    train["optimizer"] = {"enum": ["adam", "adamw"], "default": "adam"}
    schema["$defs"]["schedule"]["enum"].remove("sigmoid")
    assert set(default_disagreements(schema)) == {"train.log_every", "train.checkpoint_every", "train.ema_warmup",
                                                   "train.optimizer"}
    assert default_disagreements(schema)["train.log_every"] == (50, 100)
    assert set(enum_disagreements(schema)) == {"$defs.schedule", "train.optimizer"}


def test_command_line_choices_are_the_registries():
    assert cli_default("train", option="preset") == "tiny"
    with pytest.raises(SystemExit):
        make_parser().parse_args(["train", "--out", "x", "--schedule", "cosin"])
    with pytest.raises(SystemExit):
        make_parser().parse_args(["evaluate", "fid", "--samples", "s", "--data", "d", "--out", "o",
                                  "--feature-extractor", "inception"])
    args = make_parser().parse_args(["train", "--out", "x", "--schedule", "sigmoid", "--var-type", "learned_range"])
    assert (args.schedule, args.var_type) == ("sigmoid", "learned_range")


def test_the_sampler_families_are_listed_once_by_themselves():
    """No list of sampler names outside the families: the schema takes any string (the family checks it), the command
    line offers the registry's, and the registry is every family module, each with its name, summary and skips."""
    assert SCHEMA["$defs"]["sampler"] == {"type": "string"} and SCHEMA["$defs"]["skip"] == {"type": "string"}
    sample = make_parser().parse_args(["sample", "--checkpoint", "c", "--out", "o.npz", "--sampler", SAMPLERS[-1]])
    assert sample.sampler == SAMPLERS[-1] and sample.skip is None and sample.clip is None
    modules = sorted(p.stem for p in (ROOT / "ddpm" / "samplers" / "families").glob("*.py") if p.stem != "__init__")
    assert sorted(family.__module__.rsplit(".", 1)[1] for family in FAMILIES.values()) == modules
    assert set(SAMPLERS) >= {"ancestral", "ddim", "dpm-solver++"}
    for family in FAMILIES.values():
        assert family.summary and family.skips and set(family.skips) <= set(SKIPS)


def _options_without_help(parser: argparse.ArgumentParser, command: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options_without_help(sub, (*command, name))
        elif not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
            yield f"ddpm {' '.join(command)} {'/'.join(action.option_strings) or action.dest}"


def test_every_option_of_every_command_has_a_help_line_and_ddpm_has_a_version():
    assert list(_options_without_help(make_parser())) == []
    result = subprocess.run([sys.executable, "-m", "ddpm.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"ddpm {importlib.metadata.version('ddpm-repro')}"


def test_one_table_of_native_image_sizes_and_presets_that_take_them():
    assert set(NATIVE_IMAGE_SIZES) == set(DATASETS) - {"imagefolder"}
    assert PRESETS["cifar10"].image_size == NATIVE_IMAGE_SIZES["cifar10"]
    assert PRESETS["tiny"].image_size == NATIVE_IMAGE_SIZES["digits"]
