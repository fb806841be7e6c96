"""The one config loader: YAML layers -> a typed, validated `RunConfig`.

A run is composed from layers, later layers winning key by key:

    configs/base.yaml  <-  task file  <-  team file  <-  command-line `key=value` overrides

Every layer is checked against the typed schema below before it is merged, so an error names the
file (or "command line") it came from, the dotted key, and the closest valid choice. YAML is read
with `yaml.safe_load` only. We validate ourselves instead of using pydantic because the messages
must carry the layer's file and a "did you mean" for keys and choices, in one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from experts.config import TeamConfig, parse_template_date
from musketeers.errors import MusketeersError
from musketeers.method_traits import METHOD_TRAITS  # the methods' names and needs (a leaf)


def _config_dir() -> Path:
    """The one place configs/ is found: inside the package in a wheel (pyproject.toml maps it there),
    beside the package in a checkout, editable install or not, so edits there take effect at once."""
    package = Path(__file__).resolve().parent
    for found in (package / "configs", package.parent / "configs"):
        if found.is_dir():
            return found
    raise MusketeersError(f"no configs/ folder in {package} or beside it: reinstall musketeers")


CONFIG_DIR = _config_dir()
BASE_CONFIG = CONFIG_DIR / "base.yaml"
CONTEXT_POSITIONS = ("after_first", "prefix", "suffix")  # where C sits in the prompt: musketeers/context.py
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


@dataclass
class TrainingConfig:
    num_generations: int = 8
    beta: float = 0.04
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    learning_rate: float = 1e-4
    router_lr: float = 1e-4
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


# ----------------------------------------------------------------------------- validation


def _closest(word: str, choices: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


def _choices_hint(word: str, choices: typing.Sequence[str]) -> str:
    hint = _closest(word, choices)
    return hint if hint else f"; valid: {', '.join(choices)}"


def _type_name(tp: Any) -> str:
    if tp in (int, float, str, bool):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _check(value: Any, tp: Any, where: str, source: str) -> Any:
    """Return `value` converted to type `tp`, or raise ConfigError naming `source` and `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    fail = lambda why: ConfigError(f"{source}: {where}: {why}")  # noqa: E731

    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where, source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(value, inner, where, source)
    if origin is Literal:
        if value not in args:
            raise fail(f"{value!r} is not valid{_choices_hint(value, [str(a) for a in args])}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise fail(f"expected a list, got {value!r}")
        return [_check(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail(f"expected a mapping, got {value!r}")
        return {k: _check(v, args[1], f"{where}.{k}", source) for k, v in value.items()} if args else dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail(f"expected a string, got {value!r}")
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {_type_name(tp)} at {where}")  # a bug in the schema


def _build(cls: type, data: dict[str, Any], where: str, source: str, partial: bool = False) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and missing required ones.

    With `partial`, only check the keys given (one layer holds only some keys) and return the
    checked mapping instead of an instance; list items are always complete objects.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            full = [f"{where}.{k}" if where else k for k in fields]
            raise ConfigError(f"{source}: {path}: unknown key{_choices_hint(path, full)}")
        tp = hints[key]
        if partial and dataclasses.is_dataclass(tp) and isinstance(value, dict):
            kwargs[key] = _build(tp, value, path, source, partial=True)
        else:
            kwargs[key] = _check(value, tp, path, source)
    if partial:
        return kwargs
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            raise ConfigError(f"{source}: {where}: missing required key {name!r}")
    return cls(**kwargs)


# ----------------------------------------------------------------------------- layers


def _read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None


def _named_files(kind: str) -> dict[str, Path]:
    return {p.stem: p for p in sorted((CONFIG_DIR / kind).glob("*.yaml"))}


def resolve_config_file(ref: str, kind: str) -> Path:
    """A task or team given by name (configs/<kind>/<name>.yaml) or by path."""
    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{kind[:-1]} file {ref!r} does not exist")
        return path
    named = _named_files(kind)
    if ref not in named:
        raise ConfigError(f"unknown {kind[:-1]} {ref!r}{_choices_hint(ref, sorted(named))}")
    return named[ref]


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value), the value read as YAML (so 3, 0.5, true, [a, b] work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"command line: {text!r}: overrides are written key=value, e.g. training.max_steps=10")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of mappings; lists and scalars are replaced whole."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- composition


@dataclass
class _Layer:
    source: str  # the file it came from, or "command line"
    data: dict[str, Any]  # config keys, without a team selector
    team_ref: str | None = None  # `team: <name or path>` selects a team file


def _split_team_ref(data: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    if isinstance(data.get("team"), str):
        data = dict(data)
        return data, data.pop("team")
    return data, None


def _read_layer(path: Path) -> _Layer:
    data = _read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data, team_ref = _split_team_ref(data)
    _build(RunConfig, data, "", str(path), partial=True)
    if team_ref and (path.parent / team_ref).is_file():  # a team path in a file is relative to that file
        team_ref = str(path.parent / team_ref)
    return _Layer(str(path), data, team_ref)


def _override_layer(overrides: typing.Sequence[str]) -> _Layer:
    layer = _Layer("command line", {})
    for text in overrides:
        key, value = parse_override(text)
        nested, team_ref = _split_team_ref(_nest(key, value))
        layer.team_ref = team_ref or layer.team_ref
        _build(RunConfig, nested, "", layer.source, partial=True)
        layer.data = _merge(layer.data, nested)
    return layer


def load_run_config(task: str, overrides: typing.Sequence[str] = (), base: Path | None = None) -> RunConfig:
    """Compose base <- task <- team <- overrides into a validated RunConfig.

    `task` and the `team=` selector take a name (a file in configs/) or a path.
    """
    layers = [_read_layer(Path(base) if base else BASE_CONFIG), _read_layer(resolve_config_file(task, "tasks"))]
    cli = _override_layer(overrides)
    team_ref = next((layer.team_ref for layer in (cli, *reversed(layers)) if layer.team_ref), None)
    if team_ref is None:
        raise ConfigError("no team given: set team: <name> in configs/base.yaml or team=<name> on the command line")
    team_layer = _read_layer(resolve_config_file(team_ref, "teams"))
    if not isinstance(team_layer.data.get("team"), dict):
        raise ConfigError(f"{team_layer.source}: a team file needs a 'team:' section with its experts")
    layers += [team_layer, cli]

    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer.data)
    config = _build(RunConfig, merged, "", "config")
    _validate(config, lambda key: _source_of(key, layers))
    return config


def load_resolved_config(path: Path) -> RunConfig:
    """A resolved config written by a run (config.yaml), checked like any other."""
    data = _read_yaml(Path(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    config = _build(RunConfig, _upgrade_reward(data), "", str(path))
    _validate(config, lambda key: str(path))
    return config


def _upgrade_reward(data: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml written before reward.secondary read as today: its reward.format_weight w (the
    weight of a stricter DeepSeekZero format check) becomes reward.secondary [{name: format, scaling: w}],
    or nothing when w is 0 (accuracy only, as such a run trained). reward.gsm8k_extraction takes its
    default, strict (such a run read a GSM8K reply without an <answer> tag by its last number)."""
    reward = data.get("reward")
    if not isinstance(reward, dict) or "format_weight" not in reward:
        return data
    reward = dict(reward)
    weight = reward.pop("format_weight")
    if weight:
        reward["secondary"] = [{"name": "format", "scaling": weight}]
    return {**data, "reward": reward}


def _source_of(key: str, layers: list[_Layer]) -> str:
    """The last layer that set dotted `key` (or the list or section holding it)."""
    for layer in reversed(layers):
        node: Any = layer.data
        for part in key.split("."):
            name = part.split("[")[0]
            if not isinstance(node, dict) or name not in node:
                break
            node = node[name]
            if isinstance(node, list):  # lists are replaced whole: this layer set every item
                return layer.source
        else:
            return layer.source
    return "config"


def _validate(cfg: RunConfig, source_of: typing.Callable[[str], str]) -> None:
    """Checks across keys and against the libraries (dataset names, prompts, value ranges)."""

    def fail(key: str, why: str) -> typing.NoReturn:
        raise ConfigError(f"{source_of(key)}: {key}: {why}")

    task = cfg.task
    if not task.name:
        fail("task.name", "missing: every task file names its task")
    if task.curriculum.enabled:
        fail("task.curriculum.enabled", "curricula are not supported; the paper trains without one (set false)")
    if task.source == "reasoning_gym":
        _validate_datasets(task, fail)
    elif task.datasets:
        fail("task.datasets", "a gsm8k task takes no Reasoning Gym datasets")
    if task.system_prompt_text is None:
        from reasoning_gym.utils import SYSTEM_PROMPTS

        names = [*SYSTEM_PROMPTS, "none"]
        if task.system_prompt not in names:
            fail("task.system_prompt", f"unknown prompt {task.system_prompt!r}{_choices_hint(task.system_prompt, names)}")
    for key in ("train_size", "validation_size"):
        if getattr(task, key) < 1:
            fail(f"task.{key}", "must be at least 1")

    if METHOD_TRAITS[cfg.method].experts and not cfg.team.experts:
        fail("team.experts", f"method {cfg.method!r} needs at least one expert")
    names = [e.name for e in cfg.team.experts]
    if len(set(names)) != len(names):
        fail("team.experts", f"expert names must be unique, got {names}")
    try:
        parse_template_date(cfg.team.template_date)
    except ValueError as e:
        fail("team.template_date", str(e))
    _validate_models(cfg, fail)

    a, t = cfg.adapter, cfg.training
    if a.latent_dim < 2 or a.latent_dim % (2 * a.num_heads):
        fail("adapter.latent_dim", f"must be a multiple of 2 x num_heads ({2 * a.num_heads}), got {a.latent_dim}")
    for key in ("num_queries", "num_heads", "hint_max_tokens"):
        if getattr(a, key) < 1:
            fail(f"adapter.{key}", "must be at least 1")
    if t.num_generations < 2:
        fail("training.num_generations", "GRPO needs groups of at least 2 completions")
    for key in ("prompts_per_batch", "gradient_accumulation_steps", "max_completion_length", "max_steps", "logging_steps", "save_steps",
                "eval_size"):
        if getattr(t, key) < 1:
            fail(f"training.{key}", f"must be at least 1, got {getattr(t, key)}")
    for key in ("learning_rate", "router_lr", "adam_epsilon", "temperature", "max_grad_norm"):
        if getattr(t, key) <= 0:
            fail(f"training.{key}", f"must be positive, got {getattr(t, key)}")
    for key, value in (("training.beta", t.beta), ("training.weight_decay", t.weight_decay),
                       ("training.warmup_steps", t.warmup_steps), ("training.no_context_reward_every", t.no_context_reward_every),
                       ("training.eval_every", t.eval_every)):
        if value < 0:
            fail(key, f"must not be negative, got {value}")
    _validate_reward(cfg, fail)
    _validate_report_to(t.report_to, fail)
    if t.eval_every and task.source == "reasoning_gym" and t.eval_size > task.validation_size:
        fail("training.eval_size", f"reads the first eval_size validation items, but task.validation_size is {task.validation_size}")
    from transformers import SchedulerType

    schedulers = [s.value for s in SchedulerType]
    if t.lr_scheduler_type not in schedulers:
        fail("training.lr_scheduler_type", f"unknown scheduler {t.lr_scheduler_type!r}{_choices_hint(t.lr_scheduler_type, schedulers)}")


def _validate_reward(cfg: RunConfig, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    import math

    from rewards import SECONDARY_REWARDS

    reward = cfg.reward
    if not reward.use_accuracy and not reward.secondary:
        fail("reward.use_accuracy", "false with no reward.secondary leaves nothing to train on")
    names = [entry.name for entry in reward.secondary]
    for i, entry in enumerate(reward.secondary):
        key = f"reward.secondary[{i}]"
        if entry.name not in SECONDARY_REWARDS:
            fail(f"{key}.name", f"unknown secondary reward {entry.name!r}; valid: {', '.join(SECONDARY_REWARDS)}")
        if entry.name in names[:i]:
            fail(f"{key}.name", f"{entry.name!r} is listed twice; give each secondary reward once")
        allowed = SECONDARY_REWARDS[entry.name][1]
        for option in entry.options():
            if option not in allowed:
                fail(f"{key}.{option}", f"{entry.name} has no such option; its options: {', '.join(allowed) or 'none'}")
        if not math.isfinite(entry.scaling):
            fail(f"{key}.scaling", f"must be a finite number, got {entry.scaling}")
        if entry.max_output_length is not None and entry.max_output_length < 1:
            fail(f"{key}.max_output_length", f"must be at least 1, got {entry.max_output_length}")
        if entry.max_score is not None and not 0 < entry.max_score <= 1:
            fail(f"{key}.max_score", f"must be in (0, 1] (scores are), got {entry.max_score}")
        if entry.preappend_thinking_token and cfg.task.assistant_prefill.lstrip().startswith("<think>"):
            fail(f"{key}.preappend_thinking_token", "task.assistant_prefill already opens with <think>, which the format "
                                                    "check reads; prepending another would fail every reply (set false)")


def _validate_report_to(report_to: str, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    import importlib.util

    names = [part.strip() for part in report_to.split(",")]
    for name in names:
        if name not in REPORT_TO:
            fail("training.report_to", f"unknown tracker {name!r}; valid: {', '.join(REPORT_TO)} (several comma-separated, "
                                       "e.g. tensorboard,wandb)")
    if "none" in names and len(names) > 1:
        fail("training.report_to", f"'none' cannot be combined with a tracker, got {report_to!r}")
    if "wandb" in names and importlib.util.find_spec("wandb") is None:
        fail("training.report_to", "wandb is not installed: pip install 'musketeers[wandb]' (or wandb)")


def _validate_datasets(task: TaskConfig, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    from reasoning_gym.factory import DATASETS

    if not task.datasets:
        fail("task.datasets", "a reasoning_gym task needs at least one dataset")
    for i, spec in enumerate(task.datasets):
        key = f"task.datasets[{i}]"
        if spec.name not in DATASETS:
            fail(f"{key}.name", f"unknown Reasoning Gym dataset {spec.name!r}{_closest(spec.name, DATASETS)}")
        if spec.weight < 0:
            fail(f"{key}.weight", f"must not be negative, got {spec.weight}")
        fields = [f.name for f in dataclasses.fields(DATASETS[spec.name][1]) if f.name not in ("seed", "size")]
        for option in spec.config:
            if option not in fields:
                fail(f"{key}.config", f"{spec.name} has no option {option!r}{_choices_hint(option, fields)}")


def _validate_models(cfg: RunConfig, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    from experts.models import parse_model_ref

    refs = [("policy.model", cfg.policy.model)]
    refs += [(f"team.experts[{i}].model", e.model) for i, e in enumerate(cfg.team.experts)]
    if METHOD_TRAITS[cfg.method].encoder:
        refs.append(("adapter.router_encoder", cfg.adapter.router_encoder))
    for key, ref in refs:
        try:
            parse_model_ref(ref)
        except ValueError as e:
            fail(key, str(e))
