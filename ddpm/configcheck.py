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
