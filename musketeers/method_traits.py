"""What each method the paper compares is, as plain data: its name, how the paper's tables label it,
its row in Table 1, and what it needs (the expert team, a sentence encoder, context tokens C).

This is a leaf: it imports nothing of the project, so the config (which validates `method` against
these names), the run directory, the run store and the report read it without loading the registry
that builds adapters (musketeers/methods.py, whose classes take their traits from here by name).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodTraits:
    name: str
    label: str                    # as the paper's tables name it
    table_row: int                # its row in the paper's Table 1 (reports keep that order)
    experts: bool = True          # runs the expert team
    encoder: bool = False         # a frozen sentence encoder reads the question (hard routing)
    context_tokens: bool = False  # a trainable g_phi gives the policy context tokens C


METHOD_TRAITS: dict[str, MethodTraits] = {t.name: t for t in (
    MethodTraits("perceiver", "perceiver", 4, context_tokens=True),
    MethodTraits("ffn", "w/o cross-attn", 3, context_tokens=True),
    MethodTraits("hard_routing", "hard routing", 1, encoder=True, context_tokens=True),
    MethodTraits("text_hints", "output collaboration", 2),
    MethodTraits("single", "single", 0, experts=False),
)}
