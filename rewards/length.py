"""Reasoning Gym's length-shaped rewards (reasoning-gym training/rewards/reward.py, "cosine" and
"length"): their formulas, our code. Both measure the completion in characters, as Reasoning Gym
measures its decoded response (the prompt, and so our assistant prefill, is not counted).

cosine (no options: Reasoning Gym fixes its constants), with p = characters / COSINE_MAX_LEN:

    cosine = at_max + (at_zero - at_max) * (1 + cos(pi * p)) / 2

    correct (score = 1):  at_zero = 1.0, at_max = 0.95   (shorter correct replies earn more)
    wrong   (score < 1):  at_zero = 0.0, at_max = 0.7    (longer wrong replies earn more)

p is not clamped, as in Reasoning Gym: past COSINE_MAX_LEN characters the value swings back
(2000 characters score as 0). These are the constants of the revision that added the format
reward's preappend_thinking_token, which the paper's listings set; an earlier revision used
-1.0 / -0.5 (wrong) and 0.5 / 1.0 (correct).

length (options max_score, default 1.0, and max_output_length, default 1024 characters), with
p = min(characters / max_output_length, 1):

    length = (max_score - score) * p   if score < max_score - 1e-6   (longer is rewarded when wrong)
           = -p                        otherwise                      (longer is penalised when right)

It imports nothing of the project (a leaf of rewards/).
"""

import math

COSINE_MAX_LEN = 1000  # characters
COSINE_CORRECT = (1.0, 0.95)  # (at length 0, at COSINE_MAX_LEN)
COSINE_WRONG = (0.0, 0.7)
LENGTH_EPSILON = 1e-6  # a score within this of max_score counts as the full score


def cosine_score(characters: int, correct: bool) -> float:
    """Reasoning Gym's cosine term, unscaled (module docstring)."""
    at_zero, at_max = COSINE_CORRECT if correct else COSINE_WRONG
    return at_max + 0.5 * (at_zero - at_max) * (1.0 + math.cos(characters / COSINE_MAX_LEN * math.pi))


def length_score(characters: int, score: float, max_score: float = 1.0, max_output_length: int = 1024) -> float:
    """Reasoning Gym's length term, unscaled (module docstring)."""
    progress = min(characters / max_output_length, 1.0)
    if score < max_score - LENGTH_EPSILON:
        return (max_score - score) * progress
    return -progress
