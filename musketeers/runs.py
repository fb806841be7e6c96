"""Runs read back for reports and curves: a run directory becomes a `Run` (its config, metrics.jsonl rows
and eval JSONs), runs of one setting on one task become a `Group` (its runs are the seeds), and the
per-run numbers the report tables and plots share (final reward, score series, routing keys, change
from the start). What the numbers mean: musketeers/report.py.

It reads run directories through rundir and run_store and may import config, data, metrics and
method_traits; it draws and writes nothing (plots.py, curves.py and report.py do).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experts.config import POOLINGS
from experts.oracle import ORACLE_SCHEME
from musketeers.config import RunConfig, flat_keys
from musketeers.data import default_split
from musketeers.errors import MusketeersError
from musketeers.method_traits import METHOD_TRAITS
from musketeers.rundir import CONFIG_FILE, is_run_dir, read_config, read_eval, read_eval_result, read_metrics, team_name
from musketeers.run_store import identity_fields, is_record, recorded_run_dirs

LAST_FRACTION = 0.1
SCORE_KEYS = ("rewards/score/mean", "rewards/accuracy/mean")  # the score function's mean; the second: its old name
TASK_ORDER = ("algorithmic", "arithmetic", "logic", "gsm8k")


class ReportError(MusketeersError, ValueError):
    """Nothing to report: a path without runs."""



# ----------------------------------------------------------------------------- runs


@dataclass
class Run:
    path: Path
    cfg: RunConfig
    rows: list[dict[str, Any]]
    eval: dict | None = None
    baseline: dict | None = None
    settings: dict[str, str] = field(default_factory=dict)  # the flattened config that defines its group

    @property
    def task(self) -> str:
        return self.cfg.task.name

    @property
    def team(self) -> str:
        return team_name(self.cfg)

    def series(self, key: str) -> dict[int, float]:
        """step -> value for the rows that logged `key`."""
        return {r["step"]: float(r[key]) for r in self.rows if r.get(key) is not None}

    def final_reward(self) -> float:
        """Mean reward over the last 10% of logged steps (at least one)."""
        rewards = [float(r["reward"]) for r in self.rows if r.get("reward") is not None]
        if not rewards:
            return math.nan
        k = max(1, math.ceil(LAST_FRACTION * len(rewards)))
        return float(np.mean(rewards[-k:]))

    def score_series(self) -> dict[int, float]:
        """step -> mean score of the step's completions (the score reward function's mean)."""
        return next((found for key in SCORE_KEYS if (found := self.series(key))), {})

    def held_out_accuracy(self) -> dict[int, float]:
        """step -> eval/accuracy logged during training; {} for a run that logged it as the mean score
        (before eval/score existed)."""
        return self.series("eval/accuracy") if self.series("eval/score") else {}

    def rho(self) -> float:
        """Spearman rho between reward and routing entropy over the steps that logged both."""
        from musketeers.metrics import spearman_rho  # torch and scipy: imported when needed

        entropy, reward = self.series("routing/entropy"), self.series("reward")
        steps = sorted(set(entropy) & set(reward))
        return spearman_rho([reward[s] for s in steps], [entropy[s] for s in steps]) if steps else math.nan


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories given directly, as children of the given folders, or as a sweep's record names them."""
    found: list[Path] = []
    for p in map(Path, paths):
        if is_run_dir(p):
            found.append(p)
        elif is_record(p):
            found += recorded_run_dirs(p)
        elif p.is_dir():
            found += sorted(c for c in p.iterdir() if is_run_dir(c))
        else:
            raise ReportError(f"{str(p)!r} does not exist")
    if not found:
        raise ReportError(f"no run directories (folders with {CONFIG_FILE}) in {', '.join(map(str, paths))}")
    return list(dict.fromkeys(found))


def load_run(run_dir: Path) -> Run:
    cfg = read_config(run_dir)
    split = default_split(cfg)
    settings = {k: json.dumps(v, sort_keys=True)  # the group's key: every setting but the seed, as text
                for k, v in flat_keys(identity_fields(cfg.to_dict())).items() if k != "seed"}
    return Run(run_dir, cfg, read_metrics(run_dir), read_eval_result(read_eval(run_dir, split)),
               read_eval_result(read_eval(run_dir, split, baseline=True)), settings)


# ----------------------------------------------------------------------------- groups


@dataclass
class Group:
    task: str
    label: str  # the table row
    method: str
    runs: list[Run]
    order: tuple = ()  # where its row goes among the groups of its method and team (setting_rank)

    def values(self, which: str) -> list[float]:
        """Per seed: accuracy ("eval", "baseline") or the final training reward ("reward"), in %."""
        if which == "reward":
            return [100 * r.final_reward() for r in self.runs]
        evals = [getattr(r, which) for r in self.runs]
        return [100 * e["accuracy"] for e in evals if e is not None]


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs with equal settings form a group; labels name the settings that tell groups apart."""
    by_settings: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_settings[json.dumps(run.settings, sort_keys=True)].append(run)
    families: dict[tuple, list[list[Run]]] = defaultdict(list)  # same task, method and team
    for members in by_settings.values():
        families[(members[0].task, members[0].cfg.method, members[0].team)].append(members)
    groups = []
    for (task, method, team), members in families.items():
        keys = sorted({k for m in members for k in m[0].settings}) if len(members) > 1 else []
        differing = [k for k in keys if len({m[0].settings.get(k) for m in members}) > 1]
        label = METHOD_TRAITS[method].label + (f" ({team}{oracle_note(members[0][0])})" if METHOD_TRAITS[method].experts else "")
        for m in members:
            values = {k: json.loads(m[0].settings.get(k, "null")) for k in differing}
            extra = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items())
            groups.append(Group(task, f"{label}, {extra}" if extra else label, method, sorted(m, key=lambda r: r.cfg.seed),
                                (label, *(setting_rank(k, v) for k, v in values.items()))))
    return sorted(groups, key=lambda g: (method_rank(g.method), g.order, task_rank(g.task)))


def oracle_note(run: Run) -> str:
    """", diagnostic: oracle:answer" when the run's team has an oracle expert (experts/oracle.py): its
    numbers measure the path from expert states to reward, not a team of models."""
    oracles = [e.model for e in run.cfg.team.experts if e.model.startswith(ORACLE_SCHEME)]
    return f", diagnostic: {', '.join(oracles)}" if oracles else ""


def setting_rank(key: str, value: Any) -> tuple:
    """Rows of one method and team in a reader's order: numbers by value (m = 2, 4, ..., 128), poolings
    as experts.config.POOLINGS lists them (the default, last_token, first), anything else by its text."""
    if key == "team.pooling" and value in POOLINGS:
        return (0, POOLINGS.index(value), "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, json.dumps(value, sort_keys=True))


def method_rank(method: str) -> int:
    return METHOD_TRAITS[method].table_row


def task_rank(task: str) -> tuple[int, str]:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; NaN for one value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


# ----------------------------------------------------------------------------- routing


def routing_keys(group: Group) -> tuple[str, list[str]] | None:
    """("routing/utilisation/" or "routing/frequency/", expert names) when the group logged routing."""
    names = [e.name for e in group.runs[0].cfg.team.experts]
    for prefix in ("routing/utilisation/", "routing/frequency/"):
        if names and any(r.series(prefix + names[0]) for r in group.runs):
            return prefix, names
    return None


def first_and_end(run: Run, key: str) -> tuple[float, float]:
    """The first logged value (the initial adapter) and the mean over the last 10% of logged steps."""
    values = [v for _, v in sorted(run.series(key).items())]
    if not values:
        return math.nan, math.nan
    return values[0], float(np.mean(values[-max(1, math.ceil(LAST_FRACTION * len(values))):]))


def change_from_start(run: Run, key: str) -> float:
    """Mean over the last 10% of logged steps minus the first logged value."""
    first, end = first_and_end(run, key)
    return end - first
