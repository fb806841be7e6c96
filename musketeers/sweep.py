"""Run a grid of GRPO runs (tasks x methods x teams x seeds) from one YAML file; rerun it to resume.

    python launch/sweep.py configs/sweeps/table1.yaml [--dry-run] [--gpus N]

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

Each run is a subprocess (a crash ends that run only; it logs to <output_dir>/logs/), pinned to one
GPU with CUDA_VISIBLE_DEVICES, one run per GPU at a time; without GPUs, one run at a time. Rerunning
the sweep skips finished runs (a DONE marker, or a complete final/), resumes runs killed after a
checkpoint (`train(resume=...)`), restarts runs killed before their first checkpoint, and refuses to
touch a run whose stored config differs from what the sweep file now resolves to. What a run
directory holds and how it is named: musketeers/rundir.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from musketeers.config import load_run_config  # noqa: E402
from musketeers.errors import MusketeersError  # noqa: E402
from musketeers.rundir import (CONFIG_FILE, SWEEP_FILE, eval_path, final_or_last_checkpoint, is_finished,  # noqa: E402
                               is_run_dir, last_checkpoint, log_path, mark_done, read_config, run_name)

BLOCK_KEYS = ("tasks", "methods", "teams", "seeds", "overrides", "task_overrides", "vary")
TOP_KEYS = (*BLOCK_KEYS, "output_dir", "grid", "eval")
EVAL_KEYS = ("split", "limit", "batch_size")
POLL_S = 2.0


class SweepError(MusketeersError, ValueError):
    """A bad sweep file or argument."""


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


def read_sweep(path: Path) -> dict:
    """The sweep file as a mapping, its keys checked."""
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected a mapping at the top level")
    _check_keys(data, TOP_KEYS, str(path))
    for i, block in enumerate(data.get("grid") or []):
        _check_keys(block, BLOCK_KEYS, f"{path}: grid[{i}]")
    _check_keys(data.get("eval") or {}, EVAL_KEYS, f"{path}: eval")
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
        suffix = "".join(f"-{k.split('.')[-1]}{v}" for k, v in variant)
        name = run_name(cfg, suffix)
        jobs.append(Job(name, out / name, str(task), overrides, cfg.to_dict()))
    return jobs


def plan(sweep: dict, source: str) -> list[Job]:
    """Every run of the sweep, once each (`single` runs once whatever the teams), configs validated."""
    out = Path(sweep.get("output_dir", "runs/sweep"))
    top = {k: v for k, v in sweep.items() if k in BLOCK_KEYS}
    blocks = [{**top, **b} for b in sweep.get("grid") or [{}]]
    jobs = {}
    for i, block in enumerate(blocks):
        for job in _block_jobs(block, out, f"{source}: grid[{i}]" if sweep.get("grid") else source):
            jobs.setdefault(job.name, job)
    return list(jobs.values())


# ----------------------------------------------------------------------------- run state


def eval_done(run_dir: Path, eval_opts: dict | None) -> bool:
    if eval_opts is None:
        return True
    from musketeers.evaluate import default_split

    checkpoint = final_or_last_checkpoint(run_dir)
    split = eval_opts.get("split") or default_split(read_config(run_dir))
    return checkpoint is not None and eval_path(checkpoint, split).is_file()


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


# ----------------------------------------------------------------------------- one run (the child process)


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


def child_command(job: Job, eval_opts: dict | None) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", str(job.run_dir), job.task,
            "--eval", json.dumps(eval_opts), "--", *job.overrides]


def launch(job: Job, gpu: str | None, eval_opts: dict | None):
    """Start a run's child process (its output appended to its log)."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log = log_path(job.run_dir)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} gpu={gpu} {' '.join(child_command(job, eval_opts))}\n")
        f.flush()
        return subprocess.Popen(child_command(job, eval_opts), env=env, stdout=f, stderr=subprocess.STDOUT)


# ----------------------------------------------------------------------------- scheduling


def gpu_slots(requested: int | None) -> list[str | None]:
    """One slot per GPU (its id for CUDA_VISIBLE_DEVICES), or one CPU slot [None]."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [g for g in visible.split(",") if g.strip()]
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    if requested is not None:
        ids = ids[:requested]
    return ids or [None]


def run_jobs(jobs: list[Job], slots: list[str | None], eval_opts: dict | None, start=launch) -> dict[str, int]:
    """Run jobs, one per slot at a time; returns each job's exit code."""
    pending, running, codes, begun = deque(jobs), {}, {}, {}
    try:
        while pending or running:
            for slot in slots:
                if slot not in running and pending:
                    job = pending.popleft()
                    print(f"[sweep] start {job.name}" + (f" on GPU {slot}" if slot is not None else ""), flush=True)
                    running[slot], begun[job.name] = (job, start(job, slot, eval_opts)), time.perf_counter()
            for slot, (job, proc) in list(running.items()):
                if proc.poll() is not None:
                    codes[job.name] = proc.returncode
                    del running[slot]
                    print(f"[sweep] {'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'} {job.name} "
                          f"in {time.perf_counter() - begun[job.name]:.0f} s", flush=True)
            if running:
                time.sleep(POLL_S)
    except BaseException:  # Ctrl-C or a kill of the sweep: stop its runs too (rerun the sweep to resume them)
        for job, proc in running.values():
            proc.terminate()
            proc.wait()
        raise
    return codes


def precompute_groups(jobs: list[Job]) -> dict[str, Job]:
    """One run per expert-state cache the runs will read: runs of every method and seed on a task
    share one (the seed counts only for random poolings, as in the cache key)."""
    from experts.pooling import uses_seed
    from musketeers.methods import METHODS

    groups = {}
    for job in jobs:
        cfg = job.config
        if not cfg["team"]["cache_dir"] or not METHODS[cfg["method"]].experts:
            continue
        seed = cfg["seed"] if uses_seed(cfg["team"]["pooling"]) else None
        groups.setdefault(json.dumps([cfg["task"], cfg["team"], seed], sort_keys=True), job)
    return groups


def precompute(jobs: list[Job]) -> None:
    """Every pooled state the runs will read, computed once before they start (`experts precompute`)."""
    from musketeers.conditioning import precompute_states

    for job in precompute_groups(jobs).values():
        cfg = load_run_config(job.task, job.overrides)
        print(f"[sweep] expert states of {cfg.task.name} x {cfg.team.name} into {cfg.team.cache_dir}", flush=True)
        stats = precompute_states(cfg)
        print(f"[sweep] expert states ready ({stats['models_loaded']} expert model(s) loaded)", flush=True)


def sweep(path: Path, dry_run: bool = False, gpus: int | None = None, start=launch) -> dict[str, str]:
    """Plan, print and run a sweep; returns each run's outcome."""
    data = read_sweep(path)
    eval_opts = data.get("eval")
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
    if dry_run:
        return states
    out = Path(data.get("output_dir", "runs/sweep"))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, out / SWEEP_FILE)
    start_time = time.perf_counter()
    precompute(todo)
    codes = run_jobs(todo, gpu_slots(gpus), eval_opts, start)
    outcome = {**states, **{name: "ok" if rc == 0 else f"failed (exit {rc})" for name, rc in codes.items()}}
    print(f"[sweep] {len(todo)} run(s) in {time.perf_counter() - start_time:.0f} s; skipped {len(jobs) - len(todo)}; "
          f"failed {sum(rc != 0 for rc in codes.values())}", flush=True)
    return outcome


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep", nargs="?", type=Path, help="a sweep YAML (configs/sweeps/)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and what would happen to each, run nothing")
    p.add_argument("--gpus", type=int, help="use at most N GPUs (default: all visible)")
    p.add_argument("--child", nargs=2, metavar=("RUN_DIR", "TASK"), help=argparse.SUPPRESS)
    p.add_argument("--eval", default="null", help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []  # the child's key=value overrides
    args = p.parse_args(argv[: len(argv) - len(overrides) - (1 if "--" in argv else 0)])
    try:
        if args.child:
            run_child(Path(args.child[0]), args.child[1], overrides, json.loads(args.eval))
            return
        if args.sweep is None:
            p.error("give a sweep file (configs/sweeps/*.yaml)")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` stops the runs too, as Ctrl-C does
        outcome = sweep(args.sweep, args.dry_run, args.gpus)
    except MusketeersError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        sys.exit(2)
    if any(v.startswith("failed") for v in outcome.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
