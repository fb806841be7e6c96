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

This module owns the tables, report.md, summary.json and the command; reading and grouping runs is
musketeers/runs.py's. It may import runs, plots and what they import; only the CLI imports it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from musketeers.plots import make_plots
from musketeers.runs import (LAST_FRACTION, Group, Run, find_run_dirs, first_and_end, group_runs, load_run, mean_std,
                             method_rank, routing_keys, task_rank)


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
    for r in sorted(runs, key=lambda r: (task_rank(r.task), method_rank(r.cfg.method), r.path.name)):
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
