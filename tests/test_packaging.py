"""Packaging: a wheel carries configs/, so an install outside any checkout finds its tasks and teams."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from musketeers.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
WHEEL_INPUTS = ("pyproject.toml", "README.md", "configs", "musketeers", "experts", "rewards")
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing may point back at the checkout


def run(*argv, cwd=None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, argv[:4]))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def test_wheel_installed_outside_the_checkout_shows_a_task(tmp_path):
    # Build from a copy: an in-tree build leaves build/ in the checkout, and its stale files ship in later wheels.
    src = tmp_path / "src"
    src.mkdir()
    for name in WHEEL_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp_path / "dist", src)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(*pip, "--python", python, "install", "--no-deps", "--no-index", *(tmp_path / "dist").glob("*.whl"))
    # The dependencies come from this interpreter's site-packages as a plain path line, which (unlike the
    # .pth files inside it) does not start the editable install's finder: only the wheel's musketeers is there.
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = run(python, "-c", "import musketeers.config as c; print(c.__file__); print(c.CONFIG_DIR)", cwd=tmp_path)
    assert all(Path(p).resolve().is_relative_to(venv.resolve()) for p in where.stdout.split()), where.stdout
    shown = run(venv / "bin" / "musketeers", "config", "show", "arithmetic", cwd=tmp_path)
    assert "complex_arithmetic" in shown.stdout


def test_a_checkout_reads_its_own_configs():
    assert CONFIG_DIR == REPO / "configs"  # so edits in the checkout take effect without a reinstall
