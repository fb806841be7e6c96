"""The launch/ scripts as modules (launch/ holds scripts, not a package): `probe` is launch/path_probe.py,
`chance` launch/chance_accuracy.py."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def probe():
    return load_script("path_probe")


@pytest.fixture(scope="module")
def chance():
    return load_script("chance_accuracy")


@pytest.fixture(scope="module")
def merge_lora():
    return load_script("merge_lora")
