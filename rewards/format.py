"""Format reward (DeepSeekZero format), optional: weight 0 by default, as in the paper.

The text checked is prefill + completion. It has the format when it is, in full,

    <think>REASONING</think>  <answer>ANSWER</answer>

with only whitespace allowed before <think>, between </think> and <answer>, and after
</answer>. REASONING and ANSWER may be empty or span lines, but may not contain the tags of
their own block (REASONING has no <think> or </think>, ANSWER no <answer> or </answer>), so
exactly one think block followed by exactly one answer block matches. A completion cut off
before </answer> does not match.
"""

import re

FORMAT_PATTERN = re.compile(
    r"\s*<think>(?:(?!</?think>).)*</think>\s*<answer>(?:(?!</?answer>).)*</answer>\s*",
    re.DOTALL,
)


def has_format(text: str) -> bool:
    """True if `text` is exactly one <think> block followed by one <answer> block."""
    return FORMAT_PATTERN.fullmatch(text) is not None


def score_format(completion: str) -> float:
    """1.0 if the (prefilled) completion has the DeepSeekZero format, else 0.0."""
    return float(has_format(completion))
