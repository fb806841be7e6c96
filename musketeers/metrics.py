"""Routing metrics (eq. 15): entropy and utilisation of the adapter's attention, Spearman rho
between a run's reward and entropy series, hard-routing selection frequencies.

A is the head-averaged attention of the Perceiver adapter, [B, m, n] (or [m, n] for one prompt):
row j of A is latent query j's distribution over the n experts. Each head's own weights
[B, H, m, n], flattened to [B, H*m, n], give the same entropy per head (`routing/head_entropy`).

A leaf: torch, numpy and scipy only.

Layer 0 of musketeers/layers.py: it imports nothing of the project.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor


def _rows(attention: Tensor) -> Tensor:
    """All attention rows as float64 [B*m, n]; accepts [B, m, n] or [m, n]."""
    if attention.dim() not in (2, 3):
        raise ValueError(f"expected attention [batch, queries, experts] or [queries, experts], "
                         f"got {tuple(attention.shape)}")
    return attention.detach().to(torch.float64).reshape(-1, attention.shape[-1])


def routing_entropy(attention: Tensor) -> float:
    """H = mean_j(-sum_i A_ji log A_ji), averaged over the batch (0 log 0 = 0). In [0, log n]."""
    a = _rows(attention)
    # every prompt has the same m rows, so the mean over all rows = mean over batch of mean over j
    return float(-torch.special.xlogy(a, a).sum(-1).mean())


def utilisation(attention: Tensor) -> Tensor:
    """u_i = mean_j A_ji, averaged over the batch -> [n] (float32, sums to 1)."""
    return _rows(attention).mean(0).float()


def selection_frequencies(one_hot: Tensor) -> Tensor:
    """Fraction of prompts that chose each expert under hard routing: [B, n] -> [n]."""
    if one_hot.dim() != 2:
        raise ValueError(f"expected a one-hot selection [batch, experts], got {tuple(one_hot.shape)}")
    return one_hot.detach().float().mean(0)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of two equally long series (e.g. reward and entropy per step).

    Pairs where either value is NaN are dropped. Returns NaN, without a warning, when fewer than
    3 pairs remain (two points always give +-1) or when either series is constant.
    """
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"series lengths differ: {x.size} vs {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(spearmanr(x, y).statistic)
