"""The run directory: the one place that knows its names, finds its checkpoints and writes its files.

    <output_dir>/
      <run name>/                      <task>-<method>-<team>-seed<k> (team "none" for single), then
                                       -<time> (musketeers train) or -<key><value> per varied setting (sweeps)
        config.yaml                    the resolved config: what --resume, eval, report and sweeps read back
        metrics.jsonl                  one row per optimizer step: rewards, accuracy, KL, lengths, routing, timings;
                                       one per held-out evaluation (training.eval_every): eval/accuracy[/<dataset>]
        tensorboard/                   the same scalars and the resolved config for TensorBoard (training.report_to)
        curves.png                     written when training ends: reward (+ held-out accuracy), KL, entropy, utilisation
        checkpoint-N/                  every training.save_steps (TRL names and writes them): PEFT adapter,
                                       context_adapter.safetensors (methods with g_phi), optimizer, scheduler, RNG, step
        final/                         the trained PEFT adapter (+ context_adapter.safetensors) when training ends
          eval-<split>.json            `musketeers eval` of final/ (or of a checkpoint-N/, inside it): greedy
          eval-<split>-sampled-k<k>-t<T>-p<P>.json   `musketeers eval --samples k --temperature T --top-p P`
        eval-<split>-baseline.json     `musketeers eval --baseline`: the untrained policy (and
                                       eval-<split>-baseline-sampled-k<k>-t<T>-p<P>.json when sampled)
        DONE                           musketeers sweep: training ended ({"steps": ..., "time": ...})
      logs/<run name>.log              musketeers sweep: each run's output, appended on every attempt
      logs/<run name>.attempts.jsonl   musketeers sweep: one row per attempt (node, pid, GPUs, resumed step)
      sweeps/<sweep>/, locks/          musketeers sweep: the runs serving each sweep, who trains a run now (run_store.py)

A checkpoint (final/ or checkpoint-N/) counts once its LoRA is saved; `--resume` continues from the
highest checkpoint-N/ that transformers finished writing (its trainer_state.json, written last), so a
process or node that dies in the middle of a save costs that checkpoint, not the run. Config, eval
results, the DONE marker and truncated metrics are written atomically: a killed process leaves the
old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from musketeers.config import RunConfig, load_resolved_config
from musketeers.methods import METHODS

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.png"
CHECKPOINT_PREFIX = "checkpoint-"  # TRL's Trainer names its checkpoints so (transformers' PREFIX_CHECKPOINT_DIR)
FINAL_DIR = "final"
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what PEFT's save_pretrained writes
ADAPTER_FILE = "context_adapter.safetensors"
DONE_FILE = "DONE"
TRAINER_STATE_FILE = "trainer_state.json"  # transformers writes it last into a checkpoint-N/
LOGS_DIR = "logs"
SWEEP_FILE = "sweep.yaml"


# ----------------------------------------------------------------------------- names


def team_name(cfg: RunConfig) -> str:
    """The team as run names show it: "none" for `single`, which runs without experts."""
    return cfg.team.name if METHODS[cfg.method].experts else "none"


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
    """A folder holding a saved LoRA adapter (final/ or checkpoint-N/)."""
    return all((path / name).is_file() for name in LORA_FILES)


def _numbered_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(N, folder) of every checkpoint-N folder, complete or not, by N."""
    found = []
    for path in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name.removeprefix(CHECKPOINT_PREFIX)
        if step.isdecimal() and path.is_dir():
            found.append((int(step), path))
    return sorted(found)


def last_checkpoint(run_dir: Path) -> Path | None:
    """The highest checkpoint-N folder that was written to the end, where --resume continues, else None.
    (TRL's get_last_checkpoint takes the highest folder, even one a dying process left half-written.)"""
    complete = [path for _, path in _numbered_checkpoints(run_dir) if (path / TRAINER_STATE_FILE).is_file()]
    return complete[-1] if complete else None


def checkpoints_after(run_dir: Path, step: int) -> list[Path]:
    """checkpoint-N folders beyond `step` (left half-written by a killed run)."""
    return [path for n, path in _numbered_checkpoints(run_dir) if n > step]


def final_or_last_checkpoint(run_dir: Path) -> Path | None:
    """final/ when the run finished, else its highest complete checkpoint-N, else None."""
    final = Path(run_dir) / FINAL_DIR
    if is_checkpoint(final):
        return final
    complete = [path for _, path in _numbered_checkpoints(run_dir) if is_checkpoint(path)]
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
    return not METHODS[read_config(run_dir).method].context_tokens or (final / ADAPTER_FILE).is_file()


def mark_done(run_dir: Path) -> None:
    """The DONE marker: training ended, after this many logged steps."""
    rows = read_metrics(run_dir)
    write_text_atomic(run_dir / DONE_FILE, json.dumps({"steps": rows[-1]["step"] if rows else 0, "time": time.time()}) + "\n")


# ----------------------------------------------------------------------------- metrics and eval results


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The logged rows in step order ([] before the first step)."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    """One more row, written at once: a crash loses nothing logged before it."""
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the rows up to `step`: a resumed run logs the steps after its checkpoint again."""
    rows = [r for r in read_metrics(run_dir) if r["step"] <= step]
    write_text_atomic(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))


def read_eval(run_dir: Path, split: str, baseline: bool = False) -> dict[str, Any] | None:
    """What greedy `musketeers eval` wrote for the run's final/ (or last) checkpoint, or for --baseline; None if nothing."""
    if baseline:
        path = baseline_eval_path(run_dir, split)
    else:
        checkpoint = final_or_last_checkpoint(run_dir)
        if checkpoint is None:
            return None
        path = eval_path(checkpoint, split)
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------- atomic writes


def write_text_atomic(path: Path, text: str) -> None:
    """Write a temporary file beside `path`, then rename it onto `path`; on any failure remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))  # serialised first: a bad value never touches the disk
