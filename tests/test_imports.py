"""The package's layering, read from its source (ast): no import cycle in ``ddpm/``, counting imports inside
functions too, and the math core importing nothing above it. And the workflow parsing its config without torch
(``python -X importtime``)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, unactivated_environment

PACKAGE = ROOT / "ddpm"
#: The process, the network (and its presets) and their losses: what improved-diffusion keeps apart from the rest.
MATH_CORE = {"schedules", "diffusion", "losses", "resample", "unet", "presets"}
#: What the math core may use besides itself: the progress line and the names, which import nothing of the package.
LEAVES = {"progress", "vocabulary"}


def package_imports(source: str, module: str) -> set[str]:
    """The ``ddpm`` modules that ``module``'s source imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] == "ddpm":  # from ddpm.x import y
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith("ddpm.") and alias.name.count(".") >= 1)
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return (found & modules) - {module}


def import_graph() -> dict[str, set[str]]:
    return {path.stem: package_imports(path.read_text(), path.stem) for path in sorted(PACKAGE.glob("*.py"))}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path (first module repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert graph["train"] and graph["cli"], "the walk found no imports: it reads nothing"
    assert cycle(graph) is None, " → ".join(cycle(graph))


def test_the_math_core_imports_nothing_above_it():
    graph = import_graph()
    above = {module: sorted(graph[module] - MATH_CORE - LEAVES) for module in MATH_CORE}
    assert all(not imports for imports in above.values()), above
    assert all(not graph[leaf] for leaf in LEAVES), {leaf: graph[leaf] for leaf in LEAVES}


@pytest.mark.parametrize("source,expected", [
    ("from .train import x", {"train"}),
    ("def f():\n    from .sample import y", {"sample"}),
    ("from . import tracking as mlf", {"tracking"}),
    ("from ddpm.checkpoint import save_checkpoint", {"checkpoint"}),
    ("import ddpm.datasets", {"datasets"}),
    ("import torch\nfrom pathlib import Path", set()),
])
def test_the_walk_sees_every_form_of_import(source, expected):
    assert package_imports(source, "other") == expected


def test_a_cycle_is_found_and_shown():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def imported_modules(importtime_log: str) -> set[str]:
    """The modules named in ``python -X importtime``'s report (one line per module: ``import time: … | name``)."""
    return {line.rsplit("|", 1)[-1].strip() for line in importtime_log.splitlines() if line.startswith("import time:")}


#: Scaled down, an evaluation of published weights takes a local source (a Hub id is refused): any existing path parses.
LOCAL_SOURCE = f"pretrained={{source: {ROOT / 'README.md'}}}"


@pytest.mark.parametrize("config,overrides", [(TINY, [])] + [
    (path, ["--config", "scale=tiny", *([LOCAL_SOURCE] if "pretrained" in path.name else [])])
    for path in sorted((ROOT / "config").glob("*.yaml"))
], ids=lambda value: value.name if isinstance(value, Path) else " ".join(value[:2]))
def test_the_workflow_parses_without_importing_torch(config, overrides, tmp_path):
    """Every Snakemake start (twice per SLURM job) parses the Snakefile: checking the config must not pay for torch."""
    command = [sys.executable, "-X", "importtime", "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
               "--directory", str(tmp_path), "--configfile", str(config), *overrides, "-n", "--quiet", "rules"]
    result = subprocess.run(command, capture_output=True, text=True, env=unactivated_environment(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = imported_modules(result.stderr)
    assert {"snakemake", "ddpm.settings", "ddpm.presets", "ddpm.datasets"} <= imported, "importtime reported nothing"
    assert sorted(m for m in imported if m.split(".")[0] == "torch") == []


def test_imported_modules_reads_importtime_lines():
    log = ("import time: self [us] | cumulative | imported package\n"
           "import time:       271 |        271 |   ddpm\n"
           "import time:      1200 |       9000 | torch._C\n")
    assert imported_modules(log) == {"imported package", "ddpm", "torch._C"}
