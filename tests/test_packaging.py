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
    assert project["scripts"]["ddpm"] == "ddpm.launch:console_main"


PROBE = """
import gc, sys
import ddpm.cli as cli

seen = {}

def probe(args):
    seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count(), torch="torch" in sys.modules)
    if args.fail:
        raise ValueError("the probe was told to fail")

def add_probe(parser):
    parser.add_argument("--threads", type=int)
    parser.add_argument("--fail", action="store_true")

cli.COMMANDS.append((None, "probe", "", add_probe, probe))
entry, sys.argv = sys.argv[1], ["ddpm", "probe", "--threads", "1", *sys.argv[2:]]
if entry == "module":  # python -m ddpm.cli
    import runpy
    try:
        runpy.run_module("ddpm.cli", run_name="__main__")
    except SystemExit as exit:
        code = exit.code
else:
    code = cli.console_main()
print(seen["enabled"], seen["frozen"], seen["torch"], gc.isenabled(), gc.get_freeze_count(), code)
"""


@pytest.mark.parametrize("entry, fail", [("script", False), ("script", True), ("module", False)])
def test_the_console_script_freezes_the_start_up_and_runs_the_work_with_the_collector_on(entry, fail):
    """console_main (the ``ddpm`` executable, ``python -m ddpm.cli``) freezes what the start-up imported (torch here,
    for --threads) and turns the collector back on before the command's work; the exit code is main's."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", PROBE, entry, *(["--fail"] if fail else [])], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    enabled, frozen, torch_loaded, enabled_after, frozen_after, code = result.stdout.split()
    assert enabled == "True" and torch_loaded == "True"
    assert int(frozen) > 100_000  # torch's objects, frozen before the work
    assert enabled_after == "True" and int(frozen_after) >= int(frozen)
    assert code == ("2" if fail else "0")
    assert ("the probe was told to fail" in result.stderr) == fail
