"""Reward functions in TRL's form and their factory.

TRL's GRPOTrainer calls each reward function as f(prompts=..., completions=..., completion_ids=...,
**columns) where every extra dataset column arrives as a list (one value per completion), plus
trainer_state, log_extra and log_metric. Our rows carry (the contract with the data module):
  answer: gold answer text (GSM8K: the solution ending with "#### N", or just N)
  task:   source dataset name; "gsm8k" selects the GSM8K verifier, anything else Reasoning Gym
  entry:  the Reasoning Gym item, JSON-encoded (or a dict); "" for GSM8K
A completion is a string, or a conversation (list of {"role", "content"}) whose last message is
the generated text. `prefill` (text the assistant turn was pre-filled with, e.g. "<answer>") is
prepended to every completion before anything is extracted from it.
"""

import functools
from collections.abc import Callable
from typing import Any

from .format import score_format
from .gsm8k import gold_number, score_gsm8k
from .reasoning_gym_reward import decode_entry, score_reasoning_gym

GSM8K_TASK = "gsm8k"

RewardFn = Callable[..., list[float]]


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The generated text: the string itself, or the content of a conversation's last message."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    content = completion[-1].get("content")
    return content if isinstance(content, str) else ""


def reply_text(completion_text: str, prefill: str) -> str:
    """The assistant's whole reply: prefill + completion. A prefill that opens the answer tag
    ("<answer>") makes the reply the answer itself: if the completion never closes the tag, the
    answer is read as ending where the completion ends."""
    text = prefill + completion_text
    if prefill.rstrip().endswith("<answer>") and "</answer>" not in completion_text:
        text += "</answer>"
    return text


def score_completion(
    completion_text: str, answer: str, task: str, entry: str | dict | None, prefill: str = ""
) -> float:
    """Accuracy of one completion: GSM8K exact match if task == 'gsm8k', else Reasoning Gym score."""
    text = reply_text(completion_text, prefill)
    if task == GSM8K_TASK:
        return score_gsm8k(text, str(answer))  # str(): a gold stored as a number still works
    return score_reasoning_gym(text, entry)


def gold_answer_text(row: dict[str, Any]) -> str:
    """What a perfect completion writes in its <answer> tag for a row (the GSM8K number; for a
    Reasoning Gym item without a single answer, e.g. propositional_logic, its example answer)."""
    if row["task"] == GSM8K_TASK:
        return gold_number(str(row["answer"])) or ""
    item = decode_entry(row["entry"])
    if item is not None and item.get("answer") is None:
        return str(item["metadata"].get("example_answer", ""))
    return str(row["answer"])


def reference_completion(row: dict[str, Any], prefill: str = "") -> str:
    """A completion answering the row with its gold answer, without the prefill it will be given."""
    text = f"<answer>{gold_answer_text(row)}</answer>"
    return text.removeprefix(prefill)


def accuracy(prompts, completions, *, answer, task, entry=None, prefill: str = "", **kwargs) -> list[float]:
    """TRL reward: verifiable accuracy of each completion in [0, 1]."""
    entries = entry if entry is not None else [""] * len(completions)
    return [
        score_completion(completion_text(c), gold, name, item, prefill)
        for c, gold, name, item in zip(completions, answer, task, entries, strict=True)
    ]


def format_reward(prompts, completions, *, prefill: str = "", **kwargs) -> list[float]:
    """TRL reward: 1.0 for each completion in the DeepSeekZero <think>/<answer> format, else 0.0."""
    return [score_format(prefill + completion_text(c)) for c in completions]


# The name TRL logs (rewards/format/mean). pickle finds functions by __qualname__, not __name__.
format_reward.__name__ = "format"


def with_prefill(reward: RewardFn, prefill: str) -> RewardFn:
    """`reward` with `prefill` bound; a picklable partial that keeps the function's __name__."""
    bound = functools.partial(reward, prefill=prefill)
    bound.__name__ = reward.__name__  # TRL unwraps partials itself; this is for everyone else
    return bound


def make_reward_functions(format_weight: float = 0.0, prefill: str = "") -> tuple[list[RewardFn], list[float]]:
    """Reward functions and their weights for GRPOConfig.reward_weights: accuracy (weight 1),
    plus the format reward when format_weight > 0."""
    functions = [with_prefill(accuracy, prefill)]
    weights = [1.0]
    if format_weight > 0:
        functions.append(with_prefill(format_reward, prefill))
        weights.append(float(format_weight))
    return functions, weights
