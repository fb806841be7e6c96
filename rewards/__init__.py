"""Verifiable rewards: Reasoning Gym and GSM8K scores, and Reasoning Gym's secondary rewards (cosine,
format, length), as TRL reward functions (rewards/functions.py: the recipe and how it is logged).

It re-exports the modules of rewards/, which import only each other: never experts or musketeers.
"""

from .format import format_score, has_think_answer_format
from .functions import (
    FULL_SCORE,
    GSM8K_TASK,
    SECONDARY_REWARDS,
    completion_text,
    cosine_reward,
    format_reward,
    gold_answer_text,
    length_reward,
    make_reward_functions,
    reference_completion,
    score_completion,
    score_reward,
)
from .gsm8k import EXTRACTIONS, gold_number, normalize_number, predicted_number, score_gsm8k
from .length import cosine_score, length_score
from .reasoning_gym_reward import decode_entry, score_reasoning_gym

__all__ = [
    "EXTRACTIONS",
    "FULL_SCORE",
    "GSM8K_TASK",
    "SECONDARY_REWARDS",
    "completion_text",
    "cosine_reward",
    "cosine_score",
    "decode_entry",
    "format_reward",
    "format_score",
    "gold_answer_text",
    "gold_number",
    "has_think_answer_format",
    "length_reward",
    "length_score",
    "make_reward_functions",
    "normalize_number",
    "predicted_number",
    "reference_completion",
    "score_completion",
    "score_gsm8k",
    "score_reasoning_gym",
    "score_reward",
]
