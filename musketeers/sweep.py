"""`musketeers sweep`: a grid of GRPO runs (tasks x methods x teams x seeds) from one YAML file, each run
a Ray task on this machine or on a cluster; rerun it to resume.

    musketeers sweep configs/sweeps/table1.yaml [--address auto|ray://host:port] [--dry-run]

Sweep file (every key optional except tasks, methods and seeds):

    output_dir: runs/table1              # runs go to <output_dir>/<task>-<method>-<team>-seed<k>
    tasks: [arithmetic, gsm8k]           # names or paths, as `musketeers train` takes them
    methods: [single, perceiver]
    teams: [default]                     # `single` uses no team: it runs once, named ...-none-...
    seeds: [0, 1, 2]
    overrides: [training.save_steps=25]  # key=value for every run
    task_overrides: {gsm8k: [task.path=data/gsm8k]}   # key=value for the runs of one task
    vary: {adapter.num_queries: [2, 8]}  # more overrides, crossed; each adds -<key><value> to names
    grid:                                # blocks crossed separately; a block's keys replace the
      - {methods: [perceiver], teams: [generalist]}   # top-level ones (without grid: one block)
    eval: {limit: null, batch_size: 16}  # evaluate each trained run (as `musketeers eval` does)
    resources: {num_cpus: 1, num_gpus: auto, custom: {}}   # what one run's policy asks of Ray
    max_retries: 3                       # restarts of a run whose process or node died

Why Ray core tasks: a run is a function call that must be placed, restarted when its process or node
dies, and resumed from its own checkpoint; `max_retries` and placement groups give exactly that.
Ray Tune would lay its own trial and checkpoint directories over rundir.py's, and job submission
places drivers, not runs (use it to submit the sweep itself: `ray job submit -- musketeers sweep ...`).

Placement: a run asks for `resources` (num_gpus auto: one GPU when the cluster has any; `custom`:
Ray custom resources, e.g. a node type). Its experts (team.backend ray) are actors with the team
file's num_cpus / num_gpus / resources. With team.placement `together` they share one placement-group
bundle with the policy on one node, the experts' num_gpus being fractions of the run's GPU (as on one
machine); with `apart` they go wherever Ray finds room, other nodes included, and their pooled states
come back through Ray's object store. Ray queues what does not fit yet: N GPU nodes run N runs at once.

Guarantees: rerunning skips finished runs (a DONE marker or a complete final/) and evaluates finished
runs not evaluated yet; Ray retries a run whose process or node died, or that was preempted (SIGTERM:
it saves its step first, musketeers/interruptions.py), up to max_retries, and the run resumes from its
last complete checkpoint (`train(resume=...)`), or restarts when it had none; a run
whose stored config differs from what the sweep file now resolves to is refused. Every node reads and
writes output_dir, so on a cluster it must be shared storage (NFS or a cluster file system; one
machine trivially is). Each run logs to <output_dir>/logs/<run>.log and records each attempt (node,
pid, GPUs, the step it resumed from) in logs/<run>.attempts.jsonl. While it runs, the sweep shows a
table (queued / running on which node / finished / failed, step, reward) and ends with a summary.
With team.cache_dir set, every expert state the runs read is computed once before they start: one
Ray task per task x team (x seed for random poolings). What a run directory holds: rundir.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from musketeers.config import load_run_config
from musketeers.data import check_split
from musketeers.errors import MusketeersError
from musketeers.methods import METHODS
from musketeers.rundir import (CONFIG_FILE, SWEEP_FILE, attempts_path, checkpoint_step, eval_path,
                               final_or_last_checkpoint, is_finished, is_run_dir, last_checkpoint, log_path, mark_done,
                               read_config, read_json, run_name)
from musketeers.sweep_table import Display, RunStatus

BLOCK_KEYS = ("tasks", "methods", "teams", "seeds", "overrides", "task_overrides", "vary")
TOP_KEYS = (*BLOCK_KEYS, "output_dir", "grid", "eval", "resources", "max_retries")
EVAL_KEYS = ("split", "limit", "batch_size")
RESOURCE_KEYS = ("num_cpus", "num_gpus", "custom")
DEFAULT_RESOURCES = {"num_cpus": 1.0, "num_gpus": "auto", "custom": {}}
DEFAULT_RETRIES = 3
POLL_S = 2.0


class SweepError(MusketeersError, ValueError):
    """A bad sweep file or argument, or a run no node of the cluster can hold."""


@dataclass
class Job:
    name: str
    run_dir: Path
    task: str
    overrides: list[str]
    config: dict = field(repr=False, default_factory=dict)  # the resolved config, to compare with a stored one


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
        jobs.append(Job(name, out / name, str(task), overrides, cfg.to_dict()))
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


# ----------------------------------------------------------------------------- run state on disk


def eval_done(run_dir: Path, eval_opts: dict | None) -> bool:
    if eval_opts is None:
        return True
    from musketeers.evaluate import default_split

    checkpoint = final_or_last_checkpoint(run_dir)
    split = eval_opts.get("split") or default_split(read_config(run_dir))
    return checkpoint is not None and read_json(eval_path(checkpoint, split)) is not None  # a torn one: evaluate again


def state(job: Job, eval_opts: dict | None) -> str:
    """new | finished | evaluate | resume | restart | conflict."""
    d = job.run_dir
    if not d.exists():
        return "new"
    if is_run_dir(d) and read_config(d).to_dict() != job.config:
        return "conflict"
    if is_finished(d):
        return "finished" if eval_done(d, eval_opts) else "evaluate"
    return "resume" if last_checkpoint(d) is not None else "restart"


def run_child(run_dir: Path, task: str, overrides: list[str], eval_opts: dict | None) -> None:
    """Train (fresh, resumed or restarted) unless finished, mark it DONE, then evaluate if asked."""
    from musketeers.train import train

    if not is_finished(run_dir):
        if last_checkpoint(run_dir) is not None:
            train(resume=run_dir)
        else:
            if run_dir.exists():  # killed before its first checkpoint: nothing to resume
                shutil.rmtree(run_dir)
            train(load_run_config(task, overrides), run_dir=run_dir)
        mark_done(run_dir)
    if not eval_done(run_dir, eval_opts):
        from musketeers.evaluate import evaluate, format_result

        result = evaluate(run_dir, split=eval_opts.get("split"), limit=eval_opts.get("limit"),
                          batch_size=eval_opts.get("batch_size") or 16, progress=False)
        print(format_result(result), flush=True)


# ----------------------------------------------------------------------------- one run, on whichever node Ray picks


@contextmanager
def output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2) to `path`, appended, then back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "a") as log:
            os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
            yield
            sys.stdout.flush(), sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])


def record_attempt(run_dir: Path, sweep_id: str) -> dict:
    """Append this attempt (node, process, GPUs, the step it resumes from) to the run's own record."""
    import ray

    ctx = ray.get_runtime_context()
    checkpoint = last_checkpoint(run_dir) if run_dir.exists() and not is_finished(run_dir) else None
    row = {"sweep": sweep_id, "node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
           "hostname": socket.gethostname(), "pid": os.getpid(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "resumed_from": checkpoint_step(checkpoint) if checkpoint else None, "started": time.time()}
    path = attempts_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def run_on_node(run_dir: str, task: str, overrides: list[str], eval_opts: dict | None, sweep_id: str,
                threads: int) -> dict:
    """The body of a run's Ray task: record the attempt, then train / resume / evaluate into its log. A run
    preempted by SIGTERM saves its step and raises Preempted, which Ray retries (run_all): it resumes."""
    import torch

    from musketeers.interruptions import RunStopped

    run_dir = Path(run_dir)
    attempt = record_attempt(run_dir, sweep_id)
    torch.set_num_threads(threads)
    with output_to(log_path(run_dir)):
        print(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {attempt['hostname']} node {attempt['node_id'][:8]} "
              f"pid {attempt['pid']} gpus={attempt['gpus']} resumed_from={attempt['resumed_from']}", flush=True)
        try:
            run_child(run_dir, task, overrides, eval_opts)
        except RunStopped as stopped:  # its one line, as `musketeers train` prints it
            print(f"musketeers: {stopped}", flush=True)
            raise
    return attempt


def precompute_group(task: str, overrides: list[str]) -> dict:
    """The body of a precompute task: every pooled state of one task x team into team.cache_dir."""
    from musketeers.conditioning import precompute_states

    stats = precompute_states(load_run_config(task, overrides), progress=False)
    return {"models_loaded": stats["models_loaded"]}


# ----------------------------------------------------------------------------- what a run asks of Ray


def _ray_experts(cfg: dict) -> list[dict]:
    """The experts a run starts as Ray actors (none for `single` or an in-process team)."""
    team = cfg["team"]
    return team["experts"] if METHODS[cfg["method"]].experts and team["backend"] == "ray" else []


def run_demand(job: Job, resources: dict, cluster_gpus: float) -> tuple[dict, dict | None]:
    """(the run task's Ray resource options, its placement-group bundle or None when its experts go apart)."""
    gpus = resources["num_gpus"] if resources["num_gpus"] != "auto" else float(cluster_gpus > 0)
    task = {"num_cpus": resources["num_cpus"], "num_gpus": gpus, "resources": dict(resources["custom"])}
    experts = _ray_experts(job.config)
    if not experts or job.config["team"]["placement"] == "apart":
        return task, None
    expert_gpus = sum(e["num_gpus"] for e in experts)
    if gpus and gpus <= expert_gpus:
        raise SweepError(f"{job.name}: its experts ask for {expert_gpus:g} GPU of the run's {gpus:g} "
                         f"(team.placement together); lower their num_gpus or raise resources.num_gpus")
    bundle = {"CPU": cpu_demand(job, resources), "GPU": max(gpus, expert_gpus)}
    for extra in (task["resources"], *(e["resources"] for e in experts)):
        for key, amount in extra.items():
            bundle[key] = bundle.get(key, 0.0) + amount
    task.update(num_gpus=gpus - expert_gpus if gpus else 0.0, resources={})  # the rest of the bundle is the experts'
    return task, {k: v for k, v in bundle.items() if v > 0}


def cpu_demand(job: Job, resources: dict) -> float:
    """CPUs one run holds at once (policy and experts): a local Ray must have at least this many."""
    return resources["num_cpus"] + sum(e["num_cpus"] for e in _ray_experts(job.config))


def check_fits(jobs: list[Job], demands: dict[str, tuple[dict, dict | None]], nodes: list[dict]) -> None:
    """Fail now, not wait forever, when no node of the cluster can hold a run (or one of its experts)."""
    def fits(need: dict) -> bool:
        return any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in need.items() if v) for node in nodes)

    for job in jobs:
        task, bundle = demands[job.name]
        need = bundle or {"CPU": task["num_cpus"], "GPU": task["num_gpus"], **task["resources"]}
        wants = [("the run", need)] + ([] if bundle else [
            (f"expert {e['name']!r}", {"CPU": e["num_cpus"], "GPU": e["num_gpus"], **e["resources"]})
            for e in _ray_experts(job.config)])
        for who, want in wants:
            if not fits(want):
                have = "; ".join(", ".join(f"{k} {v:g}" for k, v in sorted(n.items()) if not k.startswith("node:")
                                           and k not in ("memory", "object_store_memory")) for n in nodes)
                raise SweepError(f"{job.name}: {who} asks for {want} and no node of the Ray cluster has that "
                                 f"(nodes: {have or 'none'}); change resources in the sweep file or the team file")


# ----------------------------------------------------------------------------- Ray


def connect(address: str | None, jobs: list[Job], resources: dict) -> bool:
    """Join the cluster at `address`, or start a local Ray (unless one is connected). True: we started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as e:  # noqa: BLE001 - ConnectionError, ValueError, ... from Ray: one line for the user
            text = " ".join(str(e).split())[:200]
            raise SweepError(f"--address {address!r}: no Ray cluster to join there ({type(e).__name__}: {text}); "
                             "start one with `ray start --head`, or leave --address out for a local Ray") from None
        return True
    import musketeers
    from experts.pool import init_ray

    code = str(Path(musketeers.__file__).resolve().parent.parent)  # the runs import the code this sweep runs
    path = os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH")) if p)
    return init_ray(max(cpu_demand(j, resources) for j in jobs), env_vars={"PYTHONPATH": path})


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """host:port (or ray://host:port) answers a TCP connection: Ray itself retries a wrong one for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return  # `auto` (or a form Ray reads itself): ray.init says at once when there is none
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise SweepError(f"--address {address!r}: nothing answers at {host}:{port} ({e.strerror or e}); start a "
                         "cluster with `ray start --head`, or leave --address out for a local Ray") from None


def _place(bundle: dict | None):
    """A one-bundle placement group on one node, its scheduling strategy for the run task (None: no group)."""
    if bundle is None:
        return None, None
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = placement_group([bundle], strategy="STRICT_PACK")
    # the expert actors the run starts land in the same bundle
    return group, PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0,
                                                   placement_group_capture_child_tasks=True)


def precompute(jobs: list[Job]) -> None:
    """Every pooled state the runs will read, computed once before they start, one Ray task per cache."""
    import ray

    groups = list(precompute_groups(jobs).values())
    remote = ray.remote(precompute_group)
    refs = []
    for job in groups:
        cfg = job.config
        cpus = 0.0 if cfg["team"]["backend"] == "ray" else 1.0  # Ray experts are actors with their own CPUs
        print(f"[sweep] expert states of {cfg['task']['name']} x {cfg['team']['name']} into {cfg['team']['cache_dir']}",
              flush=True)
        refs.append(remote.options(num_cpus=cpus, max_retries=DEFAULT_RETRIES).remote(job.task, job.overrides))
    for job, ref in zip(groups, refs):
        loaded = ray.get(ref)["models_loaded"]
        print(f"[sweep] expert states of {job.config['task']['name']} ready ({loaded} expert model(s) loaded)", flush=True)


def precompute_groups(jobs: list[Job]) -> dict[str, Job]:
    """One run per expert-state cache the runs will read: runs of every method and seed on a task
    share one (the seed counts only for random poolings, as in the cache key)."""
    from experts.pooling import uses_seed

    groups = {}
    for job in jobs:
        cfg = job.config
        if not cfg["team"]["cache_dir"] or not METHODS[cfg["method"]].experts:
            continue
        seed = cfg["seed"] if uses_seed(cfg["team"]["pooling"]) else None
        groups.setdefault(json.dumps([cfg["task"], cfg["team"], seed], sort_keys=True), job)
    return groups


def _failure(error: Exception, retries: int) -> str:
    import ray

    if isinstance(error, ray.exceptions.RayTaskError):  # the run raised: its log has the traceback
        cause = error.cause if getattr(error, "cause", None) is not None else error
        lines = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {lines[-1] if lines else ''}"
    return f"its process or node died {retries + 1} time(s) ({type(error).__name__})"


def _finish(status: RunStatus, ref, retries: int) -> None:
    import ray

    try:
        ray.get(ref)
        status.state = "finished"
    except Exception as error:  # noqa: BLE001 - a Ray error or the run's own: it ends that run only
        status.state, status.error = "failed", _failure(error, retries)
    status.seconds = time.time() - status.started if status.started else None
    status.refresh_metrics()


def run_all(todo: list[Job], statuses: dict[str, RunStatus], demands: dict, eval_opts: dict | None, retries: int,
            sweep_id: str) -> None:
    """Submit every run as a Ray task and follow them to the end, showing the live table."""
    import ray

    from ray.util.placement_group import remove_placement_group

    from musketeers.interruptions import Preempted

    remote, pending, groups = ray.remote(run_on_node), {}, {}
    for job in todo:
        task, bundle = demands[job.name]
        group, strategy = _place(bundle)
        threads = max(1, int(task["num_cpus"]))
        # retried: a dead process or node, and a run preempted after saving its step (SIGTERM); not: the run's errors
        options = {**task, "max_retries": retries, "retry_exceptions": [Preempted],
                   "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads)}}}
        if strategy is not None:
            options["scheduling_strategy"] = strategy
        ref = remote.options(**options).remote(str(job.run_dir), job.task, job.overrides, eval_opts, sweep_id, threads)
        pending[ref] = job.name
        if group is not None:
            groups[ref] = group
    display, shown = Display(), list(statuses.values())
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            for status in shown:
                status.refresh(sweep_id)
            for ref in ready:
                _finish(statuses[pending.pop(ref)], ref, retries)
                if ref in groups:  # its bundle is free for the runs still queued
                    remove_placement_group(groups.pop(ref))
            display.show(shown)
    except BaseException:  # Ctrl-C or a kill of the sweep: stop its runs too (rerun the sweep to resume them)
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        for group in groups.values():
            remove_placement_group(group)


def sweep(path: Path, address: str | None = None, dry_run: bool = False) -> dict[str, str]:
    """Plan, print and run a sweep; returns each run's outcome (its state on disk for runs not started)."""
    data = read_sweep(path)
    eval_opts, resources = data.get("eval"), data["resources"]
    jobs = plan(data, str(path))
    states = {job.name: state(job, eval_opts) for job in jobs}
    for job in jobs:
        print(f"[sweep] {states[job.name]:>9}  {job.run_dir}")
    counts = {s: list(states.values()).count(s) for s in dict.fromkeys(states.values())}
    print(f"[sweep] {len(jobs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()), flush=True)
    todo = [j for j in jobs if states[j.name] not in ("finished", "conflict")]
    conflicts = [j.name for j in jobs if states[j.name] == "conflict"]
    if conflicts:
        print(f"[sweep] not touched ({CONFIG_FILE} differs from the sweep file; move or delete them): {', '.join(conflicts)}")
    if dry_run or not todo:
        return states
    import ray

    started = connect(address, todo, resources)
    try:
        gpus = ray.cluster_resources().get("GPU", 0.0)
        demands = {job.name: run_demand(job, resources, gpus) for job in todo}
        check_fits(todo, demands, [n["Resources"] for n in ray.nodes() if n["Alive"]])
        out = Path(data.get("output_dir", "runs/sweep"))
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / SWEEP_FILE)
        begin, sweep_id = time.perf_counter(), uuid.uuid4().hex[:12]
        precompute(todo)
        names = {j.name for j in todo}
        statuses = {j.name: RunStatus(j, state="queued" if j.name in names else "skipped") for j in jobs
                    if states[j.name] != "conflict"}
        run_all(todo, statuses, demands, eval_opts, data["max_retries"], sweep_id)
    finally:
        if started:
            ray.shutdown()
    failed = [s for s in statuses.values() if s.state == "failed"]
    for s in failed:
        print(f"[sweep] FAILED {s.job.name}: {s.error}; log: {log_path(s.job.run_dir)}", flush=True)
    print(f"[sweep] {len(todo)} run(s) in {time.perf_counter() - begin:.0f} s; skipped {len(jobs) - len(todo)}; "
          f"failed {len(failed)}", flush=True)
    return {**states, **{s.job.name: "ok" if s.state == "finished" else f"failed: {s.error}"
                         for s in statuses.values() if s.job.name in names}}


# ----------------------------------------------------------------------------- command line


def cmd_sweep(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` stops the runs too, as Ctrl-C does
    outcome = sweep(args.file, args.address, args.dry_run)
    if any(v.startswith("failed") for v in outcome.values()):
        sys.exit(1)


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sweep", help="run a grid of GRPO runs as Ray tasks (configs/sweeps/*.yaml); rerun to resume",
                              description=__doc__.split("\n")[0])
    p.add_argument("file", type=Path, help="a sweep YAML (configs/sweeps/)")
    p.add_argument("--address", help="a Ray cluster to run on: auto (the one `ray start` began here) or "
                                     "ray://host:port; default: a Ray started for this sweep on this machine")
    p.add_argument("--dry-run", action="store_true", help="print the runs and what would happen to each, run nothing")
    p.set_defaults(func=cmd_sweep)
    return p
