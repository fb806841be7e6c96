"""The live table of a `musketeers sweep`: each run's state (queued / running on which node, attempt /
finished / failed / skipped), step, last reward and accuracy and time, read from the run's own files (its attempt
record, logs/<run>.attempts.jsonl, and its metrics.jsonl), so it shows what the runs did wherever Ray
placed them.

It may import rundir and sweep_plan; sweep.py imports it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from musketeers.rundir import attempts_path, is_run_dir, read_jsonl, read_metrics

if TYPE_CHECKING:
    from musketeers.sweep_plan import Job

TABLE_EVERY_S = 60.0  # without a terminal, the table is printed when a run changes state, else this often


@dataclass
class RunStatus:
    job: Job
    state: str = "queued"  # queued | running | finished | failed | skipped | conflict
    node: str = ""
    attempts: int = 0
    step: int | None = None
    reward: float | None = None
    accuracy: float | None = None  # the step's share of completions with the full score
    started: float | None = None
    seconds: float | None = None
    error: str = ""

    def refresh(self, sweep_id: str) -> None:
        """Node and attempt from the run's own record; step and reward from its metrics."""
        if self.state not in ("queued", "running"):
            return
        path = attempts_path(self.job.run_dir)
        rows = read_jsonl(path)  # a row being appended (or cut by a kill) is left out
        mine = [r for r in rows if r.get("sweep") == sweep_id]
        if mine:
            self.state, self.attempts = "running", len(mine)
            self.node, self.started = f"{mine[-1]['hostname']} {mine[-1]['node_id'][:8]}", self.started or mine[0]["started"]
        self.refresh_metrics()

    def refresh_metrics(self) -> None:
        """The last training row's step, reward and accuracy (eval rows, training.eval_every, carry no reward).
        A row without rewards/score/mean was written when its `accuracy` was the mean score: none is shown."""
        metrics = read_metrics(self.job.run_dir) if is_run_dir(self.job.run_dir) else []
        trained = [row for row in metrics if "reward" in row]
        if trained:
            last = trained[-1]
            self.step, self.reward = last["step"], last["reward"]
            self.accuracy = last.get("accuracy") if "rewards/score/mean" in last else None


def render_table(statuses: list[RunStatus]) -> str:
    """One line per run: name, state (attempt), node, step / max steps, last reward and accuracy, wall time."""
    width = max([len(s.job.name) for s in statuses] + [3])
    lines = [f"{'run':<{width}}  {'state':<12} {'node':<24} {'step':>9}  {'reward':>6}  {'acc':>5}  {'time':>6}"]
    for s in statuses:
        label = s.state + (f" #{s.attempts}" if s.attempts > 1 else "")
        steps = f"{s.step if s.step is not None else '-'}/{s.job.config['training']['max_steps']}"
        reward = f"{s.reward:.3f}" if s.reward is not None else "-"
        accuracy = f"{s.accuracy:.3f}" if s.accuracy is not None else "-"
        seconds = s.seconds if s.seconds is not None else (time.time() - s.started if s.started else None)
        clock = "-" if seconds is None else f"{seconds:.0f}s" if seconds < 60 else (
            f"{seconds / 60:.1f}m" if seconds < 3600 else f"{seconds / 3600:.1f}h")
        lines.append(f"{s.job.name:<{width}}  {label:<12} {s.node or '-':<24} {steps:>9}  {reward:>6}  {accuracy:>5}  {clock:>6}")
    counts = {k: sum(s.state == k for s in statuses) for k in ("queued", "running", "finished", "failed", "skipped")}
    lines.append(", ".join(f"{n} {k}" for k, n in counts.items() if n))
    return "\n".join(lines)


class Display:
    """The table, redrawn in place on a terminal; elsewhere printed on a change of state, or every minute."""

    def __init__(self):
        self.tty, self.height, self.last_key, self.last_time = sys.stdout.isatty(), 0, None, 0.0

    def show(self, statuses: list[RunStatus]) -> None:
        key = [(s.state, s.node, s.attempts) for s in statuses]
        now = time.monotonic()
        if not (self.tty or key != self.last_key or now - self.last_time > TABLE_EVERY_S):
            return
        text = render_table(statuses)
        if self.tty and self.height:
            sys.stdout.write(f"\x1b[{self.height}F\x1b[J")
        print(text, flush=True)
        self.height, self.last_key, self.last_time = text.count("\n") + 1, key, now
