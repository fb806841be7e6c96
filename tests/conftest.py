"""Shared test setup: one torch thread (2-core machines), no network, a private model cache."""
import os
import re

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
GSM8K_DIR = REPO / "data" / "gsm8k"  # carried in the repository (data/gsm8k/README.md)


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not (GSM8K_DIR / "test.jsonl").exists():
        pytest.fail(f"GSM8K data not found at {GSM8K_DIR} (the repository carries it: data/gsm8k/README.md)")
    return GSM8K_DIR


# The suite runs on two xdist workers (pyproject.toml: -n 2 --dist loadgroup), one torch thread each.
# Ray is one per machine as far as these tests go (a second `ray.init` may join the first's cluster),
# so every test of a module that mentions Ray runs on the same worker, one after another.
_RAY_WORD = re.compile(r"\bray\b")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config, items):
    uses_ray: dict[Path, bool] = {}
    for item in items:
        path = Path(item.fspath)
        if path not in uses_ray:
            uses_ray[path] = bool(_RAY_WORD.search(path.read_text()))
        if uses_ray[path]:
            item.add_marker(pytest.mark.xdist_group("ray"))


def pytest_configure(config):
    """xdist groups tests by a suffix it writes into the node id, which pytest 9.2 no longer reads
    (pytest-xdist issue 1386): the Ray tests would spread over both workers, so stop and say so."""
    grouped = config.getoption("dist", "no") == "loadgroup" and config.getoption("numprocesses", None)
    if grouped and not hasattr(config, "workerinput") and pytest.version_tuple[:2] >= (9, 2):
        raise pytest.UsageError(f"pytest {pytest.__version__} drops xdist's test groups (pytest-xdist issue 1386): "
                                "install pytest<9.2 (the dev extra in pyproject.toml pins it) or run with -n 0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A test outside the Ray group that starts Ray in this process fails, naming why: the grouping above
    only holds if every test that starts Ray mentions it in its module."""
    if item.get_closest_marker("xdist_group"):
        yield
        return
    import ray  # about a second, once per worker

    init = ray.init

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{item.nodeid} starts Ray, but its module never says 'ray': tests/conftest.py "
                           "groups the Ray tests on one xdist worker by that word (set team.backend=local, or name Ray)")

    ray.init = refuse
    try:
        yield
    finally:
        ray.init = init
