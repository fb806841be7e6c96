"""Frozen expert serving: pooled hidden states of heterogeneous experts, as Ray actors or in-process.

    from experts import ExpertPool
    with ExpertPool(cfg.team, system_prompt(cfg.task), seed=cfg.seed) as pool:
        states = pool.encode(questions)   # list of [B, d_i] tensors, in team order

Modules: config (what a team file says), models (the one model loader, the policy's too), prompt
(what a model reads), pooling (which token / layer), worker (one expert), cache (each prompt once,
optionally on disk), pool (the team, Ray or local), probe (`musketeers experts probe`), errors (the
user-error base the CLI reports in one line). Nothing here imports musketeers: the learner hands
experts what they need (the team config, the system prompt text).
"""

import importlib

# where each public name lives; imported on first use, so that the learner's config loader and CLI,
# which read experts.config and experts.errors, do not pay for torch
_EXPORTS = {"POOLINGS": "experts.config", "prompt_choice": "experts.pooling", "ExpertPool": "experts.pool",
            "ExpertLoadError": "experts.worker", "ExpertWorker": "experts.worker"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'experts' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
