"""What `musketeers train` prints: one line per phase with the time since the run started, one compact
line per optimizer step and per held-out evaluation, and no library noise around them.

    with run_output():                 # for the duration of a run
        log.info("loaded policy ...")  # -> "[  12.3 s] loaded policy ..."

Phase lines are INFO records of the `musketeers` and `experts` loggers (experts/ logs its own loading
and never prints), shown while `run_output` is open. TRL's own console output (the progress bar, a
raw dict per step) is switched off in musketeers/train.py; `StepPrinter` prints `step_line` instead.
The deprecation warnings that transformers and PEFT raise on calls made inside TRL, PEFT and our KV-cached
generation, which a user can do nothing about, are silenced one by one by their text; nothing else is.

A leaf: it imports nothing of the project.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger("musketeers.train")
PHASE_LOGGERS = ("musketeers", "experts")  # whose INFO lines a run prints

# (category, start of the message): raised by transformers 5.2x on calls made by TRL 1.16, PEFT and
# musketeers/context.py (KV cache handed to generate), kept working by transformers until v6
KNOWN_DEPRECATIONS = (
    (FutureWarning, r"`gradient_checkpointing` is deprecated and will be removed in v6\. Use `activation_checkpointing`"),
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated and will be removed in v6"),
    (FutureWarning, r"`past_key_values` is deprecated and will be removed in version 6\.0\.0 for `\w+\.generate`"),
)
# the same deprecation, logged once by transformers instead of warned: logger name -> start of the message
KNOWN_LOGGED_DEPRECATIONS = {"transformers.utils.generic": "`past_key_values`/`cache_params` are deprecated"}


class _Elapsed(logging.Formatter):
    def __init__(self, start: float):
        super().__init__()
        self.start = start

    def format(self, record: logging.LogRecord) -> str:
        return f"[{record.created - self.start:6.1f} s] {record.getMessage()}"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextmanager
def run_output(stream=None):
    """While open: phase lines print to `stream` (stdout) as "[elapsed s] text", the known library
    deprecations stay silent. Everything is restored on exit (tests and sweeps run many runs in one process)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(_Elapsed(time.time()))
    loggers = [logging.getLogger(name) for name in PHASE_LOGGERS]
    levels = [logger.level for logger in loggers]
    drops = [(logging.getLogger(name), _DropMessage(prefix)) for name, prefix in KNOWN_LOGGED_DEPRECATIONS.items()]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    for logger, drop in drops:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for category, message in KNOWN_DEPRECATIONS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)
        for logger, drop in drops:
            logger.removeFilter(drop)


# ----------------------------------------------------------------------------- per-step lines


def _number(logs: dict[str, Any], key: str) -> float | None:
    value = logs.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def step_line(logs: dict[str, Any], step: int, max_steps: int) -> str:
    """One optimizer step: reward (the weighted sum of the reward terms), accuracy (the share of completions
    with the full score) and score (their mean score, partial credit included), KL, the policy's token
    entropy, routing entropy H when the method routes, and TRL's step time; keys not logged are left out."""
    parts = [f"step {step:>{len(str(max_steps))}}/{max_steps}"]
    for label, key, fmt in (("reward", "reward", ".3f"), ("accuracy", "accuracy", ".3f"), ("score", "rewards/score/mean", ".3f"),
                            ("KL", "kl", ".3g"), ("entropy", "entropy", ".3f"), ("routing H", "routing/entropy", ".3f")):
        value = _number(logs, key)
        if value is not None:
            parts.append(f"{label} {value:{fmt}}")
    if (seconds := _number(logs, "step_time")) is not None:
        parts.append(f"{seconds:.{2 if seconds < 10 else 1}f} s/step")
    return "  ".join(parts)


def eval_line(logs: dict[str, Any], step: int, items: int, split: str) -> str:
    """One held-out evaluation (keys as the trainer logs them: eval_accuracy, eval_accuracy/<dataset>, eval_score)."""
    per_dataset = {k.removeprefix("eval_accuracy/"): v for k, v in logs.items() if k.startswith("eval_accuracy/")}
    detail = f" ({', '.join(f'{name} {v:.3f}' for name, v in per_dataset.items())})" if len(per_dataset) > 1 else ""
    score = _number(logs, "eval_score")
    scored = f", score {score:.3f}" if score is not None else ""
    runtime = _number(logs, "eval_runtime")
    took = f", {runtime:.1f} s" if runtime is not None else ""
    return f"eval at step {step}: accuracy {logs['eval_accuracy']:.3f}{detail}{scored}, greedy, first {items} {split} items{took}"


class StepPrinter(TrainerCallback):
    """A phase line per logged optimizer step and per held-out evaluation, instead of TRL's raw dict."""

    def __init__(self, eval_items: int = 0, eval_split: str = "validation"):
        self.eval_items, self.eval_split = eval_items, eval_split

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        if "reward" in logs:
            log.info(step_line(logs, state.global_step, state.max_steps))
        elif "eval_accuracy" in logs:
            log.info(eval_line(logs, state.global_step, self.eval_items, self.eval_split))
