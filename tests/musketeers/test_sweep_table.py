"""musketeers.sweep_table: the live table of a sweep, line by line."""
from pathlib import Path

from musketeers.sweep import Job
from musketeers.sweep_table import RunStatus, render_table

TASK = "tiny.yaml"


def test_the_table_shows_state_node_step_reward_and_accuracy():
    jobs = [Job(n, Path(n), TASK, [], {"training": {"max_steps": 500}}) for n in ("a-run", "b")]
    rows = [RunStatus(jobs[0], "running", "gpu-node-3 0123abcd", attempts=2, step=120, reward=0.4125, accuracy=0.375, seconds=90.0),
            RunStatus(jobs[1], "finished", "gpu-node-1 89abcdef", step=500, reward=0.5, seconds=7300.0),
            RunStatus(jobs[1], "running", "gpu-node-1 89abcdef", step=None, reward=None, seconds=12.0),
            RunStatus(jobs[1])]
    assert render_table(rows).splitlines() == [
        "run    state        node                          step  reward    acc    time",
        "a-run  running #2   gpu-node-3 0123abcd        120/500   0.412  0.375    1.5m",
        "b      finished     gpu-node-1 89abcdef        500/500   0.500      -    2.0h",
        "b      running      gpu-node-1 89abcdef          -/500       -      -     12s",
        "b      queued       -                            -/500       -      -       -",
        "1 queued, 2 running, 1 finished"]


def test_step_reward_and_accuracy_come_from_the_last_training_row_not_an_eval_row(tmp_path):
    import json

    def status_of(rows):
        run_dir = tmp_path / str(len(list(tmp_path.iterdir())))
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text("{}")
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        status = RunStatus(Job("r", run_dir, TASK, [], {"training": {"max_steps": 2}}))
        status.refresh_metrics()
        return status.step, status.reward, status.accuracy

    rows = [{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.3, "accuracy": 0.25, "rewards/score/mean": 0.28},
            {"step": 2, "eval/accuracy": 0.5}]
    assert status_of(rows) == (2, 0.3, 0.25)
    # a row written when `accuracy` was the mean score (rewards/accuracy/mean): no accuracy shown
    assert status_of([{"step": 1, "reward": 0.3, "accuracy": 0.3, "rewards/accuracy/mean": 0.3}]) == (1, 0.3, None)
