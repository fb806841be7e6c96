"""Placing the context tokens C in the policy's input: [pads][C][prompt][completion].

With a left-padded batch the context must sit after the pads, next to its prompt, not before the
pads: RoPE attention depends on position differences, and C placed before the pads would sit a
pad-count-dependent distance away from its prompt (DESIGN.md: about 3e-3 logit error, measured).
Positions are given explicitly as cumsum(mask) - 1, as `generate` derives them, so generation and
every log-prob pass (policy, old policy, reference) see identical positions, for absolute-position
models (GPT-2) too.
"""

from __future__ import annotations

import torch
from torch import Tensor


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that count only attended tokens: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def insert_context(embeds: Tensor, attention_mask: Tensor, context: Tensor, num_pads: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Insert context [B, m, D] into left-padded embeds [B, L, D] right after each row's pads.

    num_pads [B]: leading pad count of each row. Returns embeds [B, L+m, D], the attention mask
    [B, L+m] (context attended) and position ids [B, L+m].
    """
    B, L, _ = embeds.shape
    m = context.shape[1]
    if context.shape[0] != B:
        raise ValueError(f"context has {context.shape[0]} rows for a batch of {B}")
    j = torch.arange(L + m, device=embeds.device).unsqueeze(0)  # [1, L+m] target positions
    p = num_pads.to(embeds.device).unsqueeze(1)  # [B, 1]
    # target j takes token j (j < p), context j - p (p <= j < p + m), or token j - m (after the context)
    source = torch.where(j < p, j, torch.where(j < p + m, L + (j - p), j - m))  # index into [tokens | context]
    pool = torch.cat([embeds, context.to(embeds.dtype)], dim=1)  # [B, L+m, D]
    new_embeds = pool.gather(1, source.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    mask_pool = torch.cat([attention_mask, attention_mask.new_ones(B, m)], dim=1)
    new_mask = mask_pool.gather(1, source)
    return new_embeds, new_mask, positions_from_mask(new_mask)


def leading_pads(prompt_mask: Tensor) -> Tensor:
    """Number of left pads per row of a left-padded prompt mask [B, P]."""
    return prompt_mask.shape[1] - prompt_mask.long().sum(-1)


def cut_at_eos(completion_ids: torch.Tensor, eos_ids: list[int]) -> list[list[int]]:
    """Each row up to and including its first EOS."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device))
    lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, completion_ids.shape[1])
    return [row[:n].tolist() for row, n in zip(completion_ids.cpu(), lengths.tolist())]


def generate_with_context(model, ids: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None,
                          eos_ids: list[int], **generate_kwargs) -> list[list[int]]:
    """New tokens generated from [pads][C][prompt] (left-padded ids/mask [B, P], context [B, m, D];
    None: the plain prompt), each row cut after its first EOS.

    A GRPO batch holds each prompt G times: the prompt is run once per distinct row, its KV cache
    copied to the G rows, and `generate` goes on from the cache (its positions come from the mask,
    as in `positions_from_mask`). HF `generate` would prefill every copy. (In train mode the G copies
    thus share the LoRA-dropout mask of the prompt's positions.)
    """
    if ids.shape[1] == 1 and context is None:  # nothing to prefill
        return cut_at_eos(model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs)[:, 1:], eos_ids)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        if context is not None:
            embeds, mask, _ = insert_context(embeds, mask, context.to(ids.device), leading_pads(mask))
        first, copies = distinct_rows(ids, context)
        prefix_mask = mask[first, :-1]
        cache = model(inputs_embeds=embeds[first, :-1], attention_mask=prefix_mask,
                      position_ids=positions_from_mask(prefix_mask), use_cache=True, logits_to_keep=1).past_key_values
        cache.batch_select_indices(copies.to(ids.device))
        input_ids = ids.new_zeros(mask.shape)  # only the last column is read: the rest is in the cache
        input_ids[:, -1] = ids[:, -1]
        out = model.generate(input_ids=input_ids, attention_mask=mask, past_key_values=cache, **generate_kwargs)
    return cut_at_eos(out[:, mask.shape[1]:], eos_ids)


def distinct_rows(ids: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
    """first [U]: one row index per distinct (prompt, context) row; copies [B]: each row's entry in first."""
    _, copies = torch.unique(ids, dim=0, return_inverse=True)
    first = torch.full((int(copies.max()) + 1,), ids.shape[0], device=ids.device)
    first = first.scatter_reduce(0, copies, torch.arange(ids.shape[0], device=ids.device), reduce="amin")
    if context is not None and not torch.equal(context[first[copies]], context):  # same prompt, different C
        first = copies = torch.arange(ids.shape[0], device=ids.device)
    return first, copies
