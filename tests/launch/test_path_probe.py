"""launch/path_probe.py on tiny models: it trains g_phi alone (the policy stays as it was), logs what
the README's probe table reads, and refuses a method without g_phi."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASK, TEAM = ROOT / "tests/fixtures/task_tiny.yaml", ROOT / "tests/fixtures/team_oracle_tiny.yaml"


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


def run_probe(probe, tmp_path, *args) -> list[dict]:
    """The probe's JSON log for `args`, on the tiny task and oracle team, one thread."""
    out = tmp_path / "probe.json"
    probe.main([*args, "--threads", "1", "--out", str(out), str(TASK), f"team={TEAM}"])
    return json.loads(out.read_text())


def test_with_lora_the_policy_learns_beside_g_phi(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "cache"))
    log = run_probe(probe, tmp_path, "--lora", "--steps", "1", "--batch", "4", "--eval-items", "4")
    assert log[0]["trained/lora"] > 0 and log[0]["trained/g_phi"] > 0
    assert 0.0 <= log[-1]["number"] <= 1.0 and log[-1]["grad/out_proj"] > 0


def test_a_perfect_or_shuffled_or_no_context_evaluates_without_g_phi(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "cache"))
    for kind in ("gold", "shuffled", "none"):
        (row,) = run_probe(probe, tmp_path, "--context", kind, "--steps", "0", "--eval-items", "3")
        assert row["context"] == kind and len(row["examples"]) == 3 and 0 <= row["number"] <= 1
        assert row["trained/g_phi"] == row["trained/lora"] == 0
        assert not any(k.startswith("routing/") for k in row)  # no experts ran


def test_a_gold_context_with_lora_trains_the_policy_alone(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "cache"))
    log = run_probe(probe, tmp_path, "--context", "gold", "--lora", "--steps", "1", "--batch", "2", "--eval-items", "2")
    assert log[0]["trained/lora"] > 0 and log[0]["trained/g_phi"] == 0
    assert log[-1]["context_norm"] > 0 and all(log[-1][f"grad/{part}"] == 0 for part in probe.PARTS)


@pytest.mark.parametrize("args", [["--context", "none", "--steps", "1"],  # trains nothing
                                  ["--context", "shuffled", "--lora", "--batch", "1"]])  # a row would get its own answer
def test_a_probe_that_cannot_measure_is_refused(probe, tmp_path, monkeypatch, args):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit):
        probe.main([*args, str(TASK), f"team={TEAM}"])


@pytest.mark.parametrize("completion,answer,right", [(" = 15", "15", True), ("15</answer>", "15", True),
                                                      ("7 + 8 = 15", "15", False), ("-1", "-1", True), ("", "3", False)])
def test_first_number_right(probe, completion, answer, right):
    assert probe.first_number_right(completion, answer) is right
