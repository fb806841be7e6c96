"""Plotting primitives: a figure of stacked panels over optimizer steps, a mean line with a ± std band
over runs, and the step-by-run matrix a band is drawn from. matplotlib (Agg) is imported when a
figure is made.

A leaf: it imports nothing of the project. The report's plots (plots.py) and one run's curves
(curves.py) are drawn with it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def series_matrix(runs: list, key: str | Callable[[Any], dict[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Steps logged by any run, and values [runs, steps] (NaN where a run did not log `key`, a metric's
    name, read with run.series(key) (musketeers.runs.Run), or a function giving step -> value of a run)."""
    series = [r.series(key) if isinstance(key, str) else key(r) for r in runs]
    steps = np.array(sorted(set().union(*series)), dtype=int)
    return steps, np.array([[s.get(int(k), np.nan) for k in steps] for s in series], dtype=float).reshape(len(runs), -1)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling mean that skips NaNs."""
    if window <= 1:
        return y
    kernel, ok = np.ones(window), ~np.isnan(y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.convolve(np.where(ok, y, 0.0), kernel, "same") / np.convolve(ok.astype(float), kernel, "same")


def mean_band(ax, steps: np.ndarray, values: np.ndarray, label: str, window: int = 1, **style) -> None:
    """Mean over runs as a line, mean ± std over runs (ddof=1) as a band when there are 2+ runs."""
    with warnings.catch_warnings():  # all-NaN columns (a step no seed logged) stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = _smooth(np.nanmean(values, 0), window)
        std = _smooth(np.nanstd(values, 0, ddof=1), window) if values.shape[0] > 1 else None
    line, = ax.plot(steps, mean, label=label, **style)
    if std is not None:
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)


def new_figure(title: str, panels: int = 1, width: float = 8.0, height: float = 3.2, sharex: bool = True):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(panels, 1, figsize=(width, height * panels), squeeze=False, sharex=sharex)
    fig.suptitle(title)
    for ax in axes[:, 0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # optimizer steps
    return fig, list(axes[:, 0])


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
