"""`musketeers report`: Table-1-style tables, reward-entropy correlations and plots from run directories.

    musketeers report runs/table1/*  [--out report/]     # run dirs, or folders holding run dirs

Runs are grouped by their resolved config minus the seed (and output_dir): one group = one method,
team and setting on one task, its runs = the seeds. A row of the tables is a method (+ team, + any
setting that differs between groups of the same method and team on a task, e.g. adapter.num_queries),
a column a task. Cells are mean +- std over seeds, std with ddof=1 (the sample std).

Numbers, named for what they are:
  * held-out accuracy: `accuracy` of the eval JSON that `musketeers eval` wrote next to the run's
    final/ (or last) checkpoint; a cell shows "—" when none of its runs has one, and "(k of n
    seeds)" when only some have;
  * training reward: the mean `reward` over the last 10% of a run's logged steps (at least one step);
    always available, but it is the sampled (temperature 1) reward on training prompts, not accuracy;
  * held-out accuracy during training: `eval/accuracy` that a run with training.eval_every logged (greedy, on
    the first training.eval_size items of the same split); the runs table shows the last one, a plot all;
  * rho: Spearman rank correlation between a run's reward and routing-entropy series
    (musketeers.metrics.spearman_rho; runs without routing entropy have none).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from musketeers.config import RunConfig
from musketeers.errors import MusketeersError
from musketeers.methods import METHODS
from musketeers.rundir import CONFIG_FILE, is_run_dir, read_config, read_eval, read_metrics, team_name

LAST_FRACTION = 0.1
TASK_ORDER = ("algorithmic", "arithmetic", "logic", "gsm8k")
IGNORED_KEYS = ("seed", "output_dir")


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

    def rho(self) -> float:
        """Spearman rho between reward and routing entropy over the steps that logged both."""
        from musketeers.metrics import spearman_rho  # torch and scipy: imported when needed

        entropy, reward = self.series("routing/entropy"), self.series("reward")
        steps = sorted(set(entropy) & set(reward))
        return spearman_rho([reward[s] for s in steps], [entropy[s] for s in steps]) if steps else math.nan


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories given directly or as children of the given folders."""
    found: list[Path] = []
    for p in map(Path, paths):
        if is_run_dir(p):
            found.append(p)
        elif p.is_dir():
            found += sorted(c for c in p.iterdir() if is_run_dir(c))
        else:
            raise ReportError(f"{str(p)!r} does not exist")
    if not found:
        raise ReportError(f"no run directories (folders with {CONFIG_FILE}) in {', '.join(map(str, paths))}")
    return list(dict.fromkeys(found))


def load_run(run_dir: Path) -> Run:
    from musketeers.evaluate import default_split

    cfg = read_config(run_dir)
    split = default_split(cfg)
    settings = {k: v for k, v in _flatten(cfg.to_dict()).items() if k not in IGNORED_KEYS}
    if not METHODS[cfg.method].experts:  # experts and adapter do not exist for it
        settings = {k: v for k, v in settings.items() if not k.startswith(("team.", "adapter."))}
    return Run(run_dir, cfg, read_metrics(run_dir), read_eval(run_dir, split), read_eval(run_dir, split, baseline=True),
               settings)


# ----------------------------------------------------------------------------- groups


@dataclass
class Group:
    task: str
    label: str  # the table row
    method: str
    runs: list[Run]

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
        for m in members:
            label = METHODS[method].label + (f" ({team})" if METHODS[method].experts else "")
            extra = ", ".join(f"{k.split('.')[-1]}={json.loads(m[0].settings.get(k, 'null'))}" for k in differing)
            groups.append(Group(task, f"{label}, {extra}" if extra else label, method, sorted(m, key=lambda r: r.cfg.seed)))
    return sorted(groups, key=lambda g: (_method_rank(g.method), g.label, _task_rank(g.task)))


def _method_rank(method: str) -> int:
    return METHODS[method].table_row


def _task_rank(task: str) -> tuple[int, str]:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; NaN for one value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


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
    tasks = sorted({g.task for g in groups}, key=_task_rank)
    labels = list(dict.fromkeys(g.label for g in groups))
    cells = {(g.label, g.task): _cell(g.values(which), len(g.runs)) for g in groups}
    lines = ["| method | " + " | ".join(tasks) + " |", "| --- |" + " --- |" * len(tasks)]
    lines += [f"| {label} | " + " | ".join(cells.get((label, t), "") for t in tasks) + " |" for label in labels]
    return "\n".join(lines)


def _fmt(x: float, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def runs_table(runs: list[Run]) -> str:
    """One line per run: steps, final training reward, held-out accuracy (from `musketeers eval`, and the last
    one logged during training, training.eval_every) and rho."""
    lines = ["| run | task | method | team | seed | steps | training reward (%, last 10%) | held-out accuracy (%) | "
             "eval/accuracy during training (%) | rho(reward, entropy) |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(runs, key=lambda r: (_task_rank(r.task), _method_rank(r.cfg.method), r.path.name)):
        acc = f"{100 * r.eval['accuracy']:.2f} (n={r.eval['n']})" if r.eval else "—"
        during = sorted(r.series("eval/accuracy").items())
        last = f"{100 * during[-1][1]:.2f} (step {during[-1][0]})" if during else "—"
        steps = r.rows[-1]["step"] if r.rows else 0
        lines.append(f"| {r.path.name} | {r.task} | {r.cfg.method} | {r.team} | {r.cfg.seed} | {steps} | "
                     f"{_fmt(100 * r.final_reward(), 2)} | {acc} | {last} | {_fmt(r.rho())} |")
    return "\n".join(lines)


def rho_summary(runs: list[Run]) -> str:
    rhos = [r.rho() for r in runs]
    finite = [x for x in rhos if not math.isnan(x)]
    if not finite:
        return ("Spearman rho(reward, routing entropy): no run has one (it needs 3+ steps with routing entropy, "
                "which perceiver runs log, and a reward and an entropy that are not constant).")
    return (f"Mean Spearman rho(reward, routing entropy) over {len(finite)} run(s): {np.mean(finite):.3f} (paper: -0.48); "
            f"{len(rhos) - len(finite)} run(s) have none (no routing entropy, fewer than 3 steps, or a constant series).")


def _eval_notes(runs: list[Run]) -> list[str]:
    sizes = sorted({(r.task, r.eval["split"], r.eval["n"], r.eval["split_size"]) for r in runs if r.eval})
    return [f"- {task}: {split} split, {n} of {size} items" + (" (--limit)" if n < size else "") for task, split, n, size in sizes]


def build_markdown(runs: list[Run], groups: list[Group], plots: list[str], skipped: list[str]) -> str:
    parts = [f"# musketeers report ({len(runs)} runs)", "",
             "Cells: mean ± std over seeds (sample std, ddof=1), in %."]
    if any(r.eval for r in runs):
        parts += ["", "## Held-out accuracy (%), greedy decoding, from `musketeers eval`", "", results_table(groups, "eval"),
                  "", "Evaluated items:", *_eval_notes(runs)]
        if not all(r.eval for r in runs):
            parts += ["", f"{sum(not r.eval for r in runs)} run(s) have no eval JSON (cells say how many seeds count)."]
    else:
        parts += ["", "No run has an eval JSON (run `musketeers eval <run>`): there is no held-out accuracy table; "
                  "the table below is the training reward, not accuracy."]
    if any(r.baseline for r in runs):
        parts += ["", "## Untrained baseline accuracy (%), `musketeers eval --baseline`", "", results_table(groups, "baseline")]
    parts += ["", f"## Training reward (%), mean over the last {LAST_FRACTION:.0%} of logged steps (sampled, training prompts)",
              "", results_table(groups, "reward"), "", "## Runs", "", runs_table(runs), "", rho_summary(runs), "", "## Plots", ""]
    parts += [f"- ![{p}]({p})" for p in plots] or ["- none"]
    parts += [f"- skipped: {s}" for s in skipped]
    return "\n".join(parts) + "\n"


def summary_json(runs: list[Run]) -> list[dict[str, Any]]:
    return [{"run": str(r.path), "task": r.task, "method": r.cfg.method, "team": r.team, "seed": r.cfg.seed,
             "steps": r.rows[-1]["step"] if r.rows else 0, "final_reward": r.final_reward(),
             "accuracy": r.eval["accuracy"] if r.eval else None, "rho": r.rho()} for r in runs]


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


# ----------------------------------------------------------------------------- plots


def _matrix(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps logged by any run, and values [runs, steps] (NaN where a run did not log `key`)."""
    series = [r.series(key) for r in runs]
    steps = np.array(sorted(set().union(*series)), dtype=int)
    return steps, np.array([[s.get(int(k), np.nan) for k in steps] for s in series], dtype=float).reshape(len(runs), -1)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling mean that skips NaNs."""
    if window <= 1:
        return y
    kernel, ok = np.ones(window), ~np.isnan(y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.convolve(np.where(ok, y, 0.0), kernel, "same") / np.convolve(ok.astype(float), kernel, "same")


def _band(ax, steps: np.ndarray, values: np.ndarray, label: str, window: int = 1, **style) -> None:
    """Mean over runs as a line, mean ± std over runs (ddof=1) as a band when there are 2+ runs."""
    with warnings.catch_warnings():  # all-NaN columns (a step no seed logged) stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = _smooth(np.nanmean(values, 0), window)
        std = _smooth(np.nanstd(values, 0, ddof=1), window) if values.shape[0] > 1 else None
    line, = ax.plot(steps, mean, label=label, **style)
    if std is not None:
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)


def _window(groups: list[Group]) -> int:
    longest = max(len(r.rows) for g in groups for r in g.runs)
    return max(1, longest // 25)


def _routing(group: Group) -> tuple[str, list[str]] | None:
    """("routing/utilisation/" or "routing/frequency/", expert names) when the group logged routing."""
    names = [e.name for e in group.runs[0].cfg.team.experts]
    for prefix in ("routing/utilisation/", "routing/frequency/"):
        if names and any(r.series(prefix + names[0]) for r in group.runs):
            return prefix, names
    return None


def _figure(title: str, panels: int = 1, width: float = 8.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(panels, 1, figsize=(width, height * panels), squeeze=False, sharex=True)
    fig.suptitle(title)
    for ax in axes[:, 0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # optimizer steps
    return fig, list(axes[:, 0])


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reward_entropy(task: str, groups: list[Group], path: Path) -> str | None:
    routed = [g for g in groups if any(r.series("routing/entropy") for r in g.runs)]
    w = _window(groups)
    fig, (top, bottom) = _figure(f"Reward and routing entropy over training, task {task}"
                                 + (f" (rolling mean over {w} steps)" if w > 1 else ""), panels=2)
    for i, g in enumerate(groups):  # one colour per group in both panels
        _band(top, *_matrix(g.runs, "reward"), g.label, w, color=f"C{i}")
        if any(g is r for r in routed):
            _band(bottom, *_matrix(g.runs, "routing/entropy"), g.label, w, color=f"C{i}")
    top.set_ylabel("reward (training)")
    bottom.set_ylabel("routing entropy H")
    bottom.set_xlabel("optimizer step")
    if routed:
        bottom.legend(fontsize=7)
    else:
        bottom.text(0.5, 0.5, "no run logged routing entropy", ha="center", transform=bottom.transAxes)
    top.legend(fontsize=7)
    _save(fig, path)
    return None


def plot_utilisation(task: str, groups: list[Group], path: Path) -> str | None:
    routed = [(g, _routing(g)) for g in groups if _routing(g)]
    if not routed:
        return "no run logged per-expert utilisation or selection frequency"
    seeds = max(len(g.runs) for g, _ in routed)
    fig, axes = _figure(f"Per-expert utilisation over training, task {task} (mean ± std over {seeds} seed(s))", panels=len(routed))
    for ax, (g, (prefix, names)) in zip(axes, routed):
        for name in names:
            _band(ax, *_matrix(g.runs, prefix + name), name, _window(groups))
        ax.set_title(g.label, fontsize=9)
        ax.set_ylabel("utilisation u_i" if "utilisation" in prefix else "selection frequency")
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("optimizer step")
    _save(fig, path)
    return None


def _change(run: Run, key: str) -> float:
    """Mean over the last 10% of logged steps minus the first logged value (the initial adapter)."""
    values = [v for _, v in sorted(run.series(key).items())]
    k = max(1, math.ceil(LAST_FRACTION * len(values)))
    return float(np.mean(values[-k:]) - values[0]) if values else math.nan


def plot_utilisation_change(task: str, groups: list[Group], path: Path) -> str | None:
    routed = [(g, _routing(g)) for g in groups if _routing(g)]
    if not routed:
        return "no run logged per-expert utilisation or selection frequency"
    fig, (ax,) = _figure(f"Utilisation change from initialisation, task {task}\n"
                         "(mean of the last 10% of steps minus step 1; mean ± std over seeds)")
    width = 0.8 / len(routed)
    for j, (g, (prefix, names)) in enumerate(routed):
        changes = np.array([[_change(r, prefix + n) for n in names] for r in g.runs])
        std = changes.std(0, ddof=1) if len(g.runs) > 1 else None
        ax.bar(np.arange(len(names)) + j * width, changes.mean(0), width, yerr=std, capsize=3, label=g.label)
    all_names = routed[0][1][1]
    ax.set_xticks(np.arange(len(all_names)) + width * (len(routed) - 1) / 2, all_names, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("change of u_i")
    ax.legend(fontsize=7)
    _save(fig, path)
    return None


def plot_without_context(task: str, groups: list[Group], path: Path) -> str | None:
    ablated = [g for g in groups if any(r.series("reward_without_context") for r in g.runs)]
    if not ablated:
        return "no run logged reward_without_context (set training.no_context_reward_every)"
    fig, (ax,) = _figure(f"Reward with vs without context tokens C, task {task}")
    for g in ablated:
        steps, without = _matrix(g.runs, "reward_without_context")
        with_c = np.array([[r.series("reward").get(int(s), np.nan) for s in steps] for r in g.runs])
        _band(ax, steps, with_c, f"{g.label}: with C", marker="o")
        _band(ax, steps, without, f"{g.label}: without C", linestyle="--", marker="x")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward (training)")
    ax.legend(fontsize=7)
    _save(fig, path)
    return None


def plot_eval_accuracy(task: str, groups: list[Group], path: Path) -> str | None:
    evaluated = [g for g in groups if any(r.series("eval/accuracy") for r in g.runs)]
    if not evaluated:
        return "no run logged eval/accuracy (set training.eval_every)"
    fig, (ax,) = _figure(f"Held-out accuracy during training (greedy, training.eval_every), task {task}")
    for g in evaluated:
        _band(ax, *_matrix(g.runs, "eval/accuracy"), g.label, marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("eval/accuracy")
    ax.legend(fontsize=7)
    _save(fig, path)
    return None


def plot_queries(task: str, groups: list[Group], path: Path) -> str | None:
    perceiver = [g for g in groups if g.method == "perceiver"]
    if len({g.runs[0].cfg.adapter.num_queries for g in perceiver}) < 2:
        return "runs do not differ in adapter.num_queries"
    which = "eval" if all(r.eval for g in perceiver for r in g.runs) else "reward"
    ylabel = "held-out accuracy (%)" if which == "eval" else "training reward, last 10% of steps (%)"
    fig, (ax,) = _figure(f"{ylabel.split(' (')[0].capitalize()} against the number of latent queries m, task {task}")
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
    _save(fig, path)
    return None


PLOTS = {"reward_entropy": plot_reward_entropy, "utilisation": plot_utilisation,
         "utilisation_change": plot_utilisation_change, "reward_without_context": plot_without_context,
         "eval_accuracy": plot_eval_accuracy, "accuracy_vs_queries": plot_queries}


def make_plots(groups: list[Group], out: Path) -> tuple[list[str], list[str]]:
    """Every plot for every task: (written file names, "name: why it was skipped")."""
    written, skipped = [], []
    for task in sorted({g.task for g in groups}, key=_task_rank):
        in_task = [g for g in groups if g.task == task]
        for kind, plot in PLOTS.items():
            name = f"{kind}-{task}.png"
            why = plot(task, in_task, out / name)
            if why:
                skipped.append(f"{name}: {why}")
            else:
                written.append(name)
    return written, skipped


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
