"""The reward recipe as a run trains on it: each term logged under its own name, the reward their weighted sum."""
from pathlib import Path

import pytest

from musketeers.config import load_run_config
from musketeers.rundir import read_metrics
from musketeers.train import train

TASK = str(Path(__file__).parents[1] / "fixtures" / "task_tiny.yaml")
RECIPE = "reward.secondary=[{name: cosine, scaling: 0.3}, {name: format, scaling: 0.2}, {name: length, scaling: 0.1}]"


def test_each_term_is_logged_and_the_reward_is_their_weighted_sum(tmp_path, capsys):
    run_dir = train(load_run_config(TASK, [f"output_dir={tmp_path}", "method=single", "training.max_steps=1",
                                           "training.gradient_accumulation_steps=1", RECIPE]))
    (row,) = read_metrics(run_dir)
    means = {name: row[f"rewards/{name}/mean"] for name in ("score", "cosine", "format", "length")}
    assert {f"rewards/{name}/std" for name in means} <= set(row) and "rewards/accuracy/mean" not in row
    assert row["reward"] == pytest.approx(means["score"] + 0.3 * means["cosine"] + 0.2 * means["format"] + 0.1 * means["length"])
    assert 0.0 <= row["accuracy"] <= means["score"] <= 1.0 and 0.0 < means["cosine"] < 1.0  # a random model: wrong, short replies
    assert f"accuracy {row['accuracy']:.3f}  score {means['score']:.3f}" in capsys.readouterr().out
