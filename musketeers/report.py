"""`musketeers report`: Table-1-style tables, reward-entropy correlations and plots from run directories.

    musketeers report runs/table1/*  [--out report/]     # run dirs, or folders holding run dirs
    musketeers report runs/paper/sweeps/fig4_utilisation   # the runs serving one sweep (musketeers sweep)

Runs are grouped by their identity (musketeers.run_store: the resolved config minus output_dir and
storage or placement keys) minus the seed: one group = one method, team and setting on one task,
its runs = the seeds. A row of the tables is a method (+ team, + any
setting that differs between groups of the same method and team on a task, e.g. adapter.num_queries),
a column a task. Cells are mean +- std over seeds, std with ddof=1 (the sample std).

Numbers, named for what they are:
  * held-out accuracy: `accuracy` of the eval JSON that `musketeers eval` wrote next to the run's
    final/ (or last) checkpoint, the share of items with the full score (its mean score, `score`, is
    in the runs table); a cell shows "—" when none of its runs has one, and "(k of n seeds)" when only
    some have. Eval JSONs written before accuracy meant that hold `solved` and `accuracy` (the mean
    score): they are read as accuracy and score (musketeers.rundir.read_eval_result), and the report
    says how many;
  * training reward: the mean `reward` over the last 10% of a run's logged steps (at least one step);
    always available, but it is the sampled (temperature 1) reward on training prompts, the weighted sum
    of the reward terms (reward.secondary), not accuracy;
  * held-out accuracy during training: `eval/accuracy` that a run with training.eval_every logged (greedy, on
    the first training.eval_size items of the same split); the runs table shows the last one, a plot all.
    Runs that logged it before it meant the full-score share (they logged no eval/score; theirs was the
    mean score) are left out, and the report says so;
  * rho: Spearman rank correlation between a run's reward and routing-entropy series
    (musketeers.metrics.spearman_rho; runs without routing entropy have none);
  * score with and without C (Figure 5): on the steps that logged `reward_without_context`, which is the
    mean score of completions sampled without C (the trainer's first reward function), beside the mean
    score with C (rewards/score/mean; rewards/accuracy/mean in runs from before it was renamed);
  * expert utilisation u_i (Figure 4): at the first logged step, at the end (last 10%) and the change.

Rows of one method and team come in a reader's order: numbers by value (Figure 6's m), poolings as
experts.config.POOLINGS lists them (Table 2). The plots are drawn by musketeers/plots.py.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experts.config import POOLINGS
from musketeers.config import RunConfig
from musketeers.errors import MusketeersError
from musketeers.method_traits import METHOD_TRAITS
from musketeers.data import default_split
from musketeers.rundir import CONFIG_FILE, is_run_dir, read_config, read_eval, read_eval_result, read_metrics, team_name
from musketeers.run_store import identity_fields, is_record, recorded_run_dirs

LAST_FRACTION = 0.1
SCORE_KEYS = ("rewards/score/mean", "rewards/accuracy/mean")  # the score function's mean; the second: its old name
TASK_ORDER = ("algorithmic", "arithmetic", "logic", "gsm8k")


class ReportError(MusketeersError, ValueError):
    """Nothing to report: a path without runs."""


# ----------------------------------------------------------------------------- runs


def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: json.dumps(data, sort_keys=True)}


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
    settings = {k: v for k, v in _flatten(identity_fields(cfg.to_dict())).items() if k != "seed"}
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
        label = METHOD_TRAITS[method].label + (f" ({team})" if METHOD_TRAITS[method].experts else "")
        for m in members:
            values = {k: json.loads(m[0].settings.get(k, "null")) for k in differing}
            extra = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items())
            groups.append(Group(task, f"{label}, {extra}" if extra else label, method, sorted(m, key=lambda r: r.cfg.seed),
                                (label, *(setting_rank(k, v) for k, v in values.items()))))
    return sorted(groups, key=lambda g: (_method_rank(g.method), g.order, task_rank(g.task)))


def setting_rank(key: str, value: Any) -> tuple:
    """Rows of one method and team in a reader's order: numbers by value (m = 2, 4, ..., 128), poolings
    as experts.config.POOLINGS lists them (the default, last_token, first), anything else by its text."""
    if key == "team.pooling" and value in POOLINGS:
        return (0, POOLINGS.index(value), "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, json.dumps(value, sort_keys=True))


def _method_rank(method: str) -> int:
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


# ----------------------------------------------------------------------------- tables


def _cell(values: list[float], total: int) -> str:
    if not values:
        return "—"
    mean, std = mean_std(values)
    text = f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"
    if len(values) < total:
        return f"{text} ({len(values)} of {total} seeds)"
    return text if len(values) > 1 else f"{text} (1 seed)"


def results_table(groups: list[Group], which: str) -> str:
    """Markdown: rows = method labels, columns = tasks, cells = mean ± std over seeds."""
    tasks = sorted({g.task for g in groups}, key=task_rank)
    labels = list(dict.fromkeys(g.label for g in groups))
    cells = {(g.label, g.task): _cell(g.values(which), len(g.runs)) for g in groups}
    lines = ["| method | " + " | ".join(tasks) + " |", "| --- |" + " --- |" * len(tasks)]
    lines += [f"| {label} | " + " | ".join(cells.get((label, t), "") for t in tasks) + " |" for label in labels]
    return "\n".join(lines)


def _fmt(x: float, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def runs_table(runs: list[Run]) -> str:
    """One line per run: steps, final training reward, held-out accuracy and score (from `musketeers eval`),
    the last accuracy logged during training (training.eval_every) and rho."""
    lines = ["| run | task | method | team | seed | steps | training reward (%, last 10%) | held-out accuracy (%) | "
             "held-out score (%) | eval/accuracy during training (%) | rho(reward, entropy) |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(runs, key=lambda r: (task_rank(r.task), _method_rank(r.cfg.method), r.path.name)):
        acc = f"{100 * r.eval['accuracy']:.2f} (n={r.eval['n']})" if r.eval else "—"
        score = _fmt(100 * r.eval["score"], 2) if r.eval and r.eval.get("score") is not None else "—"
        during = sorted(r.held_out_accuracy().items())
        last = f"{100 * during[-1][1]:.2f} (step {during[-1][0]})" if during else "—"
        steps = r.rows[-1]["step"] if r.rows else 0
        lines.append(f"| {r.path.name} | {r.task} | {r.cfg.method} | {r.team} | {r.cfg.seed} | {steps} | "
                     f"{_fmt(100 * r.final_reward(), 2)} | {acc} | {score} | {last} | {_fmt(r.rho())} |")
    return "\n".join(lines)


def rho_summary(runs: list[Run]) -> str:
    rhos = [r.rho() for r in runs]
    finite = [x for x in rhos if not math.isnan(x)]
    if not finite:
        return ("Spearman rho(reward, routing entropy): no run has one (it needs 3+ steps with routing entropy, "
                "which perceiver runs log, and a reward and an entropy that are not constant).")
    return (f"Mean Spearman rho(reward, routing entropy) over {len(finite)} run(s): {np.mean(finite):.3f} (paper: -0.48); "
            f"{len(rhos) - len(finite)} run(s) have none (no routing entropy, fewer than 3 steps, or a constant series).")


def _pm(values: list[float], digits: int) -> str:
    mean, std = mean_std(values)
    mean = round(mean, digits) + 0.0  # no "-0.000"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def routing_table(groups: list[Group]) -> str | None:
    """Figure 4 as numbers: per group and expert, u_i (or the hard router's selection frequency) at the
    first logged step, at the end (mean of the last 10% of steps) and the change; mean ± std over seeds."""
    lines = ["| method | task | expert | routing share | at step 1 | at the end (last 10%) | change |",
             "| --- | --- | --- | --- | ---: | ---: | ---: |"]
    for g in groups:
        if not (keys := routing_keys(g)):
            continue
        prefix, names = keys
        for name in names:
            ends = [first_and_end(r, prefix + name) for r in g.runs if r.series(prefix + name)]
            lines.append(f"| {g.label} | {g.task} | {name} | {prefix.split('/')[1]} | {_pm([a for a, _ in ends], 3)} | "
                         f"{_pm([b for _, b in ends], 3)} | {_pm([b - a for a, b in ends], 3)} |")
    return "\n".join(lines) if len(lines) > 2 else None


def without_context_table(groups: list[Group]) -> str | None:
    """Figure 5 as numbers: training score with C and without C (the prompt alone) on the steps that
    logged both, mean of the last 10% of those steps per run, then mean ± std over seeds, in %."""
    lines = ["| method | task | steps logged without C | score with C | score without C | difference |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for g in groups:
        pairs = []  # per run: (with C, without C) over the same steps
        for r in g.runs:
            without, with_c = r.series("reward_without_context"), r.score_series()
            steps = sorted(set(without) & set(with_c))
            steps = steps[-max(1, math.ceil(LAST_FRACTION * len(steps))):] if steps else []
            if steps:
                pairs.append((100 * np.mean([with_c[k] for k in steps]), 100 * np.mean([without[k] for k in steps])))
        if pairs:
            logged = max(len(r.series("reward_without_context")) for r in g.runs)
            lines.append(f"| {g.label} | {g.task} | {logged} | {_pm([a for a, _ in pairs], 2)} | {_pm([b for _, b in pairs], 2)} | "
                         f"{_pm([a - b for a, b in pairs], 2)} |")
    return "\n".join(lines) if len(lines) > 2 else None


def _eval_notes(runs: list[Run]) -> list[str]:
    sizes = sorted({(r.task, r.eval["split"], r.eval["n"], r.eval["split_size"]) for r in runs if r.eval})
    notes = [f"- {task}: {split} split, {n} of {size} items" + (" (--limit)" if n < size else "") for task, split, n, size in sizes]
    if old := sum(bool(e and e.get("old_fields")) for r in runs for e in (r.eval, r.baseline)):
        notes.append(f"- {old} eval JSON(s) predate the accuracy/score names: their `solved` is read as accuracy, "
                     "their `accuracy` (the mean score) as score")
    return notes


def _old_held_out_note(runs: list[Run]) -> list[str]:
    old = [r.path.name for r in runs if r.series("eval/accuracy") and not r.held_out_accuracy()]
    return [f"Left out of eval/accuracy during training: {', '.join(old)}, which logged it as the mean score "
            "(before eval/score existed), not the full-score share."] if old else []


def build_markdown(runs: list[Run], groups: list[Group], plots: list[str], skipped: list[str]) -> str:
    parts = [f"# musketeers report ({len(runs)} runs)", "",
             "Cells: mean ± std over seeds (sample std, ddof=1), in %."]
    if any(r.eval for r in runs):
        parts += ["", "## Held-out accuracy (%): share of items with the full score, greedy decoding, from `musketeers eval`", "",
                  results_table(groups, "eval"),
                  "", "Evaluated items:", *_eval_notes(runs)]
        if not all(r.eval for r in runs):
            parts += ["", f"{sum(not r.eval for r in runs)} run(s) have no eval JSON (cells say how many seeds count)."]
    else:
        parts += ["", "No run has an eval JSON (run `musketeers eval <run>`): there is no held-out accuracy table; "
                  "the table below is the training reward, not accuracy."]
    if any(r.baseline for r in runs):
        parts += ["", "## Untrained baseline accuracy (%), `musketeers eval --baseline`", "", results_table(groups, "baseline")]
    parts += ["", f"## Training reward (%), mean over the last {LAST_FRACTION:.0%} of logged steps (sampled, training prompts)",
              "", results_table(groups, "reward")]
    if table := without_context_table(groups):
        parts += ["", f"## Training score with and without C (%), last {LAST_FRACTION:.0%} of the steps that logged both", "",
                  "Score: the verifier's mean score, without the secondary reward terms. "
                  "Without C: completions the trained policy samples from the same prompts alone (no context tokens), "
                  "every `training.no_context_reward_every` steps; logged, not trained on.", "", table]
    if table := routing_table(groups):
        parts += ["", "## Expert utilisation u_i (fraction of the adapter's attention; hard routing: selection frequency)",
                  "", table]
    parts += ["", "## Runs", "", runs_table(runs), *[line for note in _old_held_out_note(runs) for line in ("", note)],
              "", rho_summary(runs), "", "## Plots", ""]
    parts += [f"- ![{p}]({p})" for p in plots] or ["- none"]
    parts += [f"- skipped: {s}" for s in skipped]
    return "\n".join(parts) + "\n"


def summary_json(runs: list[Run]) -> list[dict[str, Any]]:
    return [{"run": str(r.path), "task": r.task, "method": r.cfg.method, "team": r.team, "seed": r.cfg.seed,
             "steps": r.rows[-1]["step"] if r.rows else 0, "final_reward": r.final_reward(),
             "accuracy": r.eval["accuracy"] if r.eval else None, "score": r.eval.get("score") if r.eval else None,
             "rho": r.rho()} for r in runs]


def report(paths: list[str | Path], out: str | Path) -> str:
    """Write report.md, summary.json and the plots to `out`; returns the markdown."""
    runs = [load_run(p) for p in find_run_dirs(paths)]
    groups = group_runs(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from musketeers.plots import make_plots  # here: plots.py imports this module

    plots, skipped = make_plots(groups, out)
    text = build_markdown(runs, groups, plots, skipped)
    (out / "report.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary_json(runs), indent=1))
    return text


# ----------------------------------------------------------------------------- CLI


def cmd_report(args: argparse.Namespace) -> None:
    print(report(args.runs, args.out), end="")
    print(f"wrote {Path(args.out) / 'report.md'}")


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Register `musketeers report`."""
    p = subparsers.add_parser("report", help="tables (mean ± std over seeds), reward-entropy rho and plots of runs")
    p.add_argument("runs", nargs="+", help="run directories, or folders holding run directories (e.g. a sweep's output)")
    p.add_argument("--out", default="report", help="output folder for report.md, summary.json and the PNGs (default ./report)")
    p.set_defaults(func=cmd_report)
    return p
