"""The path from an expert state to the policy's answers, on the packaged SmolLM2-135M-Instruct
(docs/signal.md, "The oracle alone on count_bits"). An oracle expert serves the gold answer of
configs/tasks/demo_bits.yaml's held-out items, numbers the policy never trains on; under the
supervised probe (launch/path_probe.py, g_phi and LoRA at the run's optimizer) the policy's greedy
answers to those items become right only if what the oracle serves crosses g_phi and C. Measured
(seed 0, one thread, 48 items): 0.000 at step 0, 0.229 at step 10, 0.792 at step 20 in 140 s; with C
detached from g_phi (g_phi never learns), 0.167 at step 20: the policy alone learns only the answers'
distribution, whose mode is 25% of the items."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORACLE_ALONE = ["team=oracle_alone", "team.backend=local", "adapter.state_norm=layernorm",
                "adapter.init_scale=unit", "training.router_lr=3e-4"]  # docs/signal.md: the settings measured


@pytest.mark.slow
def test_an_oracle_alone_teaches_held_out_answers_through_c(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "probe.json"
    probe.main(["--lora", "--steps", "20", "--every", "20", "--batch", "16", "--eval-items", "48", "--threads", "1",
                "--out", str(out), str(ROOT / "configs/tasks/demo_bits.yaml"), *ORACLE_ALONE])
    first, last = json.loads(out.read_text())
    assert first["number"] == 0.0  # the untrained policy writes "The answer is " and no number
    # 0.792 measured; with C detached from g_phi 0.167, with no C at all 0.281 after 60 steps
    assert last["number"] >= 0.5, f"held-out answers right after 20 steps: {last['number']:.3f}"
