"""Task data: a task family becomes training and validation rows, and prompts.

Every row is a dict with the columns the rewards read (see rewards/):
    question  the task text
    answer    the gold answer (GSM8K: the full solution ending in "#### N")
    task      the source dataset ("gsm8k" for GSM8K)
    entry     the Reasoning Gym item as JSON, for its dataset's own score_answer ("" for GSM8K)

Identical in every process. Some Reasoning Gym datasets depend on Python's per-process hash seed, so
Reasoning Gym splits are generated once, by worker interpreters with PYTHONHASHSEED=0, into checksummed
files of the cache, and read from there by every process (musketeers/splits.py).

Disjointness, by construction. Reasoning Gym derives item `idx` of a dataset seeded `s` from
`Random(s + idx)` (a composite seeds its i-th dataset `s + i + 1`), so two nearby seeds give
the same items shifted by the seed difference: a second seed is NOT a disjoint set. Here:
  * validation is the composite seeded `task.data_seed + VALIDATION_SEED_OFFSET`, items 0..N_val-1,
    whose random streams lie far from any stream the training set reads;
  * training position k reads composite item k seeded `task.data_seed`; if that question also occurs
    in validation (small problem spaces repeat questions), it reads k + S, k + 2S, ... instead
    (S = train_size); these probe sequences never meet, so positions stay distinct.
The training file is generated from the validation file beside it (its key holds that file's sha256),
so no validation question ever appears in training; `disjointness_report` checks it at full size.
GSM8K trains on its train split minus any question of the official test split.

It may import config, splits and experts.prompt; methods, conditioning and everything above read tasks through it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experts.prompt import chat_prompt
from musketeers.config import ConfigError, RunConfig, TaskConfig
from musketeers.splits import MAX_PROBES, VALIDATION_SEED_OFFSET, materialised, question_key

SPLITS = ("train", "validation", "test")
GSM8K_HUB_ID = "openai/gsm8k"


# ----------------------------------------------------------------------------- prompts


def system_prompt(task: TaskConfig) -> str | None:
    """The task's system prompt text (None for "none")."""
    if task.system_prompt_text is not None:
        return task.system_prompt_text
    if task.system_prompt == "none":
        return None
    from reasoning_gym.utils import SYSTEM_PROMPTS

    return SYSTEM_PROMPTS[task.system_prompt]


def hints_block(hints: Sequence[tuple[str, str]]) -> str:
    """The text-hints baseline's block (eq. 12): each expert's decoded hint, verbatim."""
    return "[Expert Hints]\n" + "\n".join(f"{name}: {hint}" for name, hint in hints)


def build_prompt(question: str, tokenizer: Any, task: TaskConfig, hints: Sequence[tuple[str, str]] = ()) -> str:
    """The one place policy prompts are built: system prompt + user turn through the tokenizer's chat
    template (a plain layout without one), then the assistant prefill. The layout is
    experts.prompt.chat_prompt, the text experts read. With (expert name, hint) pairs the user turn is
    the "[Expert Hints]" block, a blank line, then the question: the hints are a prefix to the question."""
    user = f"{hints_block(hints)}\n\n{question}" if hints else question
    return chat_prompt(user, tokenizer, system_prompt(task)) + task.assistant_prefill


# ----------------------------------------------------------------------------- GSM8K


def _gsm8k_rows(task: TaskConfig, split: str) -> list[dict[str, Any]]:
    if task.path is not None:
        path = Path(task.path).expanduser() / f"{split}.jsonl"
        if not path.is_file():
            raise ConfigError(f"task.path: no {split}.jsonl in {task.path!r} (expected train.jsonl and test.jsonl)")
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        records = _gsm8k_hub_rows(split)
    return [{"question": r["question"], "answer": r["answer"], "task": "gsm8k", "entry": ""} for r in records]


def _gsm8k_hub_rows(split: str) -> list[dict[str, Any]]:
    """GSM8K from the Hugging Face hub. Without the hub (offline, HF_DATASETS_OFFLINE, no such dataset)
    datasets raises ConnectionError or another OSError after its retries: one line naming task.path."""
    from datasets import load_dataset

    try:
        return list(load_dataset(GSM8K_HUB_ID, "main", split=split))
    except OSError as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ConfigError(f"task.path: GSM8K is not local and {GSM8K_HUB_ID} cannot be loaded from the hub ({reason}); "
                          f"set task.path=DIR, a directory with train.jsonl and test.jsonl "
                          f"(a checkout carries one: task.path=data/gsm8k)") from e


# ----------------------------------------------------------------------------- splits


def check_split(task: TaskConfig, split: str) -> None:
    """A ConfigError unless the task has this split (without loading anything)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if split == "test" and task.source != "gsm8k":
        raise ConfigError(f"task {task.name!r} has no test split; Reasoning Gym families use: train, validation")


def default_split(cfg: RunConfig) -> str:
    """GSM8K: the official test split; Reasoning Gym: the held-out validation items."""
    return "test" if cfg.task.source == "gsm8k" else "validation"



def load_split(task: TaskConfig, split: str) -> Sequence[dict[str, Any]]:
    """Rows of a task's split. Reasoning Gym: train | validation, read from the cache (generated into it
    once, the same in every process: musketeers/splits.py); GSM8K: train | test (the official test
    split is also returned for "validation", where GSM8K has no other)."""
    check_split(task, split)
    if task.source == "gsm8k":
        test = _gsm8k_rows(task, "test")
        if split in ("test", "validation"):
            return test
        held_out = {question_key(r["question"]) for r in test}
        return [r for r in _gsm8k_rows(task, "train") if question_key(r["question"]) not in held_out]
    if split == "train" and task.train_size * MAX_PROBES >= VALIDATION_SEED_OFFSET:
        raise ConfigError(f"task.train_size: at most {VALIDATION_SEED_OFFSET // MAX_PROBES - 1}, got {task.train_size}")
    return materialised(task, split)


def answer_table(task: TaskConfig):
    """The gold answers an oracle expert serves (experts/oracle.py): every question of the training split,
    then of the held-out split, each with the answer a perfect completion writes."""
    from experts.oracle import AnswerTable
    from rewards.functions import gold_answer_text

    held_out = "test" if task.source == "gsm8k" else "validation"
    return AnswerTable([[(row["question"], gold_answer_text(row)) for row in load_split(task, split)]
                        for split in ("train", held_out)])


def disjointness_report(task: TaskConfig) -> dict[str, Any]:
    """Load both splits in full (generated into the cache first if needed) and count the questions they
    share (must be zero)."""
    held_out_split = "test" if task.source == "gsm8k" else "validation"
    train = load_split(task, "train")  # first: generating training generates validation with it
    held_out = load_split(task, held_out_split)
    held_keys = {question_key(row["question"]) for row in held_out}
    train_keys = [question_key(row["question"]) for row in train]
    shared = held_keys.intersection(train_keys)
    return {
        "task": task.name,
        "train": len(train),
        held_out_split: len(held_out),
        "unique_train_questions": len(set(train_keys)),
        f"unique_{held_out_split}_questions": len(held_keys),
        "shared_questions": len(shared),
        "disjoint": not shared,
    }
