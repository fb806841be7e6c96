"""Reasoning Gym verifier: the source dataset's own score function on the last <answer> tag.

A row carries the Reasoning Gym item as `entry` ({question, answer, metadata}, JSON-encoded or
already a dict). The answer is the content of the last <answer>...</answer> of the completion
(reasoning_gym.utils.extract_answer); no tag scores 0. The item is scored by the score function
of entry["metadata"]["source_dataset"] (one instance of that dataset class with its default
config, built once per name). Score functions are third-party code that can raise on odd
answers: any exception scores 0. Results are clamped to [0, 1]; NaN scores 0. Some of them run
the answer as Python code; answer_guard keeps that code harmless (an answer it rejects scores 0).

Of the project it imports only rewards.answer_guard.
"""

import functools
import json
import logging
import math
from collections.abc import Callable
from typing import Any

from reasoning_gym.factory import get_score_answer_fn
from reasoning_gym.utils import extract_answer

from .answer_guard import is_safe_answer

logger = logging.getLogger(__name__)

ScoreFn = Callable[[str | None, dict[str, Any]], float]


def decode_entry(entry: str | dict | None) -> dict[str, Any] | None:
    """The entry as a dict with a source dataset name, or None if it is missing or malformed."""
    if isinstance(entry, str):
        try:
            entry = json.loads(entry)
        except json.JSONDecodeError:
            return None
    if not isinstance(entry, dict):
        return None
    metadata = entry.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("source_dataset"), str):
        return None
    return entry


@functools.cache
def score_fn(dataset_name: str) -> ScoreFn | None:
    """The dataset's score_answer (cached per name), or None for an unregistered name."""
    try:
        return get_score_answer_fn(dataset_name)
    except ValueError:
        logger.warning("Unknown Reasoning Gym dataset %r: its rows score 0", dataset_name)
        return None


def safe_score(score: ScoreFn, answer: str, entry: dict[str, Any]) -> float:
    """Call a third-party score function; exceptions and NaN give 0, the rest is clamped to [0, 1]."""
    try:
        value = float(score(answer, entry))
    except Exception:  # RG score functions raise on odd answers (parse errors, recursion, ...)
        return 0.0
    if math.isnan(value):
        return 0.0
    return min(1.0, max(0.0, value))


def score_reasoning_gym(completion: str, entry: str | dict | None) -> float:
    """Score of the completion's last <answer> by the item's source dataset; 0 if none or bad row."""
    item = decode_entry(entry)
    if item is None:
        return 0.0
    answer = extract_answer(completion)
    dataset_name = item["metadata"]["source_dataset"]
    if answer is None or not is_safe_answer(dataset_name, answer):
        return 0.0
    score = score_fn(dataset_name)
    if score is None:
        return 0.0
    return safe_score(score, answer, item)
