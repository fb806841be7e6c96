"""musketeers/ in layers (musketeers/layers.py): every import, function-local and TYPE_CHECKING ones
included, goes to the importer's layer or below, and no import circle exists among the project's
modules (musketeers/, experts/, rewards/). Also: no module of the project is over MAX_LINES lines."""
import ast
from pathlib import Path

import pytest

from musketeers.layers import LAYERS

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("musketeers", "experts", "rewards")
MAX_LINES = 450  # a module a newcomer can hold in mind


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imports_of(name: str, tree: ast.AST, is_package: bool) -> set[str]:
    """Project modules a module imports anywhere in its source (inside functions and `if TYPE_CHECKING:`
    too), relative imports resolved; `from pkg import mod` counts as importing pkg.mod."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: None if is_package else -1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` of a module a.b: count a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name, ast.parse(path.read_text(), str(path)), path.name == "__init__.py")
         for name, path in MODULES.items()}


def layer_of(name: str) -> int | None:
    short = "__init__" if name == "musketeers" else name.removeprefix("musketeers.")
    return next((k for k, layer in enumerate(LAYERS) if short in layer), None)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (a, b, ..., a), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_check_reads_every_form_of_import():
    source = ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\nimport musketeers.data as d\n"
              "from musketeers import config\nfrom . import rundir\nfrom .train import train\n"
              "if TYPE_CHECKING:\n    from musketeers.trainer import MusketeersGRPOTrainer\n"
              "def f():\n    from musketeers.evaluate import evaluate\n    import experts.pool\n")
    assert imports_of("musketeers.report", ast.parse(source), is_package=False) == {
        "musketeers.data", "musketeers.config", "musketeers.rundir", "musketeers.train", "musketeers.trainer",
        "musketeers.evaluate", "experts.pool", "musketeers"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_of_musketeers_is_in_exactly_one_layer():
    declared = [name for layer in LAYERS for name in layer]
    assert len(declared) == len(set(declared)), "a module is listed in two layers of musketeers/layers.py"
    present = {"__init__" if n == "musketeers" else n.removeprefix("musketeers.")
               for n in MODULES if n.split(".")[0] == "musketeers"}
    missing, unknown = sorted(present - set(declared)), sorted(set(declared) - present)
    assert not missing, f"declare these modules' layer in musketeers/layers.py: {missing}"
    assert not unknown, f"musketeers/layers.py lists modules that do not exist: {unknown}"


def test_imports_go_only_down_the_layers():
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
              for name, targets in sorted(GRAPH.items()) if name.split(".")[0] == "musketeers"
              for target in sorted(targets) if target.split(".")[0] == "musketeers" and layer_of(target) > layer_of(name)]
    assert not upward, "imports up the layers of musketeers/layers.py:\n" + "\n".join(upward)


def test_no_import_circle_among_the_projects_modules():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("package", PACKAGES + ("launch",))
def test_no_module_is_over_the_line_limit(package):
    long = {str(p.relative_to(REPO)): n for p in sorted((REPO / package).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"
