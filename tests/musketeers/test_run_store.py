"""musketeers.run_store: a run's identity (what makes two configs one run), and the lock that keeps two
sweeps from training one run at once."""
import json
import os
import time
from pathlib import Path

import pytest

from musketeers import run_store
from musketeers.config import load_run_config
from musketeers.run_store import run_identity

REPO = Path(__file__).resolve().parents[2]
TASK = str(REPO / "tests" / "fixtures" / "task_tiny.yaml")


def config(*overrides: str, method: str = "perceiver") -> dict:
    return load_run_config(TASK, [f"method={method}", *overrides]).to_dict()


def test_a_runs_identity_is_its_config_minus_where_it_is_stored_and_placed():
    base = run_identity(config())
    assert run_identity(config()) == base and len(base) == 16
    assert run_identity(config("seed=1")) != base
    for changed in ("training.learning_rate=0.001", "adapter.num_queries=2", "team.pooling=first_token",
                    "training.logging_steps=2", "training.no_context_reward_every=1", "training.eval_every=1 training.eval_size=4",
                    "team.backend=ray", "method=ffn"):
        assert run_identity(config(*changed.split())) != base, changed
    moved = config("output_dir=elsewhere", "training.report_to=none", "training.save_steps=7",
                   "team.cache_dir=/tmp/states", "team.placement=apart")
    for expert in moved["team"]["experts"]:
        expert.update(num_cpus=2.0, num_gpus=0.5, resources={"a100": 1.0})
    assert run_identity(moved) == base
    single = run_identity(config(method="single"))  # no experts: the team and adapter are not read
    assert single != base and run_identity(config("adapter.num_queries=2", "team.pooling=first_token", method="single")) == single
    assert run_identity(config("seed=1", method="single")) != single


def test_a_run_lock_keeps_another_sweep_out_until_released_or_stale(tmp_path):
    path = run_store.lock_path(tmp_path, "abc")
    with run_store.hold(tmp_path, "abc", "one"):
        assert run_store.lock_holder(tmp_path, "abc")["sweep"] == "one"
        with pytest.raises(run_store.RunBusy, match=r"sweep one holds it \(host .*, pid .*\)"):
            with run_store.hold(tmp_path, "abc", "two"):
                pass
        assert run_store.lock_holder(tmp_path, "abc", sweep_id="one") is None  # one's own lock: a dead attempt's
        with run_store.hold(tmp_path, "abc", "one"):  # Ray's retry of one's task takes it over
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists() and run_store.lock_holder(tmp_path, "abc") is None

    path.write_text(json.dumps({"sweep": "dead", "token": "t"}))
    os.utime(path, (time.time() - run_store.STALE_S - 1,) * 2)  # its heartbeat stopped
    assert run_store.lock_holder(tmp_path, "abc") is None
    with run_store.hold(tmp_path, "abc", "two"):
        assert json.loads(path.read_text())["sweep"] == "two"
    path.write_text(json.dumps({"sweep": "cancelled", "token": "u"}))
    run_store.release_all(tmp_path, "cancelled")  # what a sweep does when Ctrl-C cancels its runs
    assert not path.exists()


def test_a_held_lock_is_renewed_by_its_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(run_store, "HEARTBEAT_S", 0.02)
    path = run_store.lock_path(tmp_path, "abc")
    with run_store.hold(tmp_path, "abc", "one"):
        os.utime(path, (0, 0))
        deadline = time.monotonic() + 30
        while path.stat().st_mtime == 0:
            assert time.monotonic() < deadline, "the heartbeat never renewed the lock"
            time.sleep(0.01)
    assert not path.exists()
