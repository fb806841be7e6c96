"""What a team file says about its experts: the typed sections the learner's config loader
(musketeers/config.py) validates and composes into a run's config.

It imports nothing of the project (a leaf of experts/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

POOLINGS = ("last_token", "first_token", "random_token", "first_layer", "random_layer")  # see pooling.py
PLACEMENTS = ("together", "apart")  # a sweep run's Ray experts: on its node, in its bundle; or anywhere
# The date chat templates that write one (Llama 3.x, gpt-oss) read instead of today's: Llama 3.1's own
# fallback when no clock is available, so a prompt reads the same on every day (experts/prompt.py).
TEMPLATE_DATE_FORMAT = "%d %b %Y"  # Llama 3.x's date_string format, e.g. "26 Jul 2024"
DEFAULT_TEMPLATE_DATE = "26 Jul 2024"


def parse_template_date(text: str) -> datetime:
    """A team.template_date as a datetime (midnight); ValueError naming the expected form otherwise."""
    try:
        return datetime.strptime(text, TEMPLATE_DATE_FORMAT)
    except (TypeError, ValueError):
        raise ValueError(f"expected a date like {DEFAULT_TEMPLATE_DATE!r} (day, month abbreviation, year), "
                         f"got {text!r}") from None


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
    template_date: str = DEFAULT_TEMPLATE_DATE  # the date chat templates write (experts' and the policy's)
