"""The one config loader: YAML layers -> a typed, validated `RunConfig`.

A run is composed from layers, later layers winning key by key:

    configs/base.yaml  <-  task file  <-  team file  <-  command-line `key=value` overrides

Every layer is checked against the typed schema (config_schema.py) before it is merged, so an error names the
file (or "command line") it came from, the dotted key, and the closest valid choice. YAML is read
with `yaml.safe_load` only. We validate ourselves instead of using pydantic because the messages
must carry the layer's file and a "did you mean" for keys and choices, in one line.

musketeers.config is the config API: it re-exports the schema (config_schema.py: RunConfig and its
sections, ConfigError, the choices) and calls the checks (config_checks.py); it owns finding configs/,
reading YAML layers, overrides, composition and reading a run's resolved config back. It imports only
those two modules, errors and experts.config.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from musketeers.config_checks import _build, _choices_hint, _validate
from musketeers.config_schema import (CONTEXT_POSITIONS, REFERENCE_CONTEXTS, REPORT_TO, AdapterConfig, ConfigError,
                                      CurriculumConfig, DatasetSpec, LoraConfig, PolicyConfig, RewardConfig, RunConfig,
                                      SecondaryRewardConfig, TaskConfig, TrainingConfig, flat_keys, trackers)
from musketeers.errors import MusketeersError

__all__ = ["CONFIG_DIR", "BASE_CONFIG", "load_run_config", "load_resolved_config", "resolve_config_file", "parse_override",
           # the schema, re-exported (config_schema.py)
           "CONTEXT_POSITIONS", "REFERENCE_CONTEXTS", "REPORT_TO", "ConfigError", "trackers", "flat_keys", "DatasetSpec",
           "CurriculumConfig", "TaskConfig", "LoraConfig", "PolicyConfig", "AdapterConfig", "TrainingConfig",
           "SecondaryRewardConfig", "RewardConfig", "RunConfig"]


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
