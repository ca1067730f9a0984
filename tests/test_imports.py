"""The package's layering, read from its source (ast): no import cycle in ``ddpm/``, counting imports inside
functions too, and the math core importing nothing above it. And the workflow parsing its config without torch
(``python -X importtime``)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, unactivated_environment

PACKAGE = ROOT / "ddpm"
#: The process, the network (and its presets), their losses and the per-sample noise: what improved-diffusion keeps
#: apart from the rest.
MATH_CORE = {"schedules", "diffusion", "losses", "timestep_samplers", "unet", "presets", "noise"}
#: What the math core may use besides itself: the progress line and the names, which import nothing of the package.
LEAVES = {"progress", "vocabulary"}


def units() -> set[str]:
    """The package's parts: its modules and its subpackages (``cli``, ``samplers``), each counted as one."""
    return {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def package_imports(source: str, module: str, depth: int = 0) -> set[str]:
    """The ``ddpm`` parts that ``module``'s source imports anywhere (top level or inside functions); ``depth``: how
    deep in a subpackage the file lies (0 for ``ddpm/x.py``, 1 for ``ddpm/cli/x.py``): a relative import that stays
    inside its subpackage is the part itself."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == depth + 1 and node.module:  # from .x import y (from ..x in a subpackage)
                found.add(node.module.split(".")[0])
            elif node.level == depth + 1:  # from . import x
                found.update(alias.name for alias in node.names)
            elif node.level == 0 and node.module and node.module.split(".")[0] == "ddpm":  # from ddpm.x import y
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith("ddpm.") and alias.name.count(".") >= 1)
    return (found & units()) - {module}


def import_graph() -> dict[str, set[str]]:
    """Part → the parts it imports (a subpackage's files together)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        unit = relative.parts[0] if len(relative.parts) > 1 else path.stem
        if unit == "__init__":
            continue
        graph.setdefault(unit, set()).update(package_imports(path.read_text(), unit, len(relative.parts) - 1))
    return graph


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
    assert "samplers" in graph["cli"] and "settings" not in graph["samplers"]
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
    ("from ..samplers.point import SamplerPoint", set()),  # depth 0: outside the package
])
def test_the_walk_sees_every_form_of_import(source, expected):
    assert package_imports(source, "other") == expected


#: The house's sizes (issue 26): a module a reader takes in at once, a function that fits on a screen.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 80


def oversized(path: Path) -> list[str]:
    """The module (over :data:`MAX_MODULE_LINES` lines) and its functions (over :data:`MAX_FUNCTION_LINES` lines of
    body, the docstring not counted) that are too long, with their sizes."""
    source = path.read_text()
    found = [f"{path.name}: {len(source.splitlines())} lines"] if len(source.splitlines()) > MAX_MODULE_LINES else []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0]
            docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
                isinstance(first.value.value, str)
            start = first.end_lineno + 1 if docstring and len(node.body) > 1 else first.lineno
            if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                found.append(f"{path.name}: {node.name} {node.end_lineno - start + 1} lines")
    return found


def test_no_module_over_600_lines_and_no_function_over_80():
    found = [line for path in sorted(PACKAGE.rglob("*.py")) for line in oversized(path)]
    assert found == [], found


def test_the_size_check_sees_a_long_module_and_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(81))
    (tmp_path / "long.py").write_text(f'def f():\n    """Doc\n    string."""\n{body}\n' + "\n" * 600)
    assert oversized(tmp_path / "long.py") == ["long.py: 684 lines", "long.py: f 81 lines"]
    (tmp_path / "short.py").write_text('def f():\n    """Doc."""\n' + "\n".join(f"    x{i} = {i}" for i in range(80)))
    assert oversized(tmp_path / "short.py") == []


def test_the_walk_reads_a_subpackages_relative_imports():
    assert package_imports("from ..samplers.point import SamplerPoint\nfrom .common import x", "cli", 1) == {"samplers"}
    assert package_imports("from ...settings import Setting\nfrom ..base import Sampler", "samplers", 2) == {"settings"}


def test_a_cycle_is_found_and_shown():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def imported_modules(importtime_log: str) -> set[str]:
    """The modules named in ``python -X importtime``'s report (one line per module: ``import time: … | name``)."""
    return {line.rsplit("|", 1)[-1].strip() for line in importtime_log.splitlines() if line.startswith("import time:")}


def local_source(path: Path) -> list[str]:
    """Scaled down, an evaluation of published weights takes a local source (a Hub id is refused): any existing path
    parses (for a config of several published models, one per setting)."""
    source = yaml.safe_load(path.read_text()).get("pretrained", {}).get("source")
    if source is None:
        return []
    readme = ROOT / "README.md"
    mapped = ", ".join(f"{name}: {readme}" for name in source) if isinstance(source, dict) else None
    return [f"pretrained={{source: {{{mapped}}}}}" if mapped else f"pretrained={{source: {readme}}}"]


@pytest.mark.parametrize("config,overrides", [(TINY, [])] + [
    (path, ["--config", "scale=tiny", *local_source(path)]) for path in sorted((ROOT / "config").glob("*.yaml"))
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
