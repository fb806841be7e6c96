"""The run's own curves, written into its directory when training ends (rundir.CURVES_FILE): training
reward (with held-out accuracy where the run evaluated), KL, entropy and per-expert utilisation over
optimizer steps (`musketeers report` compares runs).

It reads the run through musketeers/runs.py and draws with the plotting primitives (plotting.py),
never through the report; train.py imports it.
"""

from __future__ import annotations

from pathlib import Path

from musketeers.plotting import mean_band, new_figure, save_figure, series_matrix
from musketeers.runs import Group, load_run, routing_keys
from musketeers.rundir import CURVES_FILE


def plot_run_curves(run_dir: Path) -> Path | None:
    """Write <run_dir>/curves.png from metrics.jsonl; None when no step was logged."""
    run = load_run(run_dir)
    if not run.series("reward"):
        return None
    path = Path(run_dir) / CURVES_FILE
    fig, (reward, kl, entropy, usage) = new_figure(f"{Path(run_dir).name}: method {run.cfg.method}, task {run.task}", panels=4)
    _line(reward, run, "reward", "reward (training, sampled)")
    if _line(reward, run, "eval/accuracy", "held-out accuracy (greedy)", marker="o"):
        reward.legend(fontsize=7)
    if not _line(kl, run, "kl", "KL(policy ‖ reference)"):
        _note(kl, "no KL logged (training.beta = 0)")
    if not _line(entropy, run, "routing/entropy", "routing entropy H"):
        _line(entropy, run, "entropy", "policy token entropy")
    _plot_usage(usage, run)
    usage.set_xlabel("optimizer step")
    save_figure(fig, path)
    return path


def _line(ax, run, key: str, label: str, **style) -> bool:
    """The run's `key` over steps on `ax` (y axis named `label`); False when the run never logged it."""
    if not run.series(key):
        return False
    mean_band(ax, *series_matrix([run], key), label, **style)
    ax.set_ylabel(ax.get_ylabel() or label)
    return True


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", transform=ax.transAxes)


def _plot_usage(ax, run) -> None:
    """Utilisation u_i per expert (or hard routing's selection frequency); a note for methods without routing."""
    routing = routing_keys(Group(run.task, run.cfg.method, run.cfg.method, [run]))
    if routing is None:
        _note(ax, f"method {run.cfg.method} logs no per-expert routing")
        return
    prefix, names = routing
    for name in names:
        mean_band(ax, *series_matrix([run], prefix + name), name)
    ax.set_ylabel("utilisation u_i" if "utilisation" in prefix else "selection frequency")
    ax.legend(fontsize=7)
