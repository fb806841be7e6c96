"""Verifiable rewards: Reasoning Gym and GSM8K accuracy, optional DeepSeekZero format reward."""

from .format import has_format, score_format
from .functions import (
    GSM8K_TASK,
    accuracy,
    completion_text,
    format_reward,
    gold_answer_text,
    make_reward_functions,
    reference_completion,
    score_completion,
)
from .gsm8k import gold_number, normalize_number, predicted_number, score_gsm8k
from .reasoning_gym_reward import decode_entry, score_reasoning_gym

__all__ = [
    "GSM8K_TASK",
    "accuracy",
    "completion_text",
    "decode_entry",
    "format_reward",
    "gold_answer_text",
    "gold_number",
    "has_format",
    "make_reward_functions",
    "normalize_number",
    "predicted_number",
    "reference_completion",
    "score_completion",
    "score_format",
    "score_gsm8k",
    "score_reasoning_gym",
]
