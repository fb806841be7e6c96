"""Task data: a task family becomes lazily generated training and validation rows, and prompts.

Every row is a dict with the columns the rewards read (see rewards/):
    question  the task text
    answer    the gold answer (GSM8K: the full solution ending in "#### N")
    task      the source dataset ("gsm8k" for GSM8K)
    entry     the Reasoning Gym item as JSON, for its dataset's own score_answer ("" for GSM8K)

Disjointness, by construction. Reasoning Gym derives item `idx` of a dataset seeded `s` from
`Random(s + idx)` (a composite seeds its i-th dataset `s + i + 1`), so two nearby seeds give
the same items shifted by the seed difference: a second seed is NOT a disjoint set. Here:
  * validation is the composite seeded `task.data_seed + VALIDATION_SEED_OFFSET`, items 0..N_val-1,
    whose random streams lie far from any stream the training set reads;
  * training position k reads composite item k seeded `task.data_seed`; if that question also occurs
    in validation (small problem spaces repeat questions), it reads k + S, k + 2S, ... instead
    (S = train_size); these probe sequences never meet, so positions stay distinct and random
    access stays O(1).
So no validation question ever appears in training; `disjointness_report` checks it at full size.
GSM8K trains on its train split minus any question of the official test split.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from experts.prompt import chat_prompt
from musketeers.config import ConfigError, TaskConfig

VALIDATION_SEED_OFFSET = 10_000_000
MAX_PROBES = 100  # training probes k + r*S for r < MAX_PROBES; S * MAX_PROBES stays below the offset
SPLITS = ("train", "validation", "test")
GSM8K_HUB_ID = "openai/gsm8k"


def question_key(question: str) -> str:
    """A question's identity for overlap checks: whitespace-normalised, hashed."""
    return hashlib.sha1(" ".join(question.split()).encode()).hexdigest()


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


# ----------------------------------------------------------------------------- Reasoning Gym


def _composite(task: TaskConfig, seed: int, size: int):
    from reasoning_gym.composite import CompositeConfig, CompositeDataset, DatasetSpec

    specs = [DatasetSpec(name=d.name, weight=d.weight, config=dict(d.config)) for d in task.datasets]
    return CompositeDataset(CompositeConfig(size=size, seed=seed, datasets=specs))


def _rg_row(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "question": item["question"],
        "answer": "" if item["answer"] is None else str(item["answer"]),
        "task": item["metadata"]["source_dataset"],
        "entry": json.dumps(item, default=str),
    }


class ValidationSplit(Sequence):
    """Reasoning Gym validation rows, generated on access."""

    def __init__(self, task: TaskConfig):
        self.size = task.validation_size
        self.dataset = _composite(task, task.data_seed + VALIDATION_SEED_OFFSET, self.size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, k: int) -> dict[str, Any]:
        if not 0 <= k < self.size:
            raise IndexError(k)
        return _rg_row(self.dataset[k])

    def question_keys(self, progress: bool = False) -> set[str]:
        items = range(self.size)
        if progress:
            from tqdm import tqdm

            items = tqdm(items, desc="validation questions", unit="item")
        return {question_key(self.dataset[k]["question"]) for k in items}


class TrainSplit(Sequence):
    """Reasoning Gym training rows, generated on access, never a validation question."""

    def __init__(self, task: TaskConfig, validation: ValidationSplit):
        if task.train_size * MAX_PROBES >= VALIDATION_SEED_OFFSET:
            raise ConfigError(f"task.train_size: at most {VALIDATION_SEED_OFFSET // MAX_PROBES - 1}, got {task.train_size}")
        self.size = task.train_size
        self.dataset = _composite(task, task.data_seed, self.size)
        self.validation = validation
        self._excluded: set[str] | None = None

    def excluded(self) -> set[str]:
        """Question keys of the validation split, computed once (cached on disk across runs)."""
        if self._excluded is None:
            self._excluded = _cached_keys(self.validation)
        return self._excluded

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, k: int) -> dict[str, Any]:
        if not 0 <= k < self.size:
            raise IndexError(k)
        excluded = self.excluded()
        for r in range(MAX_PROBES):
            item = self.dataset[k + r * self.size]
            if question_key(item["question"]) not in excluded:
                return _rg_row(item)
        raise RuntimeError(f"training position {k}: {MAX_PROBES} candidates all occur in validation; "
                           "the task's problem space is too small for this validation_size")


def _cached_keys(validation: ValidationSplit) -> set[str]:
    """Validation question keys, cached on disk by the identity of the generated items."""
    from experts.models import cache_dir

    import reasoning_gym

    ident = json.dumps([reasoning_gym.__version__, validation.dataset.config.seed, validation.size,
                        [(d.name, d.weight, d.config) for d in validation.dataset.config.datasets]], default=str)
    path = cache_dir() / "data" / f"validation-{hashlib.sha1(ident.encode()).hexdigest()[:16]}.json"
    if path.exists():
        return set(json.loads(path.read_text()))
    keys = validation.question_keys(progress=validation.size >= 1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(sorted(keys), f)
    os.replace(f.name, path)  # atomic: a crash never leaves a half-written cache
    return keys


# ----------------------------------------------------------------------------- GSM8K


def _gsm8k_rows(task: TaskConfig, split: str) -> list[dict[str, Any]]:
    if task.path is not None:
        path = Path(task.path).expanduser() / f"{split}.jsonl"
        if not path.is_file():
            raise ConfigError(f"task.path: no {split}.jsonl in {task.path!r} (expected train.jsonl and test.jsonl)")
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        from datasets import load_dataset

        records = list(load_dataset(GSM8K_HUB_ID, "main", split=split))
    return [{"question": r["question"], "answer": r["answer"], "task": "gsm8k", "entry": ""} for r in records]


# ----------------------------------------------------------------------------- splits


def check_split(task: TaskConfig, split: str) -> None:
    """A ConfigError unless the task has this split (without loading anything)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if split == "test" and task.source != "gsm8k":
        raise ConfigError(f"task {task.name!r} has no test split; Reasoning Gym families use: train, validation")


def load_split(task: TaskConfig, split: str) -> Sequence[dict[str, Any]]:
    """Rows of a task's split. Reasoning Gym: train | validation; GSM8K: train | test (the
    official test split is also returned for "validation", where GSM8K has no other)."""
    check_split(task, split)
    if task.source == "gsm8k":
        test = _gsm8k_rows(task, "test")
        if split in ("test", "validation"):
            return test
        held_out = {question_key(r["question"]) for r in test}
        return [r for r in _gsm8k_rows(task, "train") if question_key(r["question"]) not in held_out]
    validation = ValidationSplit(task)
    return validation if split == "validation" else TrainSplit(task, validation)


def iter_keys(rows: Sequence[dict[str, Any]], desc: str) -> Iterator[str]:
    from tqdm import tqdm

    for k in tqdm(range(len(rows)), desc=desc, unit="item", disable=len(rows) < 1000):
        yield question_key(rows[k]["question"])


def disjointness_report(task: TaskConfig) -> dict[str, Any]:
    """Generate both splits in full and count the questions they share (must be zero)."""
    held_out_split = "test" if task.source == "gsm8k" else "validation"
    held_out = load_split(task, held_out_split)
    train = load_split(task, "train")
    held_keys = set(iter_keys(held_out, held_out_split))
    train_keys = list(iter_keys(train, "train"))
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
