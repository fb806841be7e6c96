"""One-way packages: musketeers/ (the learner) uses experts/ and rewards/; they never import it back."""
import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = sorted(path for package in ("experts", "rewards") for path in (REPO / package).rglob("*.py"))


def imported_modules(tree: ast.AST):
    """(line, module) of every absolute import in a module, imports inside functions included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:  # relative imports stay in their package
            yield node.lineno, node.module


def test_the_check_sees_every_form_of_import():
    source = "import musketeers.data as d\ndef f():\n    from musketeers import config\n"
    assert list(imported_modules(ast.parse(source))) == [(1, "musketeers.data"), (3, "musketeers")]


def test_experts_and_rewards_never_import_musketeers():
    found = [f"{path.relative_to(REPO)}:{line}: imports {module}"
             for path in FILES
             for line, module in imported_modules(ast.parse(path.read_text(), str(path)))
             if module.split(".")[0] == "musketeers"]
    assert FILES
    assert not found, "experts/ and rewards/ must not import musketeers:\n" + "\n".join(found)


def test_importing_experts_and_rewards_loads_no_musketeers_module():
    modules = [".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for path in FILES]
    script = (f"import importlib, json, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'musketeers')))")
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.splitlines()[-1])
    assert not loaded, f"importing experts/ and rewards/ loaded {loaded}"
