"""Which hidden state stands for a prompt: pooling over tokens and layers of one expert forward.

Poolings (docs/method.md and the paper's Table 2 ablation):
    last_token    final layer, last real token (the default)
    first_token   final layer, first real token
    random_token  final layer, a random real token
    first_layer   embedding output (hidden_states[0]), last real token
    random_layer  a random layer in 0..L (0 = embeddings), last real token

"Random" is a per-prompt choice derived from a hash of (seed, expert name, prompt), where the worker
names the prompt by its cache key (the hash of the token ids it reads): the same prompt always gets
the same token or layer, alone or in any batch, in any process. (Python's `hash()` is salted per
process, so we use sha256.)

Of the project it imports only experts.config.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from experts.config import POOLINGS  # the one list of poolings


def prompt_choice(seed: int, expert: str, question: str) -> int:
    """A reproducible 64-bit number for one (seed, expert, prompt); poolings take it modulo a range."""
    digest = hashlib.sha256(f"{seed}\0{expert}\0{question}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def uses_seed(pooling: str) -> bool:
    """Whether a pooling's choice depends on the seed (so its states do, and their cache key must)."""
    return pooling in ("random_token", "random_layer")


def needs_all_layers(pooling: str) -> bool:
    """Whether a pooling reads a layer other than the final one (so the forward must keep them all)."""
    return pooling in ("first_layer", "random_layer")


def token_positions(mask: torch.Tensor, pooling: str, choices: Sequence[int]) -> list[int]:
    """Index of the pooled token in each row of a padded batch, found from the attention mask,
    so that left and right padding give the same token."""
    positions = []
    for row, choice in zip(mask, choices):
        real = row.nonzero().squeeze(-1)  # indices of the real (unpadded) tokens
        if pooling == "first_token":
            positions.append(int(real[0]))
        elif pooling == "random_token":
            positions.append(int(real[choice % len(real)]))
        else:
            positions.append(int(real[-1]))
    return positions


def layer_indices(num_states: int, pooling: str, choices: Sequence[int]) -> list[int]:
    """Index into `hidden_states` (num_states = L + 1 entries, 0 = embeddings) for each row."""
    if pooling == "first_layer":
        return [0] * len(choices)
    if pooling == "random_layer":
        return [choice % num_states for choice in choices]
    return [num_states - 1] * len(choices)


def pool_hidden_states(hidden_states: Sequence[torch.Tensor], mask: torch.Tensor, pooling: str,
                       choices: Sequence[int]) -> torch.Tensor:
    """One vector per row: hidden_states is the model's tuple of [B, T, d] tensors (or just the final
    layer's, in a 1-tuple, for poolings that only read the final layer); mask is [B, T]."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    positions = token_positions(mask, pooling, choices)
    layers = layer_indices(len(hidden_states), pooling, choices)
    rows = [hidden_states[layer][i, pos] for i, (layer, pos) in enumerate(zip(layers, positions))]
    return torch.stack(rows)
