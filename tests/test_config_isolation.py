"""A config given with ``--configfile`` is the whole config (plus the schema's defaults): nothing of the demo's
``config/config.yaml`` reaches it. Checked where the README's commands run, from the root of a checkout (with
``--directory`` the default config is not found, which hid the leak), on a copy of this one."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, stand_ins_for_local_inputs, unactivated_environment

from ddpm.configcheck import DEFAULT_CONFIG, SCHEMA_PATH

#: Lines of a dry run that change from one run to the next whatever the config: the header, the timestamps, job ids,
#: and the reasons (sets of files in hash order; the inputs and outputs they name are in the plan's other lines).
VOLATILE = ("Date:", "Workflow ID:", "Command:", "Config file(s):", "Config MD5:", "jobid:", "[", "reason:")


def _checkout(folder: Path) -> Path:
    """A copy of this checkout's files (tracked, and new ones git does not ignore), with what the configs read at
    their relative paths (the LSUN and CelebA images, the published-weights files: stand-ins), as a user's checkout
    would hold them."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    for config in sorted((folder / "config").glob("*.yaml")):
        stand_ins_for_local_inputs(yaml.safe_load(config.read_text()), folder)
    return folder


def _plan(checkout: Path, *args: str) -> list[str]:
    """The dry run's plan with its shell commands (``snakemake -n -p``, started from the checkout's root as the
    README does, the venv not activated), as sorted lines without the volatile ones; an error is a plan too."""
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", *args], cwd=checkout, capture_output=True,
                            text=True, env=unactivated_environment(), timeout=600)
    lines = (result.stdout + result.stderr).splitlines()
    return sorted(line for line in lines if line.strip() and not line.strip().startswith(VOLATILE)) + \
        [f"exit {result.returncode}"]


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _enum(schema: dict, root: dict) -> list | None:
    """The values an enum (or an ``anyOf`` with one) allows, else None."""
    schema = _resolve(schema, root)
    if "enum" in schema:
        return schema["enum"]
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        found = _enum(branch, root)
        if found:
            return found
    return None


def _items(schema: dict, root: dict) -> dict:
    schema = _resolve(schema, root)
    if "items" in schema:
        return schema["items"]
    for branch in schema.get("anyOf", []):
        if "items" in _resolve(branch, root):
            return _resolve(branch, root)["items"]
    return schema


def _changed(value, schema: dict, root: dict):
    """``value`` with every leaf changed: another value of its enum, a number moved, a boolean negated, a string
    lengthened; dicts and lists leaf by leaf."""
    schema = _resolve(schema, root)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {key: _changed(v, properties.get(key, {}), root) for key, v in value.items()}
    if isinstance(value, list):
        return [_changed(v, _items(schema, root), root) for v in value]
    choices = _enum(schema, root)
    if choices:
        return choices[(choices.index(value) + 1) % len(choices)]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 + 0.25
    return f"{value}-changed"


def _leaves(value, prefix=""):
    if isinstance(value, dict):
        for key, v in value.items():
            yield from _leaves(v, f"{prefix}.{key}".lstrip("."))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def test_no_value_of_the_default_config_reaches_another_configs_plan(tmp_path):
    checkout = _checkout(tmp_path / "checkout")
    configs = sorted(p.name for p in (checkout / "config").glob("*.yaml") if p.name != DEFAULT_CONFIG.name)
    assert len(configs) >= 8, configs
    before = {name: _plan(checkout, "--configfile", f"config/{name}") for name in configs}
    for name, plan in before.items():
        assert plan[-1] == "exit 0", (name, plan[-40:])  # every paper config plans from the checkout's root
    demo = _plan(checkout)
    assert demo[-1] == "exit 0" and any("digits-demo" in line for line in demo)

    default = checkout / "config" / DEFAULT_CONFIG.name
    original = yaml.safe_load(default.read_text())
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    changed = _changed(original, schema, schema)
    old, new = dict(_leaves(original)), dict(_leaves(changed))
    assert old.keys() == new.keys() and all(old[key] != new[key] for key in old), (old, new)
    default.write_text(yaml.safe_dump(changed))

    assert _plan(checkout) != demo  # the change is real: the demo (no --configfile) runs the changed file
    leaked = [name for name in configs if _plan(checkout, "--configfile", f"config/{name}") != before[name]]
    assert leaked == [], f"config/config.yaml reaches the plans of {leaked}"


@pytest.mark.parametrize("name", ["ddpm_table1", "ddpm_table2", "improved_ddpm_schedules", "ddpm_lsun", "ddim_table1",
                                  "cifar10", "ddpm_cifar10_pretrained", "ddpm_lsun_pretrained",
                                  "iddpm_cifar10_pretrained", "ddim_celeba_pretrained"])
def test_each_paper_config_states_what_its_paper_fixed(name):
    """What a paper fixed is written in its config, not left to the schema's defaults (which are the demo's size):
    the data, the network and its training, the sampler, the samples and the evaluation's protocol."""
    config = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
    given = dict(_leaves(config))
    stated = ["dataset.name", "sweep.schedule", "sweep.T", "sweep.seed", "train.preset", "train.dropout", "train.steps",
              "train.batch_size", "train.lr", "train.warmup", "train.grad_clip", "train.ema_decay", "train.flip",
              "train.schedule_rescale", "train.timestep_sampler", "sampling[0].sampler", "sample.num_samples",
              "evaluate.feature_extractor", "evaluate.decoder"]
    missing = [key for key in stated if key not in given and not any(k.startswith(f"{key}[") for k in given)]
    assert missing == [], f"config/{name}.yaml leaves {missing} to the schema's defaults"
    rows = config["sweep"].get("rows") or [{}]
    for axis in ("mean_type", "var_type", "loss_type"):  # each setting's objective, in the lists or in every row
        assert axis in config["sweep"] or all(axis in row for row in rows), (name, axis)
    assert config["evaluate"]["decoder"] == "official"  # the papers' decoder beside their NLLs
    if config["dataset"]["name"] == "imagefolder":  # LSUN: prepared and scored as DDPM's were (StyleGAN2's fid50k);
        expected = ("ddim-celeba", None) if "celeba" in name else ("stylegan", 50000)  # CelebA: as ddim prepares it
        assert (config["dataset"]["preprocess"], config["evaluate"].get("ref_images")) == expected
