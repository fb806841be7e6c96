"""A sweep file (its format: musketeers/sweep.py) -> its runs (`Job`s), and what each needs now in the store
it writes to (run_store.py): which run dir serves it, and whether that run is new, finished, to be
evaluated, resumed or restarted, busy in another sweep, or in conflict with another run of its name.

It may import config, data, errors, rundir and run_store; sweep.py and sweep_resources.py import it.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from musketeers.config import load_run_config
from musketeers.data import check_split, default_split
from musketeers.errors import MusketeersError
from musketeers.rundir import (CONFIG_FILE, eval_path, final_or_last_checkpoint, is_finished, last_checkpoint, read_config,
                               read_json, run_name)
from musketeers.run_store import describe_holder, lock_holder, recorded_by, run_identity, serving_dir, store_runs

BLOCK_KEYS = ("tasks", "methods", "teams", "seeds", "overrides", "task_overrides", "vary")
TOP_KEYS = (*BLOCK_KEYS, "output_dir", "grid", "eval", "resources", "max_retries")
EVAL_KEYS = ("split", "limit", "batch_size")
RESOURCE_KEYS = ("num_cpus", "num_gpus", "custom")
DEFAULT_RESOURCES = {"num_cpus": 1.0, "num_gpus": "auto", "custom": {}}
DEFAULT_RETRIES = 3


class SweepError(MusketeersError, ValueError):
    """A bad sweep file or argument, or a run no node of the cluster can hold."""


@dataclass
class Job:
    name: str
    run_dir: Path
    task: str
    overrides: list[str]
    config: dict = field(repr=False, default_factory=dict)  # the resolved config, to compare with a stored one
    identity: str = ""  # run_store.run_identity(config): runs of equal identity are one run


# ----------------------------------------------------------------------------- sweep file -> jobs


def _list(block: dict, key: str, source: str) -> list:
    """A list-valued key; overrides may be empty, teams default to the task's own team."""
    value = block.get(key, {"overrides": [], "teams": [None]}.get(key))
    if not isinstance(value, list) or (key != "overrides" and not value):
        raise SweepError(f"{source}: {key}: expected a non-empty list, got {value!r}")
    return value


def _check_keys(data: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SweepError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(allowed)}")


def _number(value, where: str, allow_auto: bool = False) -> float | str:
    if allow_auto and value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise SweepError(f"{where}: expected a number >= 0{' or auto' if allow_auto else ''}, got {value!r}")
    return float(value)


def read_resources(data: dict, where: str) -> dict:
    """The `resources` of one run's policy, checked, with defaults."""
    given = data.get("resources") or {}
    if not isinstance(given, dict):
        raise SweepError(f"{where}: resources: expected a mapping, got {given!r}")
    _check_keys(given, RESOURCE_KEYS, f"{where}: resources")
    out = {**DEFAULT_RESOURCES, **given}
    out["num_cpus"] = _number(out["num_cpus"], f"{where}: resources.num_cpus")
    out["num_gpus"] = _number(out["num_gpus"], f"{where}: resources.num_gpus", allow_auto=True)
    if not isinstance(out["custom"], dict):
        raise SweepError(f"{where}: resources.custom: expected a mapping of Ray resource names to amounts")
    out["custom"] = {str(k): _number(v, f"{where}: resources.custom.{k}") for k, v in out["custom"].items()}
    return out


def _check_eval(opts, where: str) -> None:
    if opts is None:
        return
    if not isinstance(opts, dict):
        raise SweepError(f"{where}: expected a mapping of {', '.join(EVAL_KEYS)}, got {opts!r}")
    _check_keys(opts, EVAL_KEYS, where)
    if opts.get("split") not in (None, "validation", "test"):
        raise SweepError(f"{where}.split: {opts['split']!r} is not valid; valid: validation, test (or leave it out)")
    for key in ("limit", "batch_size"):
        value = opts.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SweepError(f"{where}.{key}: expected an integer >= 1, got {value!r}")


def read_sweep(path: Path) -> dict:
    """The sweep file as a mapping, its keys checked; `resources` and `max_retries` with their defaults."""
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected a mapping at the top level")
    _check_keys(data, TOP_KEYS, str(path))
    for i, block in enumerate(data.get("grid") or []):
        _check_keys(block, BLOCK_KEYS, f"{path}: grid[{i}]")
    _check_eval(data.get("eval"), f"{path}: eval")
    data["resources"] = read_resources(data, str(path))
    retries = data.setdefault("max_retries", DEFAULT_RETRIES)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise SweepError(f"{path}: max_retries: expected an integer >= 0, got {retries!r}")
    return data


def _block_jobs(block: dict, out: Path, source: str) -> list[Job]:
    vary = block.get("vary") or {}
    variants = [list(zip(vary, values)) for values in itertools.product(*vary.values())] if vary else [[]]
    jobs = []
    for task, method, team, seed, variant in itertools.product(
            _list(block, "tasks", source), _list(block, "methods", source), _list(block, "teams", source),
            _list(block, "seeds", source), variants):
        overrides = [*_list(block, "overrides", source), *(block.get("task_overrides") or {}).get(task, []),
                     f"method={method}", *([f"team={team}"] if team else []), f"seed={seed}", f"output_dir={out}",
                     *(f"{k}={json.dumps(v)}" for k, v in variant)]
        cfg = load_run_config(str(task), overrides)
        if (block.get("eval") or {}).get("split"):  # a split the task lacks fails now, not after training
            check_split(cfg.task, block["eval"]["split"])
        suffix = "".join(f"-{k.split('.')[-1]}{v}" for k, v in variant)
        name = run_name(cfg, suffix)
        jobs.append(Job(name, out / name, str(task), overrides, cfg.to_dict(), run_identity(cfg.to_dict())))
    return jobs


def plan(sweep: dict, source: str) -> list[Job]:
    """Every run of the sweep, once each (`single` runs once whatever the teams), configs validated."""
    out = Path(sweep.get("output_dir", "runs/sweep"))
    top = {k: v for k, v in sweep.items() if k in (*BLOCK_KEYS, "eval")}
    blocks = [{**top, **b} for b in sweep.get("grid") or [{}]]
    jobs = {}
    for i, block in enumerate(blocks):
        for job in _block_jobs(block, out, f"{source}: grid[{i}]" if sweep.get("grid") else source):
            jobs.setdefault(job.name, job)
    return list(jobs.values())


# ----------------------------------------------------------------------------- what each run needs now


def eval_done(run_dir: Path, eval_opts: dict | None) -> bool:
    """The greedy eval `eval_opts` asks for exists, on as many items as it asks (a reused run may have fewer)."""
    if eval_opts is None:
        return True
    checkpoint = final_or_last_checkpoint(run_dir)
    path = eval_path(checkpoint, eval_opts.get("split") or default_split(read_config(run_dir))) if checkpoint else None
    result = read_json(path) if path is not None else None  # a torn one: evaluate again
    if result is None:
        return False
    return result["n"] >= min(eval_opts.get("limit") or result["split_size"], result["split_size"])


def state(run_dir: Path, eval_opts: dict | None) -> str:
    """What the run dir serving a run needs: new | finished | evaluate | resume | restart."""
    if not run_dir.exists():
        return "new"
    if is_finished(run_dir):
        return "finished" if eval_done(run_dir, eval_opts) else "evaluate"
    return "resume" if last_checkpoint(run_dir) is not None else "restart"


def resolve(jobs: list[Job], store: Path) -> set[str]:
    """Point each job at the run dir serving its identity (run_store.serving_dir); the names no dir can serve."""
    runs, groups = store_runs(store), defaultdict(list)
    for job in jobs:
        groups[job.identity].append(job)
    conflicts = set()
    for identity, group in groups.items():
        served = serving_dir(runs.get(identity, []), store, [j.name for j in group])
        for job in group:
            if served is None:
                conflicts.add(job.name)
            else:
                job.run_dir = served
    return conflicts


STATE_WORDS = {"new": "new", "finished": "finished", "evaluate": "finished but not evaluated", "resume": "resumable",
               "restart": "started without a checkpoint (restart)", "busy": "busy in another sweep",
               "conflict": "conflict"}


def plan_states(jobs: list[Job], store: Path, eval_opts: dict | None) -> dict[str, str]:
    """Each job pointed at the run dir serving it; its state: new | finished | evaluate | resume | restart |
    busy (another sweep trains or evaluates it now) | conflict (its name holds a run of another config)."""
    conflicts = resolve(jobs, store)
    states = {}
    for job in jobs:
        states[job.name] = "conflict" if job.name in conflicts else state(job.run_dir, eval_opts)
        if states[job.name] not in ("conflict", "finished") and lock_holder(store, job.identity):
            states[job.name] = "busy"
    return states


def reuse_note(job: Job, users: dict[str, list[str]], sweep_name: str) -> str:
    """Why a job counts as reused: its run has another name, or other sweeps of the store use it; else ""."""
    others = [u for u in users.get(job.run_dir.name, []) if u != sweep_name]
    if job.run_dir.name == job.name and not others:
        return ""
    return "reused" + (f" for {job.name}" if job.run_dir.name != job.name else "") + (
        f", also in {', '.join(others)}" if others else "")


def print_plan(jobs: list[Job], states: dict[str, str], store: Path, sweep_name: str) -> None:
    """One line per run (its state and the dir serving it), then how many are new, reused, finished, resumable."""
    users, reused = recorded_by(store), Counter()
    for job in jobs:
        note = reuse_note(job, users, sweep_name) if states[job.name] != "conflict" else ""
        if note:
            reused[states[job.name]] += 1
        holder = lock_holder(store, job.identity) if states[job.name] == "busy" else None
        notes = [n for n in (note, holder and describe_holder(holder)) if n]
        print(f"[sweep] {states[job.name]:>9}  {job.run_dir}" + "".join(f"  ({n})" for n in notes))
    print(f"[sweep] {len(jobs)} runs: " + ", ".join(f"{n} {STATE_WORDS[s]}" for s, n in Counter(states.values()).items()))
    print(f"[sweep] reused: {sum(reused.values())} (runs of {store} that other sweeps use too, or under another name)"
          + (": " + ", ".join(f"{n} {STATE_WORDS[s]}" for s, n in reused.items()) if reused else ""), flush=True)
    conflicts = [j.name for j in jobs if states[j.name] == "conflict"]
    if conflicts:
        print(f"[sweep] not touched ({CONFIG_FILE} differs from the sweep file; move or delete them): {', '.join(conflicts)}")
