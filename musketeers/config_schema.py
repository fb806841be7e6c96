"""The config schema: every section of a run's config as a typed dataclass (`RunConfig` and its parts),
the choices some keys take, and `ConfigError`, the one-line error every config problem raises.

Pure data: it imports only experts.config (the team's schema), errors and method_traits (the names
`method` takes). Loading YAML layers is musketeers/config.py's, checking values config_checks.py's;
import these names from musketeers.config, which re-exports them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from experts.config import TeamConfig
from musketeers.errors import MusketeersError
from musketeers.method_traits import METHOD_TRAITS  # the methods' names and needs (a leaf)

CONTEXT_POSITIONS = ("after_first", "prefix", "suffix")  # where C sits in the prompt: musketeers/context.py
INIT_SCALES = ("torch", "unit")  # adapter.init_scale: musketeers/adapters.py (the paper states no initialisation)
STATE_NORMS = ("none", "layernorm")  # adapter.state_norm: musketeers/adapters.py (none: the paper's equations)
REFERENCE_CONTEXTS = ("zeros", "none")  # what the KL reference sees where C sits: musketeers/context.py
REPORT_TO = ("tensorboard", "wandb", "none")  # experiment trackers: musketeers/tracking.py


class ConfigError(MusketeersError, ValueError):
    """A bad config: the message is one line naming the source, the key and what would be valid."""


def trackers(report_to: str) -> list[str]:
    """The trackers training.report_to names, without "none" (`tensorboard,wandb` -> both)."""
    return [name for name in (part.strip() for part in report_to.split(",")) if name != "none"]


def flat_keys(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping (a config's to_dict()) as dotted keys -> leaf values (lists and scalars as they are)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flat_keys(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


# ----------------------------------------------------------------------------- schema


@dataclass
class DatasetSpec:
    name: str
    weight: float = 1.0
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class CurriculumConfig:
    enabled: bool = False


@dataclass
class TaskConfig:
    name: str = ""
    source: Literal["reasoning_gym", "gsm8k"] = "reasoning_gym"
    datasets: list[DatasetSpec] = field(default_factory=list)
    system_prompt: str = "DeepSeekZero"  # a name in reasoning_gym.utils.SYSTEM_PROMPTS, or "none"
    system_prompt_text: str | None = None  # literal system prompt; wins over system_prompt
    assistant_prefill: str = ""  # text the assistant turn starts with (e.g. "<answer>")
    train_size: int = 16000
    validation_size: int = 4000
    data_seed: int = 0  # fixed across training seeds, so every seed is evaluated on the same items
    path: str | None = None  # gsm8k: local directory of jsonl files; None = the hub
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class PolicyConfig:
    model: str = "Qwen/Qwen2.5-3B-Instruct"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "bfloat16"
    trust_remote_code: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class AdapterConfig:
    latent_dim: int = 512
    num_queries: int = 8
    num_heads: int = 8
    router_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    gumbel_temperature: float = 1.0
    hint_max_tokens: int = 128
    context_position: Literal[CONTEXT_POSITIONS] = "after_first"
    state_norm: Literal[STATE_NORMS] = "none"
    init_scale: Literal[INIT_SCALES] = "torch"


@dataclass
class TrainingConfig:
    num_generations: int = 8
    beta: float = 0.04
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    learning_rate: float = 1e-4
    router_lr: float = 1e-4
    # g_phi's output projection W_out (eq. 16) at router_lr x this; 1 is the paper's single adapter rate.
    # Adam moves every W_out entry by about its rate, so C can move by rate x ||C'||_1 a step (docs/signal.md)
    out_proj_lr_scale: float = 1.0
    adam_epsilon: float = 1e-6
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    prompts_per_batch: int = 4
    gradient_accumulation_steps: int = 8
    max_completion_length: int = 128
    max_steps: int = 500
    temperature: float = 1.0
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    logging_steps: int = 1
    save_steps: int = 50
    no_context_reward_every: int = 0  # Figure 5: every k steps log the reward of the prompt alone (no C, LoRA on)
    reference_context: Literal[REFERENCE_CONTEXTS] = "zeros"
    activation_checkpointing: Literal["auto", "always", "never"] = "auto"  # not on/off: YAML reads those as booleans
    generation_cache: Literal["dynamic", "static"] = "dynamic"
    eval_every: int = 0  # greedy held-out accuracy every k optimizer steps and at the last one (0 = off)
    eval_size: int = 128  # held-out items it reads: the first eval_size of the eval split (musketeers eval's)
    report_to: str = "tensorboard"  # a REPORT_TO name, or several comma-separated (tensorboard,wandb)


@dataclass
class SecondaryRewardConfig:
    """One of Reasoning Gym's secondary rewards (rewards.SECONDARY_REWARDS), added to the score times
    `scaling` (Reasoning Gym's scaling_factor). Options left unset (None) take Reasoning Gym's defaults."""
    name: str  # cosine | format | length
    scaling: float = 1.0
    preappend_thinking_token: bool | None = None  # format: prepend "<think>" before the check (default false)
    max_score: float | None = None  # length: the full score (default 1.0)
    max_output_length: int | None = None  # length: characters at which the term saturates (default 1024)

    def options(self) -> dict[str, Any]:
        """The options this entry sets, for rewards.make_reward_functions."""
        return {key: value for key in ("preappend_thinking_token", "max_score", "max_output_length")
                if (value := getattr(self, key)) is not None}


@dataclass
class RewardConfig:
    """Reasoning Gym's reward recipe (rewards/functions.py): the score, if use_accuracy, plus each
    secondary reward times its scaling. gsm8k_extraction: what a GSM8K completion's answer is (rewards/gsm8k.py)."""
    use_accuracy: bool = True
    secondary: list[SecondaryRewardConfig] = field(default_factory=list)
    gsm8k_extraction: Literal["strict", "flexible"] = "strict"


@dataclass
class RunConfig:
    seed: int = 0
    method: Literal[tuple(METHOD_TRAITS)] = "perceiver"
    team: TeamConfig = field(default_factory=TeamConfig)
    output_dir: str = "runs"
    task: TaskConfig = field(default_factory=TaskConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
