"""How a model reads a question: a system prompt and the question through the tokenizer's chat
template (a plain layout where it has none), up to where the assistant's answer starts.

An expert reads exactly this; the learner's prompts (musketeers.data.build_prompt) are this, with
expert hints added to the question and the assistant prefill after it.
"""

from __future__ import annotations

from typing import Any


def chat_prompt(question: str, tokenizer: Any, system: str | None) -> str:
    """The prompt text of one question (no system message when `system` is None or empty)."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return (f"{system.rstrip()}\n\n" if system else "") + f"User: {question}\nAssistant: "
