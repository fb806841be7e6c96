"""GRPO carries an expert's information to the reward (docs/signal.md, "GRPO on a tiny policy").

A tiny random policy learns count_bits (tests/fixtures/task_bits_tiny.yaml) beside an oracle team in
miniature: the oracle, which serves the gold answer's encoding, and two tiny random experts. A random
policy cannot count bits, so by itself it learns the answers' distribution (about 0.25 a completion);
only what crosses experts -> g_phi -> C -> policy can raise its reward further. One thread, this
machine, 300 steps, mean reward over the last 100 (measured, seeds 0 / 1 / 2):
  perceiver on the oracle team          0.585 / 0.474 / 0.614   u(oracle) at the end 0.38 / 0.50 / 0.37
  single                                0.242 / 0.254 / 0.250
  the shuffled oracle (no information)  0.263 / 0.254 / 0.251   u(oracle) 0.16 / 0.11 / 0.34
  C detached from g_phi                 0.249 / 0.239 / -
With the policy's LoRA at g_phi's rate (3e-3, not 1e-3) the policy settles on one answer by step 60,
before C is readable, and seeds 1 and 2 stay with single (0.217, 0.224): the test pins the rates too."""
from pathlib import Path

import pytest

from musketeers.adapters import PerceiverAdapter
from musketeers.config import load_run_config
from musketeers.rundir import read_metrics
from musketeers.train import train

FIXTURES = Path(__file__).parents[1] / "fixtures"
LAST = 100  # steps whose mean reward is compared


def run(tmp_path, name, method):
    cfg = load_run_config(str(FIXTURES / "task_bits_tiny.yaml"), [f"output_dir={tmp_path / name}", f"method={method}"])
    rows = read_metrics(train(cfg))
    assert len(rows) == cfg.training.max_steps
    reward = sum(r["reward"] for r in rows[-LAST:]) / LAST
    utilisation = sum(r.get("routing/utilisation/oracle", 0.0) for r in rows[-10:]) / 10
    return reward, utilisation


@pytest.mark.slow
def test_grpo_raises_the_reward_through_c_only_when_c_carries_g_phi(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "cache"))
    single, _ = run(tmp_path, "single", "single")
    oracle, utilisation = run(tmp_path, "oracle", "perceiver")
    assert 0.15 < single < 0.35, f"single learns the answers' distribution (0.242 measured), got {single:.3f}"
    assert oracle > single + 0.1, f"oracle team {oracle:.3f} vs single {single:.3f} (0.585 vs 0.242 measured)"
    assert utilisation > 1 / 3, f"the oracle's utilisation ends at {utilisation:.3f}, not above 1/n"

    # the same run with C cut off from g_phi: g_phi never learns, and the reward stays with single's
    forward = PerceiverAdapter.forward

    def detached(self, states):
        out = forward(self, states)
        out.context = out.context.detach()
        return out

    monkeypatch.setattr(PerceiverAdapter, "forward", detached)
    cut, _ = run(tmp_path, "detached", "perceiver")
    assert cut < single + 0.05, f"with C detached the reward still rose: {cut:.3f} vs single {single:.3f}"
