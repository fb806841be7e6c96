"""A run store: one output_dir that several sweeps share, where no run is trained twice.

A run's identity is its resolved config minus the keys that change where and how it is stored or
scheduled, not what it trains or measures (`NOT_IDENTITY`):

    output_dir             where the store is
    training.report_to     which trackers mirror metrics.jsonl (TensorBoard, wandb)
    training.save_steps    how often a checkpoint is written (saving draws no random numbers)
    team.cache_dir         where pooled states are cached (a cache of the same states)
    team.placement, experts' num_cpus / num_gpus / resources   what Ray places where

Everything else stays in: the seed, every training, data, model, reward and logging key (logging
changes what a run measures: metrics rows, held-out accuracy during training, the reward without C).
Keys that only might leave the numbers unchanged (dtypes, devices, team.backend, activation
checkpointing, the generation cache) stay in too: a false "same" would silently report another
run; a false "different" costs one more run. A method without experts (`single`) reads neither the
team nor the adapter, so they are not part of its identity (as `musketeers report` groups it).

Layout a sweep adds to its output_dir (rundir.py has the run directories themselves):

    sweeps/<sweep file name>/sweep.yaml   the sweep file last run here
    sweeps/<sweep file name>/runs.json    {run name in the sweep: the run dir serving it}; what
                                          `musketeers report <output_dir>/sweeps/<name>` reads
    locks/<identity>.lock                 who trains or evaluates that run now (sweep, host, pid);
                                          a heartbeat renews it every HEARTBEAT_S seconds

The run directories are the index: a sweep reads every <output_dir>/*/config.yaml (written
atomically when the run starts), so there is nothing to get out of step with the runs after a crash
or a deleted run. The lock, one per identity, keeps two sweeps (or two launches of one) from
training the same run twice, or into one directory at once: it is created atomically (a hard link of
a complete file, which NFS does atomically too), and a lock whose heartbeat stopped STALE_S seconds
ago is taken over (the nodes' clocks must agree to well within that, as NTP keeps them).

It may import errors, method_traits and rundir; sweep_plan, sweep and runs read the store through it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from musketeers.errors import MusketeersError
from musketeers.method_traits import METHOD_TRAITS
from musketeers.rundir import (SWEEP_FILE, is_finished, is_run_dir, last_checkpoint, checkpoint_step, read_config,
                               write_json_atomic)

NOT_IDENTITY = ("output_dir", "training.report_to", "training.save_steps", "team.cache_dir", "team.placement")
NOT_IDENTITY_EXPERT = ("num_cpus", "num_gpus", "resources")
SWEEPS_DIR = "sweeps"
RECORD_FILE = "runs.json"
LOCKS_DIR = "locks"
HEARTBEAT_S = 15.0
STALE_S = 120.0


# ----------------------------------------------------------------------------- identity


def identity_fields(config: dict) -> dict:
    """The resolved config (RunConfig.to_dict()) without the keys that do not change what the run trains or measures."""
    fields = copy.deepcopy(config)
    for key in NOT_IDENTITY:
        *parents, last = key.split(".")
        node = fields
        for part in parents:
            node = node[part]
        node.pop(last, None)
    for expert in fields["team"]["experts"]:
        for key in NOT_IDENTITY_EXPERT:
            expert.pop(key, None)
    if not METHOD_TRAITS[fields["method"]].experts:  # single: no team, no adapter
        fields.pop("team"), fields.pop("adapter")
    return fields


def run_identity(config: dict) -> str:
    """A short hash of identity_fields: equal for two configs that train and measure the same run."""
    text = json.dumps(identity_fields(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the store's runs


def store_runs(store: Path) -> dict[str, list[Path]]:
    """identity -> the run directories of the store holding a run of it."""
    found: dict[str, list[Path]] = defaultdict(list)
    if not store.is_dir():
        return found
    for child in sorted(store.iterdir()):
        if not is_run_dir(child):
            continue
        try:
            found[run_identity(read_config(child).to_dict())].append(child)
        except MusketeersError:  # a config this version cannot read: not reusable (a sweep naming it refuses it)
            continue
    return found


def _preference(run_dir: Path, names: list[str]) -> tuple:
    """Finished first, then the furthest checkpoint, then started; a run under one of `names` before another."""
    if is_finished(run_dir):
        progress = (0, 0)
    else:
        checkpoint = last_checkpoint(run_dir)
        progress = (1, -checkpoint_step(checkpoint)) if checkpoint is not None else (2, 0)
    return (*progress, run_dir.name not in names, run_dir.name)


def serving_dir(existing: list[Path], store: Path, names: list[str]) -> Path | None:
    """The run dir that serves runs of one identity named `names` in a sweep: the store's most advanced run of
    it, else the first of their own dirs that holds no other run; None when every name holds another run."""
    if existing:
        return min(existing, key=lambda d: _preference(d, names))
    return next((store / n for n in names if not is_run_dir(store / n)), None)


# ----------------------------------------------------------------------------- what a sweep used


def record_dir(store: Path, sweep_file: Path) -> Path:
    return store / SWEEPS_DIR / sweep_file.stem


def write_record(store: Path, sweep_file: Path, serving: dict[str, Path]) -> Path:
    """The sweep file and which run dir serves each of its runs, under sweeps/<name>/ (atomic writes)."""
    folder = record_dir(store, sweep_file)
    folder.mkdir(parents=True, exist_ok=True)
    if sweep_file.resolve() != (folder / SWEEP_FILE).resolve():
        shutil.copyfile(sweep_file, folder / SWEEP_FILE)
    write_json_atomic(folder / RECORD_FILE, {name: run_dir.name for name, run_dir in serving.items()})
    return folder


def recorded_by(store: Path) -> dict[str, list[str]]:
    """run dir name -> the sweeps (file names) whose record names it."""
    users: dict[str, list[str]] = defaultdict(list)
    for record in sorted((store / SWEEPS_DIR).glob(f"*/{RECORD_FILE}")):
        try:
            names = json.loads(record.read_text()).values()
        except ValueError:
            continue
        for name in dict.fromkeys(names):
            users[name].append(record.parent.name)
    return users


def is_record(folder: Path) -> bool:
    return (Path(folder) / RECORD_FILE).is_file()


def recorded_run_dirs(folder: Path) -> list[Path]:
    """The run dirs a sweep's record names that exist (a run not started yet has none), each once."""
    folder = Path(folder)
    store = folder.parent.parent
    names = json.loads((folder / RECORD_FILE).read_text()).values()
    return [store / n for n in dict.fromkeys(names) if is_run_dir(store / n)]


# ----------------------------------------------------------------------------- one process per run


class RunBusy(MusketeersError):
    """Another live process (of another sweep) trains or evaluates this run now."""

    def __init__(self, holder: dict):
        self.holder = holder
        super().__init__(describe_holder(holder))


def describe_holder(holder: dict) -> str:
    return (f"sweep {holder.get('sweep')} holds it (host {holder.get('hostname')}, pid {holder.get('pid')}, "
            f"heartbeat {holder.get('age_s', 0):.0f} s ago)")


def lock_path(store: Path, identity: str) -> Path:
    return store / LOCKS_DIR / f"{identity}.lock"


def lock_holder(store: Path, identity: str, sweep_id: str | None = None) -> dict | None:
    """The live holder of a run's lock (its heartbeat younger than STALE_S), unless it is `sweep_id`: Ray runs
    one attempt of a sweep's task at a time, so a lock of the same sweep is a dead attempt's."""
    path = lock_path(store, identity)
    try:
        age = time.time() - path.stat().st_mtime
        holder = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if age > STALE_S or (sweep_id is not None and holder.get("sweep") == sweep_id):
        return None
    return {**holder, "age_s": age}


def _create(path: Path, holder: dict) -> bool:
    """Create `path` holding `holder`, atomically and only if it does not exist (a hard link of a complete file)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(holder))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _remove_if(path: Path, token: str) -> None:
    """Remove the lock if it is still the one holding `token` (moved aside first, so a fresh lock is never lost)."""
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        if json.loads(aside.read_text()).get("token") != token and not os.path.exists(path):
            os.link(aside, path)  # another's fresh lock: put it back
    except (ValueError, OSError):
        pass
    aside.unlink(missing_ok=True)


def _token(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("token")
    except (FileNotFoundError, ValueError):
        return None


@contextmanager
def hold(store: Path, identity: str, sweep_id: str):
    """Hold the run's lock while the body trains or evaluates it; RunBusy when another sweep holds it."""
    path = lock_path(store, identity)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    mine = {"sweep": sweep_id, "hostname": socket.gethostname(), "pid": os.getpid(), "token": token}
    for _ in range(3):
        if _create(path, mine):
            break
        if (holder := lock_holder(store, identity, sweep_id)) is not None:
            raise RunBusy(holder)
        _remove_if(path, _token(path) or "")  # stale, or a dead attempt of this sweep
    else:
        raise RunBusy({"sweep": "unknown (the lock changed hands while taking it over)"})
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S) and _token(path) == token:
            try:
                os.utime(path)
            except OSError:  # removed since: whoever removed it holds the run now
                return

    heart = threading.Thread(target=beat, daemon=True, name="run-lock-heartbeat")
    heart.start()
    try:
        yield
    finally:
        stop.set()
        heart.join()
        if _token(path) == token:
            _remove_if(path, token)


def release_all(store: Path, sweep_id: str) -> None:
    """Remove the locks `sweep_id` holds (its runs were cancelled: a killed process leaves its lock behind)."""
    for path in (store / LOCKS_DIR).glob("*.lock") if (store / LOCKS_DIR).is_dir() else []:
        try:
            holder = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            continue
        if holder.get("sweep") == sweep_id:
            _remove_if(path, holder.get("token", ""))
