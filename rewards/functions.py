"""Reward functions in TRL's form and their factory: Reasoning Gym's training recipe.

Reasoning Gym's trainer (reasoning-gym training/trainers/ray_grpo_trainer.py `_score_output`, with
training/rewards/reward.py) rewards a completion with

    reward = score (if reward.use_accuracy)  +  sum over reward.secondary of  scaling * term

score being the verifier's score in [0, 1] (partial credit on a few datasets) and each term one of
SECONDARY_REWARDS, unscaled: cosine (fed "correct" = the score is full), format, length (fed the score).
Here each is a TRL reward function and each scaling its weight in GRPOConfig.reward_weights (the score's
is 1, or 0 without use_accuracy: then it is computed, for cosine, length and the logs, not trained on).
TRL sums the weighted functions into the reward, so the reward is the sum above, and logs each
function unweighted under its name: rewards/score/mean, rewards/cosine/mean, rewards/format/mean,
rewards/length/mean (and /std). The score function also logs `accuracy`, the share of completions with
the full score (FULL_SCORE), which is what accuracy means everywhere in musketeers.

TRL calls each function as f(prompts=..., completions=..., completion_ids=..., **columns) where every
extra dataset column arrives as a list (one value per completion), plus trainer_state, log_extra and
log_metric. Our rows carry (the contract with the data module):
  answer: gold answer text (GSM8K: the solution ending with "#### N", or just N)
  task:   source dataset name; "gsm8k" selects the GSM8K verifier, anything else Reasoning Gym
  entry:  the Reasoning Gym item, JSON-encoded (or a dict); "" for GSM8K
A completion is a string, or a conversation (list of {"role", "content"}) whose last message is
the generated text. `prefill` (text the assistant turn was pre-filled with, e.g. "<answer>") is
prepended to every completion before the score and the format are read (rewards/format.py: how it
meets preappend_thinking_token); cosine and length count the completion's own characters.

Of the project it imports rewards' format, gsm8k, length and reasoning_gym_reward.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

from .format import format_score
from .gsm8k import EXTRACTIONS, gold_number, score_gsm8k
from .length import cosine_score, length_score
from .reasoning_gym_reward import decode_entry, score_reasoning_gym

GSM8K_TASK = "gsm8k"
FULL_SCORE = 1.0  # a completion is correct when its score reaches this (Reasoning Gym: is_correct)

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


def score_completion(completion_text: str, answer: str, task: str, entry: str | dict | None, prefill: str = "",
                     gsm8k_extraction: str = "strict") -> float:
    """Score of one completion in [0, 1]: GSM8K exact match (read as gsm8k_extraction says) if
    task == 'gsm8k', else the Reasoning Gym dataset's own score."""
    text = reply_text(completion_text, prefill)
    if task == GSM8K_TASK:
        return score_gsm8k(text, str(answer), gsm8k_extraction)  # str(): a gold stored as a number still works
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


def completion_scores(completions, answer, task, entry=None, prefill: str = "", gsm8k_extraction: str = "strict") -> list[float]:
    """score_completion of each completion of a TRL batch (the columns as TRL passes them)."""
    entries = entry if entry is not None else [""] * len(completions)
    return [score_completion(completion_text(c), gold, name, item, prefill, gsm8k_extraction)
            for c, gold, name, item in zip(completions, answer, task, entries, strict=True)]


# ----------------------------------------------------------------------------- the TRL functions
# Each is renamed to what TRL logs it as (rewards/<name>/mean); pickle finds functions by __qualname__.


def score_reward(prompts, completions, *, answer, task, entry=None, prefill="", gsm8k_extraction="strict",
                 log_metric=None, **kwargs) -> list[float]:
    """TRL reward: the verifier's score of each completion in [0, 1]; logs `accuracy` (full-score share)."""
    scores = completion_scores(completions, answer, task, entry, prefill, gsm8k_extraction)
    if log_metric is not None and scores:
        log_metric("accuracy", sum(s >= FULL_SCORE for s in scores) / len(scores))
    return scores


def cosine_reward(prompts, completions, *, answer, task, entry=None, prefill="", gsm8k_extraction="strict",
                  **kwargs) -> list[float]:
    """TRL reward: Reasoning Gym's cosine term of each completion (rewards/length.py), unscaled."""
    scores = completion_scores(completions, answer, task, entry, prefill, gsm8k_extraction)
    return [cosine_score(len(completion_text(c)), s >= FULL_SCORE) for c, s in zip(completions, scores, strict=True)]


def format_reward(prompts, completions, *, prefill="", preappend_thinking_token=False, **kwargs) -> list[float]:
    """TRL reward: Reasoning Gym's format term of each reply (prefill + completion, rewards/format.py)."""
    return [format_score(prefill + completion_text(c), preappend_thinking_token) for c in completions]


def length_reward(prompts, completions, *, answer, task, entry=None, prefill="", gsm8k_extraction="strict",
                  max_score=1.0, max_output_length=1024, **kwargs) -> list[float]:
    """TRL reward: Reasoning Gym's length term of each completion (rewards/length.py), unscaled."""
    scores = completion_scores(completions, answer, task, entry, prefill, gsm8k_extraction)
    return [length_score(len(completion_text(c)), s, max_score, max_output_length)
            for c, s in zip(completions, scores, strict=True)]


score_reward.__name__ = "score"
cosine_reward.__name__ = "cosine"
format_reward.__name__ = "format"
length_reward.__name__ = "length"

# Reasoning Gym's secondary rewards: name -> (TRL function, the options its config entry may set)
SECONDARY_REWARDS: dict[str, tuple[RewardFn, tuple[str, ...]]] = {
    "cosine": (cosine_reward, ()),
    "format": (format_reward, ("preappend_thinking_token",)),
    "length": (length_reward, ("max_score", "max_output_length")),
}


def bind(reward: RewardFn, **options) -> RewardFn:
    """`reward` with `options` bound; a picklable partial that keeps the function's __name__."""
    bound = functools.partial(reward, **options)
    bound.__name__ = reward.__name__  # TRL unwraps partials itself; this is for everyone else
    return bound


def make_reward_functions(use_accuracy: bool = True, secondary: Sequence[tuple[str, float, dict[str, Any]]] = (),
                          prefill: str = "", gsm8k_extraction: str = "strict") -> tuple[list[RewardFn], list[float]]:
    """Reward functions and their weights for GRPOConfig.reward_weights (module docstring): the score
    first (weight 1, or 0 without use_accuracy), then each (name, scaling, options) of `secondary`."""
    if gsm8k_extraction not in EXTRACTIONS:
        raise ValueError(f"gsm8k_extraction {gsm8k_extraction!r} is not one of {', '.join(EXTRACTIONS)}")
    common = {"prefill": prefill, "gsm8k_extraction": gsm8k_extraction}
    functions, weights = [bind(score_reward, **common)], [1.0 if use_accuracy else 0.0]
    for name, scaling, options in secondary:
        if name not in SECONDARY_REWARDS:
            raise ValueError(f"unknown secondary reward {name!r}; valid: {', '.join(SECONDARY_REWARDS)}")
        function, allowed = SECONDARY_REWARDS[name]
        if unknown := sorted(set(options) - set(allowed)):
            raise ValueError(f"secondary reward {name!r} has no option {unknown[0]!r}; its options: {', '.join(allowed) or 'none'}")
        functions.append(bind(function, **common, **options))
        weights.append(float(scaling))
    return functions, weights
