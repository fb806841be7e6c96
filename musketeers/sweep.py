"""`musketeers sweep`: a grid of GRPO runs (tasks x methods x teams x seeds) from one YAML file, each run
a Ray task on this machine or on a cluster; rerun it to resume.

    musketeers sweep configs/sweeps/table1.yaml [--address auto|ray://host:port] [--dry-run]

Sweep file (every key optional except tasks, methods and seeds):

    output_dir: runs/paper               # the store: runs go to <output_dir>/<task>-<method>-<team>-seed<k>
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
A Ray this sweep starts on this machine holds at most cores // num_cpus runs at once, whatever logical CPUs
it declares for the experts (RUN_SLOT in sweep_resources.py).

Guarantees: no run is trained twice in one output_dir (the store; several sweeps may share one): a
run whose config matches a run already there (its identity: run_store.py) is served by that run,
whatever its name; rerunning skips finished runs (a DONE marker or a complete final/) and evaluates
finished runs not evaluated yet, or evaluated on fewer items than `eval` asks; Ray retries a run whose
process or node died, or that was preempted (SIGTERM: it saves its step first, musketeers/interruptions.py),
up to max_retries, and the run resumes from its last complete checkpoint
(`train(resume=...)`), or restarts when it had none; a run whose name holds a run of another config
(and that no run of the store serves) is refused; a run another sweep is training now is left to it.
The sweep records which run dir serves each of its runs in <output_dir>/sweeps/<file name>/runs.json,
which `musketeers report <output_dir>/sweeps/<file name>` reads. Every node reads and writes
output_dir, so on a cluster it must be shared storage (NFS or a cluster file system; one machine
trivially is). Each run logs to <output_dir>/logs/<run>.log and records each attempt (node,
pid, GPUs, the step it resumed from) in logs/<run>.attempts.jsonl. While it runs, the sweep shows a
table (queued / running on which node / finished / failed, step, reward) and ends with a summary.
With team.cache_dir set, every expert state the runs read is computed once before they start: one
Ray task per task x team (x seed for random poolings). What a run directory holds: rundir.py; reading
the sweep file and each run's state: sweep_plan.py; what a run asks of Ray: sweep_resources.py; the
store shared by sweeps: run_store.py. This module may import everything below it; only the CLI imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from musketeers.config import load_run_config
from musketeers.method_traits import METHOD_TRAITS
from musketeers.rundir import attempts_path, checkpoint_step, is_finished, last_checkpoint, log_path, mark_done
from musketeers.run_store import RunBusy, hold, release_all, serving_dir, store_runs, write_record
from musketeers.sweep_plan import DEFAULT_RETRIES, Job, SweepError, eval_done, plan, plan_states, print_plan, read_sweep
from musketeers.sweep_resources import RUN_SLOT, check_fits, cpu_demand, local_run_slots, run_demand, with_run_slot
from musketeers.sweep_table import Display, RunStatus

POLL_S = 2.0


# ----------------------------------------------------------------------------- one run


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


def current_dir(planned: Path, identity: str) -> Path:
    """The run dir serving `identity` now: another sweep may have started one since this sweep planned."""
    served = serving_dir(store_runs(planned.parent).get(identity, []), planned.parent, [planned.name])
    if served is None:
        raise SweepError(f"{planned} holds a run of another config now (another sweep started it); move it and rerun")
    return served


def run_on_node(run_dir: str, identity: str, task: str, overrides: list[str], eval_opts: dict | None, sweep_id: str,
                threads: int) -> dict:
    """The body of a run's Ray task: hold the run's lock, find its dir, record the attempt, then train / resume /
    evaluate into its log. Returns the attempt and the run dir, or {"busy": who} when another sweep holds it. A run
    preempted by SIGTERM saves its step and raises Preempted, which Ray retries (run_all): it resumes."""
    import torch

    from musketeers.interruptions import RunStopped

    planned = Path(run_dir)
    try:
        with hold(planned.parent, identity, sweep_id):
            run_dir = current_dir(planned, identity)
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
    except RunBusy as busy:
        return {"busy": str(busy)}
    return {**attempt, "run_dir": str(run_dir)}


def precompute_group(task: str, overrides: list[str]) -> dict:
    """The body of a precompute task: every pooled state of one task x team into team.cache_dir."""
    from musketeers.conditioning import precompute_states

    stats = precompute_states(load_run_config(task, overrides), progress=False)
    return {"models_loaded": stats["models_loaded"]}


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
    slots = {RUN_SLOT: local_run_slots(resources["num_cpus"], os.cpu_count())}
    return init_ray(max(cpu_demand(j, resources) for j in jobs), env_vars={"PYTHONPATH": path}, resources=slots)


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
        if not cfg["team"]["cache_dir"] or not METHOD_TRAITS[cfg["method"]].experts:
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


def _finish(statuses: list[RunStatus], ref, retries: int) -> None:
    """The outcome of one run's task for every job it serves (a task may have found its run in another dir)."""
    import ray

    try:
        result = ray.get(ref)
        state, error = ("skipped", f"busy: {result['busy']}") if "busy" in result else ("finished", "")
    except Exception as failure:  # noqa: BLE001 - a Ray error or the run's own: it ends that run only
        state, error, result = "failed", _failure(failure, retries), {}
    for status in statuses:
        status.state, status.error = state, error
        if result.get("run_dir"):
            status.job.run_dir = Path(result["run_dir"])
        status.seconds = time.time() - status.started if status.started else None
        status.refresh_metrics()


def run_all(todo: list[Job], statuses: dict[str, RunStatus], demands: dict, eval_opts: dict | None, retries: int,
            sweep_id: str) -> None:
    """Submit one Ray task per run to train (jobs of one identity share it) and follow them to the end, showing
    the live table."""
    import ray

    from ray.util.placement_group import remove_placement_group

    from musketeers.interruptions import Preempted

    remote, pending, groups = ray.remote(run_on_node), {}, {}
    served = defaultdict(list)
    for status in statuses.values():
        served[status.job.identity].append(status)
    for job in todo:
        task, bundle = demands[job.name]
        group, strategy = _place(bundle)
        threads = max(1, int(task["num_cpus"]))
        # retried: a dead process or node, and a run preempted after saving its step (SIGTERM); not: the run's errors
        options = {**task, "max_retries": retries, "retry_exceptions": [Preempted],
                   "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads)}}}
        if strategy is not None:
            options["scheduling_strategy"] = strategy
        ref = remote.options(**options).remote(str(job.run_dir), job.identity, job.task, job.overrides, eval_opts,
                                               sweep_id, threads)
        pending[ref] = served[job.identity]
        if group is not None:
            groups[ref] = group
    display, shown = Display(), list(statuses.values())
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            for status in shown:
                status.refresh(sweep_id)
            for ref in ready:
                _finish(pending.pop(ref), ref, retries)
                if ref in groups:  # its bundle is free for the runs still queued
                    remove_placement_group(groups.pop(ref))
            display.show(shown)
    except BaseException:  # Ctrl-C or a kill of the sweep: stop its runs too (rerun the sweep to resume them)
        for ref in pending:
            ray.cancel(ref, force=True)
        release_all(todo[0].run_dir.parent, sweep_id)  # a killed run leaves its lock behind
        raise
    finally:
        for group in groups.values():
            remove_placement_group(group)


def sweep(path: Path, address: str | None = None, dry_run: bool = False) -> dict[str, str]:
    """Plan, print and run a sweep; returns each run's outcome (its state on disk for runs not started)."""
    data = read_sweep(path)
    eval_opts, resources, store = data.get("eval"), data["resources"], Path(data.get("output_dir", "runs/sweep"))
    jobs = plan(data, str(path))
    states = plan_states(jobs, store, eval_opts)
    print_plan(jobs, states, store, path.stem)
    first = {}  # one task per run: jobs of one identity share it
    for job in jobs:
        first.setdefault(job.identity, job)
    todo = [job for job in first.values() if states[job.name] in ("new", "evaluate", "resume", "restart")]
    serving = {j.name: j.run_dir for j in jobs if states[j.name] != "conflict"}
    if dry_run:
        return states
    write_record(store, path, serving)
    if not todo:
        return states
    import ray

    started = connect(address, todo, resources)
    try:
        cluster = ray.cluster_resources()
        gpus, resources = cluster.get("GPU", 0.0), with_run_slot(resources, cluster)
        demands = {job.name: run_demand(job, resources, gpus) for job in todo}
        check_fits(todo, demands, [n["Resources"] for n in ray.nodes() if n["Alive"]])
        begin, sweep_id = time.perf_counter(), uuid.uuid4().hex[:12]
        precompute(todo)
        doing = {j.identity for j in todo}
        statuses = {j.name: RunStatus(j, state="queued" if j.identity in doing else "skipped") for j in jobs
                    if states[j.name] != "conflict"}
        run_all(todo, statuses, demands, eval_opts, data["max_retries"], sweep_id)
    finally:
        if started:
            ray.shutdown()
    write_record(store, path, {name: status.job.run_dir for name, status in statuses.items()})
    ran = [s for s in statuses.values() if s.job.identity in doing]
    for s in ran:
        if s.state != "finished":
            print(f"[sweep] {'FAILED' if s.state == 'failed' else 'not run'} {s.job.name}: {s.error}; "
                  f"log: {log_path(s.job.run_dir)}", flush=True)
    print(f"[sweep] {len(todo)} run(s) in {time.perf_counter() - begin:.0f} s; skipped {len(jobs) - len(ran)}; "
          f"failed {sum(s.state == 'failed' for s in ran)}", flush=True)
    return {**states, **{s.job.name: _outcome(s) for s in ran}}


def _outcome(status: RunStatus) -> str:
    """ok | busy: <who holds it> | failed: <why>."""
    return "ok" if status.state == "finished" else status.error if status.state == "skipped" else f"failed: {status.error}"


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
