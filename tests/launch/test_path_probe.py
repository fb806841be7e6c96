"""launch/path_probe.py on tiny models: it trains g_phi alone (the policy stays as it was), logs what
the README's probe table reads, and refuses a method without g_phi."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASK, TEAM = ROOT / "tests/fixtures/task_tiny.yaml", ROOT / "tests/fixtures/team_oracle_tiny.yaml"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("path_probe", ROOT / "launch" / "path_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_probe_trains_g_phi_and_reports_the_path(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "probe.json"
    probe.main(["--steps", "2", "--every", "1", "--batch", "4", "--eval-items", "4", "--threads", "1", "--out", str(out),
                str(TASK), f"team={TEAM}", "training.router_lr=1e-2"])
    log = json.loads(out.read_text())
    assert [row["step"] for row in log] == [0, 1, 2]
    last = log[-1]
    assert {"loss", "adapter/saturation", "context_norm", "routing/utilisation/oracle", "accuracy"} <= set(last)
    assert all(last[f"grad/{part}"] > 0 for part in probe.PARTS)  # every part of g_phi got a gradient
    assert last["context_norm"] > log[1]["context_norm"] > 0


def test_the_probe_needs_an_adapter(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit):
        probe.main(["--steps", "1", str(TASK), "method=text_hints", f"team={TEAM}"])
