"""Frozen expert serving: pooled hidden states of heterogeneous experts, as Ray actors or in-process.

    from experts import ExpertPool
    with ExpertPool(cfg.team, cfg.task, seed=cfg.seed) as pool:
        states = pool.encode(questions)   # list of [B, d_i] tensors, in team order

Modules: pooling (which token / layer), worker (one expert), cache (each prompt once, optionally on
disk), pool (the team, Ray or local), probe (`musketeers experts probe`).
"""

from experts.pooling import POOLINGS, prompt_choice
from experts.pool import ExpertPool
from experts.worker import ExpertLoadError, ExpertWorker

__all__ = ["POOLINGS", "ExpertLoadError", "ExpertPool", "ExpertWorker", "prompt_choice"]
