"""The pinned set is one set: constraints.txt (pip), environment.yml (conda) and pyproject.toml agree."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_constraints_pin_the_known_good_set():
    pins = constraint_pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.2"  # a matching pair (see constraints.txt)
    assert pins["mlflow"] == "3.17.2" and pins["torch-fidelity"] == "0.4.0" and pins["snakemake"] == "9.27.1"
    assert pins["pandas"].startswith("3.1.")


@pytest.mark.parametrize("env_file", ["environment.yml", *sorted(p.relative_to(ROOT).as_posix()
                                                             for p in (ROOT / "workflow" / "envs").glob("*.yaml"))])
def test_conda_environments_have_the_same_pins(env_file):
    env = yaml.safe_load((ROOT / env_file).read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = {}
    for req in pip_section:
        if "==" in req:
            name, version = req.split("==")
            conda_pins[name.lower()] = version
    assert conda_pins == constraint_pins()
    assert "python=3.11" in env["dependencies"] and "nodefaults" in env["channels"]


def test_every_dependency_is_pinned_and_the_console_script_exists():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    assert declared <= set(constraint_pins()), declared - set(constraint_pins())
    assert project["scripts"]["ddpm"] == "ddpm.cli:main"
