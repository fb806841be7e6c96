"""Reasoning Gym splits, generated once into the cache and identical in every process.

Why a cache and child processes: some Reasoning Gym datasets build items from the iteration order
of sets of strings, which Python's per-process hash seed (PYTHONHASHSEED) changes. Measured on
reasoning-gym 0.1.25 (1,000 items each, PYTHONHASHSEED 3 against 4): polynomial_multiplication
changed 668 questions, isomorphic_strings all 1,000, intermediate_integration 2 of 300 gold answers;
the other 25 datasets of our task files none. So items are generated only by worker interpreters
started with PYTHONHASHSEED=0 (`python -m musketeers.splits`, several in parallel), written once to
the cache with the sha256 of their content, and every process, whatever its own hash seed, reads
that file. This holds for any dataset a task names, not only the ones measured.

Cache layout (root = $MUSKETEERS_CACHE or ~/.cache/musketeers):

    <root>/data/<split>-<key>.jsonl   line 1: header (identity, rows, sha256 of the lines below);
                                      then one row per line (musketeers.data: the row columns)
    <root>/data/.<file>.lock          held by the process that generates the file

The key hashes the split's identity: SPLIT_FORMAT, the reasoning-gym version, the datasets with their
weights and configs, seed, size, and for training the sha256 of the validation file it excludes, so
a training file always matches the validation file beside it. A file whose checksum fails (torn,
garbled) is reported in one warning line and generated again, never read.

It may import config (types only), rundir (atomic writes) and experts.embedded (the cache folder);
data.py reads splits through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from musketeers.config import TaskConfig

log = logging.getLogger(__name__)

SPLIT_FORMAT = 1  # bump whenever the rows written here change: generation, probing, row columns, file layout
VALIDATION_SEED_OFFSET = 10_000_000
MAX_PROBES = 100  # training probes k + r*S for r < MAX_PROBES; S * MAX_PROBES stays below the offset
ITEMS_PER_WORKER = 500  # a worker costs ~3 s to start (imports); fewer items than this share one
CHUNKS_PER_WORKER = 4  # work is handed out in chunks, so a worker that drew slow items does fewer
WORKER_HASH_SEED = "0"


def question_key(question: str) -> str:
    """A question's identity for overlap checks: whitespace-normalised, hashed."""
    return hashlib.sha1(" ".join(question.split()).encode()).hexdigest()


@dataclass
class Split(Sequence):
    """A materialised split: its rows, the file they came from and that file's content hash."""

    rows: list[dict[str, Any]]
    path: Path
    sha256: str
    relocated: int = 0  # training positions whose first candidate was a validation question
    header: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k):
        return self.rows[k]

    def __iter__(self):
        return iter(self.rows)


# ----------------------------------------------------------------------------- identity and files


def _datasets(task: TaskConfig) -> list[list[Any]]:
    return [[d.name, float(d.weight), dict(d.config)] for d in task.datasets]


def _identity(task: TaskConfig, split: str, validation_sha256: str | None) -> dict[str, Any]:
    train = split == "train"
    identity = {"format": SPLIT_FORMAT, "reasoning_gym": md.version("reasoning-gym"), "split": split,
            "datasets": _datasets(task), "seed": task.data_seed + (0 if train else VALIDATION_SEED_OFFSET),
            "size": task.train_size if train else task.validation_size,
            "excluded_validation_sha256": validation_sha256, "max_probes": MAX_PROBES if train else None}
    return json.loads(json.dumps(identity, default=str))  # as the header reads back: lists, not tuples


def _path(identity: dict[str, Any]) -> Path:
    from experts.embedded import cache_dir

    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "data" / f"{identity['split']}-{key}.jsonl"


def _read(path: Path, identity: dict[str, Any], report: bool = True) -> Split | None:
    """The split in `path`, or None when there is none or it is damaged (reported in one line if `report`)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    head, _, body = data.partition(b"\n")
    problem = None
    try:
        header = json.loads(head)
        if header.get("identity") != identity:
            problem = "its header names another split"
        elif hashlib.sha256(body).hexdigest() != header.get("sha256"):
            problem = "checksum mismatch"
        else:
            rows = [json.loads(line) for line in body.splitlines()]
            if len(rows) != header.get("rows"):
                problem = f"{len(rows)} rows, the header says {header.get('rows')}"
    except (ValueError, AttributeError) as e:
        problem = f"unreadable ({type(e).__name__})"
    if problem:
        if report:
            log.warning("data cache file %s is damaged (%s); generating it again", path, problem)
        return None
    return Split(rows, path, header["sha256"], header.get("relocated", 0), header)


def _write(path: Path, identity: dict[str, Any], rows: list[dict[str, Any]], relocated: int) -> Split:
    from musketeers.rundir import write_text_atomic

    body = "".join(json.dumps(row) + "\n" for row in rows).encode()
    sha = hashlib.sha256(body).hexdigest()
    header = {"identity": identity, "rows": len(rows), "sha256": sha, "relocated": relocated,
              "generated_with": {"python": sys.version.split()[0], "sympy": _version("sympy")}}
    write_text_atomic(path, json.dumps(header, sort_keys=True) + "\n" + body.decode())  # temp file + os.replace
    return Split(rows, path, sha, relocated, header)


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "none"


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive fcntl lock beside `path` (none where fcntl is missing: then concurrent processes may
    both generate the file, each writing the same content atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path.parent / f".{path.name}.lock", "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is generating %s", path)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-write
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- materialising


def materialised(task: TaskConfig, split: str) -> Split:
    """The task's Reasoning Gym split ("train" or "validation"), read from the cache, generated into it first
    when missing or damaged. Training never holds a validation question (musketeers.data: the probing)."""
    with _Workers() as workers:
        return _materialised(task, split, workers)


def _materialised(task: TaskConfig, split: str, workers: _Workers) -> Split:
    validation = _materialised(task, "validation", workers) if split == "train" else None
    identity = _identity(task, split, validation.sha256 if validation else None)
    path = _path(identity)
    found = _read(path, identity, report=False)  # without the lock: a damaged file is reported under it
    if found is not None:
        return found
    with _lock(path):
        found = _read(path, identity)  # written by another process while we waited
        if found is not None:
            return found
        excluded = sorted({question_key(r["question"]) for r in validation}) if validation else []
        size = identity["size"]
        log.info("generating the %s split of task %r once (%d items) into %s", split, task.name, size, path)
        job = {"datasets": identity["datasets"], "seed": identity["seed"], "size": size, "excluded": excluded}
        results = workers.generate(job, size, desc=f"generating {task.name or 'task'} {split}")
        return _write(path, identity, [row for row, _ in results], sum(probes > 0 for _, probes in results))


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class _Workers:
    """Generation worker processes (`python -m musketeers.splits`, PYTHONHASHSEED=0), started on first
    use and stopped on exit. Rows come back as JSON lines; a reader thread per worker hands out chunks."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, kind, *exc) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            if kind is not None:  # interrupted or failed: the workers' unfinished chunks are of no use
                proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _start(self, count: int) -> None:
        package_root = str(Path(__file__).resolve().parents[1])  # the workers import this very code
        env = {**os.environ, "PYTHONHASHSEED": WORKER_HASH_SEED, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        while len(self.procs) < count:
            self.procs.append(subprocess.Popen([sys.executable, "-m", "musketeers.splits"], stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, env=env, text=True, bufsize=1))

    def generate(self, job: dict[str, Any], size: int, desc: str) -> list[tuple[dict[str, Any], int]]:
        """(row, probes) for positions 0..size-1 of `job`'s composite."""
        from tqdm import tqdm

        self._start(max(1, min(_cpus(), -(-size // ITEMS_PER_WORKER))))
        step = max(1, -(-size // (len(self.procs) * CHUNKS_PER_WORKER)))
        chunks = [(a, min(a + step, size)) for a in range(0, size, step)]
        results: list[Any] = [None] * size
        errors: list[dict] = []
        lock = threading.Lock()
        with tqdm(total=size, desc=desc, unit="item") as bar:
            def serve(proc: subprocess.Popen) -> None:
                while not errors:
                    with lock:
                        if not chunks:
                            return
                        start, stop = chunks.pop(0)
                    if (error := _run_chunk(proc, {**job, "start": start, "stop": stop}, results, bar, lock)):
                        errors.append(error)

            threads = [threading.Thread(target=serve, args=(p,), daemon=True) for p in self.procs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:
            from musketeers.config import ConfigError

            raise (ConfigError if errors[0].get("user_error") else RuntimeError)(errors[0]["error"])
        return results


def _run_chunk(proc: subprocess.Popen, job: dict[str, Any], results: list, bar, lock: threading.Lock) -> dict | None:
    """Send one chunk to a worker and store its rows; its error reply if it failed."""
    try:
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.flush()
        for line in proc.stdout:
            reply = json.loads(line)
            if "error" in reply:
                return reply
            if "done" in reply:
                return None
            results[reply["k"]] = (reply["row"], reply["probes"])
            with lock:
                bar.update(1)
    except (OSError, ValueError):
        pass
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    return {"error": f"a data generation worker died (exit code {proc.poll()}); its error is printed above"}


# ----------------------------------------------------------------------------- the worker


def _composite(datasets: list[list[Any]], seed: int, size: int):
    from reasoning_gym.composite import CompositeConfig, CompositeDataset, DatasetSpec

    specs = [DatasetSpec(name=name, weight=weight, config=config) for name, weight, config in datasets]
    return CompositeDataset(CompositeConfig(size=size, seed=seed, datasets=specs))


def _row(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "question": item["question"],
        "answer": "" if item["answer"] is None else str(item["answer"]),
        "task": item["metadata"]["source_dataset"],
        "entry": json.dumps(item, default=str),
    }


class ProblemSpaceTooSmall(ValueError):
    """Raised in a worker; the parent raises it as a ConfigError (a user error: one line in the CLI)."""


def generate_item(dataset, k: int, size: int, excluded: set[str]) -> tuple[dict[str, Any], int]:
    """Position k of a split and its probe count r: composite item k + r*size for the first r whose
    question is not excluded (musketeers.data: why the probe sequences of two positions never meet)."""
    for r in range(MAX_PROBES):
        item = dataset[k + r * size]
        if question_key(item["question"]) not in excluded:
            return _row(item), r
    raise ProblemSpaceTooSmall(f"task.validation_size: training position {k}: {MAX_PROBES} candidates all occur "
                               "in validation; the task's problem space is too small for this validation_size")


def _serve() -> int:
    """Worker loop: one job per stdin line ({datasets, seed, size, excluded, start, stop}); one JSON line per
    row on stdout, then {"done": true} (or {"error": ...} and exit)."""
    if sys.flags.hash_randomization:  # items would depend on this process's hash seed
        print("musketeers.splits: a generation worker must run with PYTHONHASHSEED=0", file=sys.stderr)
        return 2
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # whatever a dataset prints cannot garble the replies
    sys.stdout = sys.stderr
    composites: dict[str, Any] = {}
    for line in sys.stdin:
        job = json.loads(line)
        ident = json.dumps([job["datasets"], job["seed"], job["size"]])
        excluded = set(job["excluded"])
        try:
            if ident not in composites:
                composites[ident] = _composite(job["datasets"], job["seed"], job["size"])
            for k in range(job["start"], job["stop"]):
                row, probes = generate_item(composites[ident], k, job["size"], excluded)
                replies.write(json.dumps({"k": k, "probes": probes, "row": row}) + "\n")
                replies.flush()
        except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
            user_error = isinstance(e, ProblemSpaceTooSmall)
            replies.write(json.dumps({"error": str(e) if user_error else f"{type(e).__name__}: {e}",
                                      "user_error": user_error}) + "\n")
            replies.flush()
            return 1
        replies.write('{"done": true}\n')
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
