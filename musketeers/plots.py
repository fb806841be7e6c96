"""The plots of `musketeers report` (musketeers/runs.py reads the runs and groups them; this draws them).

One PNG per kind and task (`PLOTS`), from the groups of runs on that task; each plot returns None when
written, or why it was skipped (no run logged what it shows). Bands are mean ± std over seeds (ddof=1).
It may import runs and the plotting primitives (musketeers/plotting.py); report.py imports it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from musketeers.plotting import mean_band, new_figure, save_figure, series_matrix
from musketeers.runs import Group, Run, change_from_start, mean_std, routing_keys, task_rank


def _window(groups: list[Group]) -> int:
    longest = max(len(r.rows) for g in groups for r in g.runs)
    return max(1, longest // 25)


def plot_reward_entropy(task: str, groups: list[Group], path: Path) -> str | None:
    routed = [g for g in groups if any(r.series("routing/entropy") for r in g.runs)]
    w = _window(groups)
    fig, (top, bottom) = new_figure(f"Reward and routing entropy over training, task {task}"
                                 + (f" (rolling mean over {w} steps)" if w > 1 else ""), panels=2)
    for i, g in enumerate(groups):  # one colour per group in both panels
        mean_band(top, *series_matrix(g.runs, "reward"), g.label, w, color=f"C{i}")
        if any(g is r for r in routed):
            mean_band(bottom, *series_matrix(g.runs, "routing/entropy"), g.label, w, color=f"C{i}")
    top.set_ylabel("reward (training)")
    bottom.set_ylabel("routing entropy H")
    bottom.set_xlabel("optimizer step")
    if routed:
        bottom.legend(fontsize=7)
    else:
        bottom.text(0.5, 0.5, "no run logged routing entropy", ha="center", transform=bottom.transAxes)
    top.legend(fontsize=7)
    save_figure(fig, path)
    return None


def plot_utilisation(task: str, groups: list[Group], path: Path) -> str | None:
    routed = [(g, routing_keys(g)) for g in groups if routing_keys(g)]
    if not routed:
        return "no run logged per-expert utilisation or selection frequency"
    seeds = max(len(g.runs) for g, _ in routed)
    fig, axes = new_figure(f"Per-expert utilisation over training, task {task} (mean ± std over {seeds} seed(s))", panels=len(routed))
    for ax, (g, (prefix, names)) in zip(axes, routed):
        for name in names:
            mean_band(ax, *series_matrix(g.runs, prefix + name), name, _window(groups))
        ax.set_title(g.label, fontsize=9)
        ax.set_ylabel("utilisation u_i" if "utilisation" in prefix else "selection frequency")
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("optimizer step")
    save_figure(fig, path)
    return None


def plot_utilisation_change(task: str, groups: list[Group], path: Path) -> str | None:
    routed = [(g, routing_keys(g)) for g in groups if routing_keys(g)]
    if not routed:
        return "no run logged per-expert utilisation or selection frequency"
    teams: dict[tuple, list] = defaultdict(list)  # one panel per set of experts (Figure 4: default, llm, naive)
    for g, (prefix, names) in routed:
        teams[(prefix, *names)].append(g)
    fig, axes = new_figure(f"Utilisation change from initialisation, task {task}\n"
                        "(mean of the last 10% of steps minus step 1; mean ± std over seeds)", panels=len(teams), sharex=False)
    for ax, ((prefix, *names), members) in zip(axes, teams.items()):
        width = 0.8 / len(members)
        for j, g in enumerate(members):
            changes = np.array([[change_from_start(r, prefix + n) for n in names] for r in g.runs])
            std = changes.std(0, ddof=1) if len(g.runs) > 1 else None
            ax.bar(np.arange(len(names)) + j * width, changes.mean(0), width, yerr=std, capsize=3, label=g.label)
        ax.set_xticks(np.arange(len(names)) + width * (len(members) - 1) / 2, names, fontsize=8)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("change of u_i" if "utilisation" in prefix else "change of selection frequency")
        ax.legend(fontsize=7)
    save_figure(fig, path)
    return None


def plot_without_context(task: str, groups: list[Group], path: Path) -> str | None:
    ablated = [g for g in groups if any(r.series("reward_without_context") for r in g.runs)]
    if not ablated:
        return "no run logged reward_without_context (set training.no_context_reward_every)"
    fig, (ax,) = new_figure(f"Score with vs without context tokens C, task {task}")
    for g in ablated:
        steps, without = series_matrix(g.runs, "reward_without_context")
        with_c = np.array([[score.get(int(s), np.nan) for s in steps] for score in map(Run.score_series, g.runs)])
        mean_band(ax, steps, with_c, f"{g.label}: with C", marker="o")
        mean_band(ax, steps, without, f"{g.label}: without C", linestyle="--", marker="x")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean score (training, without secondary rewards)")
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return None


def plot_queries(task: str, groups: list[Group], path: Path) -> str | None:
    perceiver = [g for g in groups if g.method == "perceiver"]
    if len({g.runs[0].cfg.adapter.num_queries for g in perceiver}) < 2:
        return "runs do not differ in adapter.num_queries"
    which = "eval" if all(r.eval for g in perceiver for r in g.runs) else "reward"
    ylabel = "held-out accuracy (%)" if which == "eval" else "training reward, last 10% of steps (%)"
    fig, (ax,) = new_figure(f"{ylabel.split(' (')[0].capitalize()} against the number of latent queries m, task {task}")
    by_team: dict[str, list[tuple[int, list[float]]]] = defaultdict(list)
    for g in perceiver:
        by_team[g.runs[0].team].append((g.runs[0].cfg.adapter.num_queries, g.values(which)))
    for team, points in sorted(by_team.items()):
        points.sort()
        stats = [mean_std(v) for _, v in points]
        ax.errorbar([m for m, _ in points], [s[0] for s in stats], yerr=[0 if math.isnan(s[1]) else s[1] for s in stats],
                    marker="o", capsize=3, label=f"perceiver ({team})")
    ax.set_xscale("log", base=2)
    ms = sorted({m for points in by_team.values() for m, _ in points})
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.set_xlabel("latent queries m")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return None


def plot_eval_accuracy(task: str, groups: list[Group], path: Path) -> str | None:
    evaluated = [g for g in groups if any(r.held_out_accuracy() for r in g.runs)]
    if not evaluated:
        return "no run logged eval/accuracy as the full-score share (set training.eval_every)"
    fig, (ax,) = new_figure(f"Held-out accuracy during training (greedy, training.eval_every), task {task}")
    for g in evaluated:
        mean_band(ax, *series_matrix(g.runs, Run.held_out_accuracy), g.label, marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("eval/accuracy")
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return None


PLOTS = {"reward_entropy": plot_reward_entropy, "utilisation": plot_utilisation,
         "utilisation_change": plot_utilisation_change, "reward_without_context": plot_without_context,
         "eval_accuracy": plot_eval_accuracy, "accuracy_vs_queries": plot_queries}


def make_plots(groups: list[Group], out: Path) -> tuple[list[str], list[str]]:
    """Every plot for every task: (written file names, "name: why it was skipped")."""
    written, skipped = [], []
    for task in sorted({g.task for g in groups}, key=task_rank):
        in_task = [g for g in groups if g.task == task]
        for kind, plot in PLOTS.items():
            name = f"{kind}-{task}.png"
            why = plot(task, in_task, out / name)
            if why:
                skipped.append(f"{name}: {why}")
            else:
                written.append(name)
    return written, skipped

