"""Reasoning Gym splits are the same in every process, whatever its PYTHONHASHSEED, and the cache that
makes them so detects damage (musketeers/splits.py)."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import musketeers.splits as splits
from musketeers.config import ConfigError, load_run_config
from musketeers.data import disjointness_report, load_split, question_key

REPO = Path(__file__).resolve().parents[2]
# every dataset of every Reasoning Gym task file, a few items each (every dataset occurs: asserted below)
SMALL_TASKS = {"arithmetic": (60, 40), "algorithmic": (60, 40), "logic": (40, 30), "demo": (20, 10)}
HASH_SENSITIVE = [{"name": "isomorphic_strings", "config": {"max_string_length": 8}},
                  {"name": "chain_sum", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}}]

# a task file's task with other sizes (and datasets), built without load_run_config, whose validation
# imports torch and peft: seconds per subprocess
TASK_OF = f"""
import json, sys, yaml
from musketeers.config import DatasetSpec, TaskConfig
def task_of(name, train, validation, datasets=None):
    spec = yaml.safe_load(open(f"{REPO}/configs/tasks/{{name}}.yaml"))["task"]
    datasets = [DatasetSpec(**d) for d in (datasets or spec["datasets"])]
    return TaskConfig(name=spec["name"], datasets=datasets, train_size=train, validation_size=validation)
"""

LOAD_SPLITS = TASK_OF + """
import musketeers.splits as splits
from musketeers.data import load_split
splits.ITEMS_PER_WORKER = 25  # several workers and chunks even for a few items
out = {}
for name, args in json.loads(sys.argv[1]).items():
    task = task_of(name, *args)
    out[name] = {split: list(load_split(task, split)) for split in sys.argv[2].split(",")}
json.dump(out, sys.stdout)
"""

# the oracle: one process with hash seed 0 generating every item in order, no workers, no cache
DIRECT = TASK_OF + """
from musketeers.splits import VALIDATION_SEED_OFFSET, _composite, _datasets, generate_item, question_key
out = {}
for name, (train, validation) in json.loads(sys.argv[1]).items():
    task = task_of(name, train, validation)
    held = _composite(_datasets(task), task.data_seed + VALIDATION_SEED_OFFSET, validation)
    rows = {"validation": [generate_item(held, k, validation, set())[0] for k in range(validation)]}
    excluded = {question_key(r["question"]) for r in rows["validation"]}
    pool = _composite(_datasets(task), task.data_seed, train)
    rows["train"] = [generate_item(pool, k, train, excluded)[0] for k in range(train)]
    out[name] = rows
json.dump(out, sys.stdout)
"""


def run_python(script: str, hash_seed: str, cache: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "MUSKETEERS_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def load_in_process(hash_seed: str, cache: Path, tasks=SMALL_TASKS, splits_=("train", "validation")) -> dict:
    return run_python(LOAD_SPLITS, hash_seed, cache, json.dumps(tasks), ",".join(splits_))


def differences(a: dict, b: dict) -> dict[str, list[str]]:
    """Per task and split: the datasets whose rows differ between two runs."""
    out = {}
    for name in a:
        for split in a[name]:
            bad = sorted({x["task"] for x, y in zip(a[name][split], b[name][split], strict=True) if x != y})
            if bad:
                out[f"{name}/{split}"] = bad
    return out


def cache_files(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((cache / "data").glob("*.jsonl"))}


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict:
    return run_python(DIRECT, "0", tmp_path_factory.mktemp("unused"), json.dumps(SMALL_TASKS))


@pytest.mark.slow
def test_every_dataset_is_identical_in_processes_with_different_hash_seeds(tmp_path, oracle):
    """Two processes, PYTHONHASHSEED 1 and 2, load every task's splits through load_split, each from its own
    fresh cache (both generate). A process reading another's cache: the disjointness test below."""
    first = load_in_process("1", tmp_path / "a")
    written = cache_files(tmp_path / "a")
    second = load_in_process("2", tmp_path / "b")
    assert differences(first, second) == {}
    assert differences(first, oracle) == {}  # and as one in-order generation with hash seed 0 gives them
    assert cache_files(tmp_path / "b") == written  # byte for byte
    for name, (train, validation) in SMALL_TASKS.items():
        task = load_run_config(name).task
        seen = {row["task"] for split in ("train", "validation") for row in first[name][split]}
        assert seen == {d.name for d in task.datasets}, name  # every dataset of the task was compared
        assert (len(first[name]["train"]), len(first[name]["validation"])) == (train, validation)


def test_splits_stay_disjoint_when_another_process_wrote_the_validation_file(tmp_path, monkeypatch):
    """The validation file comes from a process with PYTHONHASHSEED=1; this process (another hash seed)
    generates training from it: isomorphic_strings questions are hash-sensitive, one-digit sums repeat."""
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path))
    written = load_in_process("1", tmp_path, {"demo": (150, 40, HASH_SENSITIVE)}, ["validation"])
    task = load_run_config("demo", ["task.train_size=150", "task.validation_size=40", "training.eval_every=0",
                                    f"task.datasets={json.dumps(HASH_SENSITIVE)}"]).task
    assert list(load_split(task, "validation")) == written["demo"]["validation"]
    report = disjointness_report(task)
    assert report["shared_questions"] == 0 and report["disjoint"] and report["train"] == 150
    train = load_split(task, "train")
    assert train.relocated > 0  # the one-digit sums of validation were probed past
    assert {row["task"] for row in train} == {"isomorphic_strings", "chain_sum"}


def small_demo(monkeypatch, tmp_path):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path))
    return load_run_config("demo", ["task.train_size=30", "task.validation_size=12", "training.eval_every=0"]).task


def test_a_damaged_cache_file_is_reported_once_and_generated_again(tmp_path, monkeypatch, caplog):
    task = small_demo(monkeypatch, tmp_path)
    train, validation = load_split(task, "train"), load_split(task, "validation")
    files = cache_files(tmp_path)
    assert sorted(name.split("-")[0] for name in files) == ["train", "validation"]
    train_file, validation_file = train.path, validation.path

    data = bytearray(train_file.read_bytes())
    data[-40] ^= 1  # one flipped bit in a row
    train_file.write_bytes(bytes(data))
    validation_file.write_bytes(validation_file.read_bytes()[:500])  # torn: a writer died half way
    with caplog.at_level(logging.WARNING, logger="musketeers.splits"):
        assert list(load_split(task, "train")) == list(train)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(len(w.splitlines()) == 1 for w in warnings)
    assert f"data cache file {validation_file} is damaged" in warnings[0] and "generating it again" in warnings[0]
    assert f"data cache file {train_file} is damaged (checksum mismatch)" in warnings[1]
    assert cache_files(tmp_path) == files  # both rewritten, byte for byte as before

    caplog.clear()
    train_file.write_text("not json\n")
    with caplog.at_level(logging.WARNING, logger="musketeers.splits"):
        assert list(load_split(task, "train")) == list(train)
    assert len(caplog.records) == 1 and "unreadable" in caplog.records[0].getMessage()
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_cache_key_holds_the_format_version_and_reasoning_gym_version(tmp_path, monkeypatch):
    task = small_demo(monkeypatch, tmp_path)
    identity = splits._identity(task, "validation", None)
    assert identity["format"] == splits.SPLIT_FORMAT and identity["reasoning_gym"] == "0.1.25"
    monkeypatch.setattr(splits, "SPLIT_FORMAT", splits.SPLIT_FORMAT + 1)
    assert splits._path(splits._identity(task, "validation", None)) != splits._path(identity)
    train = splits._identity(task, "train", "a" * 64)
    assert train["excluded_validation_sha256"] == "a" * 64  # training is tied to one validation file's content


def test_a_worker_refuses_to_run_with_a_random_hash_seed():
    env = {**os.environ, "PYTHONHASHSEED": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "musketeers.splits"], env=env, input="", capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "must run with PYTHONHASHSEED=0" in done.stderr


def test_a_problem_space_too_small_for_validation_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path))
    task = load_run_config("demo", ["task.train_size=50", "task.validation_size=1500",
                                    "task.datasets=[{name: chain_sum, config: {min_terms: 2, max_terms: 2, min_digits: 1, "
                                    "max_digits: 1}}]"]).task
    with pytest.raises(ConfigError, match=r"^task.validation_size: training position \d+: 100 candidates all occur in "
                                          r"validation; the task's problem space is too small"):
        load_split(task, "train")
    assert [p.name.split("-")[0] for p in (tmp_path / "data").glob("*.jsonl")] == ["validation"]
    held = {question_key(r["question"]) for r in load_split(task, "validation")}
    assert len(held) < 1500  # the whole space of two one-digit sums, repeated
