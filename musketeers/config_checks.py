"""Config checks: a mapping checked against the schema's types into a dataclass (`_build`: unknown and
missing keys, wrong types, choices, each error one line naming the source, the dotted key and the closest
valid choice), and the checks across keys and against the libraries once a config is composed
(`_validate`: dataset names, prompts, value ranges, rewards, trackers, model references).

It imports the schema (config_schema.py) and, where a check needs them, experts/, rewards/,
reasoning_gym and transformers; musketeers/config.py calls it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from experts.config import parse_template_date
from musketeers.config_schema import REPORT_TO, ConfigError, RunConfig, TaskConfig
from musketeers.method_traits import METHOD_TRAITS

# ----------------------------------------------------------------------------- types


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


# ----------------------------------------------------------------------------- across keys


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
    for key in ("learning_rate", "router_lr", "out_proj_lr_scale", "adam_epsilon", "temperature", "max_grad_norm"):
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
    if t.warmup_steps and t.lr_scheduler_type in ("constant", "reduce_lr_on_plateau"):  # transformers' get_scheduler drops it
        fail("training.warmup_steps", f"{t.warmup_steps} is ignored by lr_scheduler_type {t.lr_scheduler_type!r}; "
                                      "for a warmup then a constant rate set training.lr_scheduler_type=constant_with_warmup")


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
            parsed = parse_model_ref(ref)
        except ValueError as e:
            fail(key, str(e))
        if parsed.kind == "oracle" and not key.startswith("team."):
            fail(key, f"{ref!r} is an oracle expert: it serves states in a team and is no model to load")
