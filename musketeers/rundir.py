"""The run directory: the one place that knows its names, finds its checkpoints and writes its files.

    <output_dir>/
      <run name>/                      <task>-<method>-<team>-seed<k> (team "none" for single), then
                                       -<time> (musketeers train) or -<key><value> per varied setting (sweeps)
        config.yaml                    the resolved config: what --resume, eval, report and sweeps read back
        metrics.jsonl                  one row per optimizer step: rewards, accuracy, KL, lengths, routing, timings;
                                       one per held-out evaluation (training.eval_every): eval/accuracy[/<dataset>]
        tensorboard/                   the same scalars and the resolved config for TensorBoard (training.report_to)
        curves.png                     written when training ends: reward (+ held-out accuracy), KL, entropy, utilisation
        checkpoint-N/                  every training.save_steps and on preemption (TRL names and writes them): PEFT
                                       adapter, context_adapter.safetensors (methods with g_phi), optimizer, scheduler,
                                       RNG, step; manifest.json (each file's size and sha256) written last
        final/                         the trained PEFT adapter (+ context_adapter.safetensors, manifest.json) when
                                       training ends
          eval-<split>.json            `musketeers eval` of final/ (or of a checkpoint-N/, inside it): greedy
          eval-<split>-sampled-k<k>-t<T>-p<P>.json   `musketeers eval --samples k --temperature T --top-p P`
        eval-<split>-baseline.json     `musketeers eval --baseline`: the untrained policy (and
                                       eval-<split>-baseline-sampled-k<k>-t<T>-p<P>.json when sampled)
        DONE                           musketeers sweep: training ended ({"steps": ..., "time": ...})
      logs/<run name>.log              musketeers sweep: each run's output, appended on every attempt
      logs/<run name>.attempts.jsonl   musketeers sweep: one row per attempt (node, pid, GPUs, resumed step)
      sweeps/<sweep>/, locks/          musketeers sweep: the runs serving each sweep, who trains a run now (run_store.py)

A checkpoint (final/ or checkpoint-N/) counts once its manifest.json is written, after every other file
of it, and each file it lists still has the size it recorded; `--resume` continues from the highest such
checkpoint-N/ whose files also match their sha256, skipping (with a warning) any that do not. So a
process or node that dies, or a disk that fills, in the middle of a save costs that checkpoint, not the
run, and a truncated file is never loaded. (transformers writes trainer_state.json last but not
atomically: a kill can leave half of it, so it cannot mark a checkpoint complete.) Config, eval results,
manifests, the DONE marker and truncated metrics are written atomically: a killed process leaves the old
file or the new one, never half of one. metrics.jsonl is appended a row at a time: a row cut by a kill or
a full disk is skipped when read and dropped when the run resumes; an eval JSON that does not parse
counts as missing (a sweep evaluates again). What survives which fault: musketeers/interruptions.py.

It may import config and method_traits only: everything that reads or writes a run directory goes through it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from musketeers.config import RunConfig, load_resolved_config
from musketeers.method_traits import METHOD_TRAITS

log = logging.getLogger("musketeers.rundir")  # warnings print as one line (musketeers.console shows them in runs)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.png"
CHECKPOINT_PREFIX = "checkpoint-"  # TRL's Trainer names its checkpoints so (transformers' PREFIX_CHECKPOINT_DIR)
FINAL_DIR = "final"
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what PEFT's save_pretrained writes
ADAPTER_FILE = "context_adapter.safetensors"
DONE_FILE = "DONE"
TRAINER_STATE_FILE = "trainer_state.json"  # transformers' record of the step, in every checkpoint-N/
MANIFEST_FILE = "manifest.json"  # written last into a checkpoint: what a complete one holds
LOGS_DIR = "logs"
SWEEP_FILE = "sweep.yaml"


# ----------------------------------------------------------------------------- names


def team_name(cfg: RunConfig) -> str:
    """The team as run names show it: "none" for `single`, which runs without experts."""
    return cfg.team.name if METHOD_TRAITS[cfg.method].experts else "none"


def run_name(cfg: RunConfig, suffix: str = "") -> str:
    return f"{cfg.task.name}-{cfg.method}-{team_name(cfg)}-seed{cfg.seed}{suffix}"


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(checkpoint: str | Path) -> int:
    """N of a checkpoint-N folder."""
    return int(Path(checkpoint).name.removeprefix(CHECKPOINT_PREFIX))


def sampling_tag(samples: int, temperature: float, top_p: float) -> str:
    """What a sampled eval's file name adds: its settings, so that runs of other settings (and the
    greedy eval) keep their own files, e.g. "sampled-k3-t0.6-p0.9"."""
    return f"sampled-k{samples}-t{temperature:g}-p{top_p:g}"


def eval_path(checkpoint: Path, split: str, tag: str = "") -> Path:
    """The eval JSON of a checkpoint: greedy without a tag, sampled with its `sampling_tag`."""
    return checkpoint / f"eval-{split}{f'-{tag}' if tag else ''}.json"


def baseline_eval_path(run_dir: Path, split: str, tag: str = "") -> Path:
    return run_dir / f"eval-{split}-baseline{f'-{tag}' if tag else ''}.json"


def log_path(run_dir: Path) -> Path:
    """A sweep run's log, beside the runs so that deleting a run keeps its history."""
    return run_dir.parent / LOGS_DIR / f"{run_dir.name}.log"


def attempts_path(run_dir: Path) -> Path:
    """A sweep run's record of its attempts (which node, process and GPUs; the step it resumed from)."""
    return run_dir.parent / LOGS_DIR / f"{run_dir.name}.attempts.jsonl"


# ----------------------------------------------------------------------------- creating and reading back


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def new_run_dir(cfg: RunConfig, run_dir: str | Path | None = None) -> Path:
    """A new run directory holding the resolved config: `run_dir` when given (a sweep's
    deterministic name; it must not exist yet), else <output_dir>/<run name>-<time>."""
    if run_dir is None:
        run_dir = Path(cfg.output_dir) / run_name(cfg, datetime.now().strftime("-%Y%m%d-%H%M%S"))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=False)
    write_text_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return run_dir


def read_config(run_dir: str | Path) -> RunConfig:
    return load_resolved_config(Path(run_dir) / CONFIG_FILE)


# ----------------------------------------------------------------------------- checkpoints


def is_checkpoint(path: Path) -> bool:
    """A complete folder holding a saved LoRA adapter (final/ or checkpoint-N/): see `checkpoint_problem`."""
    return checkpoint_problem(path) is None and all((path / name).is_file() for name in LORA_FILES)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Seal a saved checkpoint: the size and sha256 of every file in it, written atomically after them all.
    Files added later (eval results) are not part of it."""
    files = {path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST_FILE
             and not path.name.startswith(".")}
    write_json_atomic(folder / MANIFEST_FILE, {"files": files})


def checkpoint_problem(folder: Path, checksums: bool = False) -> str | None:
    """Why `folder` is not a complete checkpoint, in a few words (None: it is one): no manifest (its save never
    finished), or a file it lists missing or of another size (truncated), or, with `checksums`, of other content."""
    try:
        files = json.loads((folder / MANIFEST_FILE).read_text())["files"]
        sizes = {name: int(entry["bytes"]) for name, entry in files.items()}
    except FileNotFoundError:
        return f"no {MANIFEST_FILE}: its save did not finish"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is unreadable"
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size:,} bytes, {size:,} when it was saved"
        if checksums and file_sha256(path) != files[name]["sha256"]:
            return f"{name} differs from what was saved (sha256)"
    return None


def _numbered_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(N, folder) of every checkpoint-N folder, complete or not, by N."""
    found = []
    for path in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name.removeprefix(CHECKPOINT_PREFIX)
        if step.isdecimal() and path.is_dir():
            found.append((int(step), path))
    return sorted(found)


def _resumable(path: Path) -> bool:
    return is_checkpoint(path) and (path / TRAINER_STATE_FILE).is_file()


def last_checkpoint(run_dir: Path) -> Path | None:
    """The highest complete checkpoint-N folder (sizes checked, not checksums), else None.
    (TRL's get_last_checkpoint takes the highest folder, even one a dying process left half-written.)"""
    complete = [path for _, path in _numbered_checkpoints(run_dir) if _resumable(path)]
    return complete[-1] if complete else None


def resume_checkpoint(run_dir: Path) -> Path | None:
    """Where --resume continues: the highest checkpoint-N whose files all match their manifest's sizes and
    sha256; each one skipped on the way down gets one warning line."""
    for step, path in reversed(_numbered_checkpoints(run_dir)):
        problem = checkpoint_problem(path, checksums=True)
        if problem is None and (path / TRAINER_STATE_FILE).is_file():
            return path
        log.warning("warning: skipping %s (%s)", path.name, problem or f"no {TRAINER_STATE_FILE}")
    return None


def checkpoints_after(run_dir: Path, step: int) -> list[Path]:
    """checkpoint-N folders beyond `step` (left half-written by a killed run)."""
    return [path for n, path in _numbered_checkpoints(run_dir) if n > step]


def final_or_last_checkpoint(run_dir: Path) -> Path | None:
    """final/ when the run finished, else its highest complete checkpoint-N, else None (a final/ that is
    there but not complete, cut by a kill or a full disk, gets a warning line)."""
    final = Path(run_dir) / FINAL_DIR
    if is_checkpoint(final):
        return final
    complete = [path for _, path in _numbered_checkpoints(run_dir) if is_checkpoint(path)]
    if final.is_dir():
        log.warning("warning: %s is incomplete (%s); using %s", final, checkpoint_problem(final) or "no LoRA",
                    complete[-1].name if complete else "nothing")
    return complete[-1] if complete else None


# ----------------------------------------------------------------------------- run state (sweeps)


def is_finished(run_dir: Path) -> bool:
    """Training ended: the DONE marker, or final/ with the LoRA (and the adapter, if the method has one)."""
    if (run_dir / DONE_FILE).is_file():
        return True
    final = run_dir / FINAL_DIR
    if not is_checkpoint(final) or not is_run_dir(run_dir):
        return False
    # methods without context tokens train no g_phi, so save no adapter file
    return not METHOD_TRAITS[read_config(run_dir).method].context_tokens or (final / ADAPTER_FILE).is_file()


def mark_done(run_dir: Path) -> None:
    """The DONE marker: training ended, after this many logged steps."""
    rows = read_metrics(run_dir)
    write_text_atomic(run_dir / DONE_FILE, json.dumps({"steps": rows[-1]["step"] if rows else 0, "time": time.time()}) + "\n")


# ----------------------------------------------------------------------------- metrics and eval results


def read_jsonl(path: Path, warn: bool = False) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file ([] when there is none). A line that does not parse (the last one, cut by a
    kill or a full disk, or still being written) is left out: with one warning line when `warn`."""
    if not path.exists():
        return []
    rows, bad = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            bad.append(number)
    if bad and warn:
        log.warning("warning: %s: left out line %s, cut short (a kill or a full disk while it was written)",
                    path, ", ".join(map(str, bad)))
    return rows


def read_metrics(run_dir: str | Path, warn: bool = False) -> list[dict[str, Any]]:
    """The logged rows in step order ([] before the first step)."""
    return read_jsonl(Path(run_dir) / METRICS_FILE, warn)


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    """One more row, written at once: a crash loses nothing logged before it."""
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the rows up to `step`: a resumed run logs the steps after its checkpoint again."""
    rows = [r for r in read_metrics(run_dir, warn=True) if r["step"] <= step]
    write_text_atomic(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))


def read_json(path: Path) -> Any | None:
    """A JSON file written by write_json_atomic, or None: missing, or not JSON (truncated by a file system that
    lost its tail; one warning line), so that its writer runs again rather than anything reading half of it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("warning: %s is unreadable (%s); treating it as missing", path, " ".join(str(e).split())[:120])
        return None


def read_eval(run_dir: Path, split: str, baseline: bool = False) -> dict[str, Any] | None:
    """What greedy `musketeers eval` wrote for the run's final/ (or last) checkpoint, or for --baseline; None if nothing."""
    if baseline:
        path = baseline_eval_path(run_dir, split)
    else:
        checkpoint = final_or_last_checkpoint(run_dir)
        if checkpoint is None:
            return None
        path = eval_path(checkpoint, split)
    return read_json(path)


def read_eval_result(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """An eval JSON with today's fields. One written before accuracy meant the full-score share holds
    `solved` (the full-score share) and `accuracy` (the mean score): they become accuracy and score,
    overall and per dataset, and `old_fields` says it was converted."""
    if result is None or "solved" not in result:
        return result

    def convert(stats: dict[str, Any]) -> dict[str, Any]:
        rest = {k: v for k, v in stats.items() if k not in ("solved", "accuracy")}
        return {**rest, "accuracy": stats["solved"], "score": stats["accuracy"]}

    per_dataset = {name: convert(d) for name, d in result.get("per_dataset", {}).items()}
    return {**convert(result), "per_dataset": per_dataset, "old_fields": True}



# ----------------------------------------------------------------------------- atomic writes


def write_text_atomic(path: Path, text: str) -> None:
    """Write a temporary file beside `path` (a name of its own: concurrent writers never share one), flush it
    to disk, then rename it onto `path`: readers see the old file or the new one. On any failure remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # else a crashed node can leave the renamed file empty
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))  # serialised first: a bad value never touches the disk
