"""What a team file says about its experts: the typed sections the learner's config loader
(musketeers/config.py) validates and composes into a run's config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

POOLINGS = ("last_token", "first_token", "random_token", "first_layer", "random_layer")  # see pooling.py
PLACEMENTS = ("together", "apart")  # a sweep run's Ray experts: on its node, in its bundle; or anywhere


@dataclass
class ExpertConfig:
    name: str
    model: str
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "bfloat16"
    device: str = "auto"
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)  # Ray custom resources, e.g. {expert_node: 1}
    trust_remote_code: bool = False
    max_length: int = 1024  # prompt tokens an expert reads; longer prompts are cut from the left


@dataclass
class TeamConfig:
    name: str = ""
    backend: Literal["ray", "local"] = "ray"
    pooling: Literal[POOLINGS] = "last_token"
    placement: Literal[PLACEMENTS] = "together"
    experts: list[ExpertConfig] = field(default_factory=list)
    cache_dir: str | None = None  # on-disk cache of pooled states; None = in memory only
