"""Reasoning Gym's format reward (reasoning-gym training/rewards/reward.py, "format"): its check, our code.

A text has the format when all of these hold:
  1. it begins, after optional whitespace, with <think>, and somewhere after the first </think>
     that follows comes (after optional whitespace) <answer> ... </answer>; anything may follow;
  2. read left to right, it holds exactly one <think>...</think> block and exactly one
     <answer>...</answer> block (each block ends at the first closing tag after its opening tag);
  3. neither block's content contains "<think>" or "<answer>".
A reply cut off before </answer> does not have it. preappend_thinking_token (Reasoning Gym's option
for prompts that end with "<think>") prepends "<think>" before the check.

The text checked is the assistant's reply: task.assistant_prefill + the completion (rewards/functions.py
format_reward). A prefill of "<think>" therefore does what preappend_thinking_token does, and the two
together would check "<think><think>..." (musketeers/config_checks.py refuses that); a prefill of "<answer>"
makes the format impossible (the reply must open with <think>).

It imports nothing of the project (a leaf of rewards/).
"""

import re

THINK_TOKEN = "<think>"
_LAYOUT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)  # matched at the start only
_BLOCKS = {tag: re.compile(f"<{tag}>(.*?)</{tag}>", re.DOTALL) for tag in ("think", "answer")}
_OPENING_TAGS = ("<think>", "<answer>")


def has_think_answer_format(text: str) -> bool:
    """True if `text` opens with one <think> block followed by one <answer> block (module docstring)."""
    if _LAYOUT.match(text) is None:
        return False
    blocks = [_BLOCKS[tag].findall(text) for tag in ("think", "answer")]
    if any(len(found) != 1 for found in blocks):
        return False
    return not any(tag in found[0] for found in blocks for tag in _OPENING_TAGS)


def format_score(reply: str, preappend_thinking_token: bool = False) -> float:
    """Reasoning Gym's format term, unscaled: 1.0 if the reply has the format, else 0.0."""
    return float(has_think_answer_format(THINK_TOKEN + reply if preappend_thinking_token else reply))
