"""Placing the context tokens C in the policy's input, the one place that decides where C sits and
what the KL reference sees instead (`ContextLayout`, from `adapter.context_position` and
`training.reference_context`). Generation, every log-prob pass (policy, old policy, reference) and
`musketeers eval` all go through it; the no-C reward of Figure 5 samples the prompt alone (no slots).

Positions, for a left-padded prompt row [pads][x_0 x_1 ... x_k] (x: the templated prompt):
  after_first  [pads][x_0][C][x_1 ... x_k]   the default: C follows the first prompt token
  prefix       [pads][C][x_0 ... x_k]        the paper's section 4.1 ("prefix-style conditioning")
  suffix       [pads][x_0 ... x_k][C]        eq. 3 written literally, pi(y | [x || C])
Real models keep an attention sink on their first token: a (near-)zero vector in its place breaks it
(SmolLM2-135M: KL 0.2-0.5 between C ~ 1e-4 and C = 0 there, 5e-6 one token later; docs/step0.md).
So the default keeps x_0 first and lets the near-zero C of step 0 be almost invisible.

Reference (the KL term's pi_ref is the frozen initial policy, LoRA disabled):
  zeros  zero vectors where C sits, the same token layout (paper section 4.1): at step 0 the policy's
         C ~ 1e-4 and the reference's 0 differ by almost nothing, so the KL starts at ~0
  none   no context tokens at all, pi_ref(y | x) (eq. 4 read literally)

C always sits after the pads, next to its prompt, never before them: RoPE attention depends on
position differences, and C placed before the pads would sit a pad-count-dependent distance away from
its prompt (docs/environment.md: about 3e-3 logit error, measured). Positions are given explicitly as
cumsum(mask) - 1, as `generate` derives them, so generation and every log-prob pass see identical
positions, for absolute-position models (GPT-2) too.

It imports only the config (the layout names); generation and the trainer place C with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from musketeers.config import CONTEXT_POSITIONS, REFERENCE_CONTEXTS


@dataclass(frozen=True)
class ContextLayout:
    """Where C goes in the prompt and what the reference sees in its place (module docstring)."""

    position: str = "after_first"
    reference: str = "zeros"

    def __post_init__(self):
        if self.position not in CONTEXT_POSITIONS:
            raise ValueError(f"context position {self.position!r} is not one of {', '.join(CONTEXT_POSITIONS)}")
        if self.reference not in REFERENCE_CONTEXTS:
            raise ValueError(f"reference context {self.reference!r} is not one of {', '.join(REFERENCE_CONTEXTS)}")

    def slot(self, prompt_mask: Tensor) -> Tensor:
        """[B]: the column of each left-padded prompt row [B, P] that C is inserted before."""
        pads = leading_pads(prompt_mask)
        if self.position == "prefix":
            return pads
        if self.position == "after_first":
            return (pads + 1).clamp(max=prompt_mask.shape[1])
        return torch.full_like(pads, prompt_mask.shape[1])  # suffix: after the last prompt token

    def reference_context(self, context: Tensor) -> Tensor | None:
        """What the KL reference policy sees instead of C: zeros, or no tokens."""
        return torch.zeros_like(context) if self.reference == "zeros" else None


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that count only attended tokens: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def insert_context(embeds: Tensor, attention_mask: Tensor, context: Tensor, slot: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Insert context [B, m, D] into left-padded embeds [B, L, D] before column slot[b] of each row
    (`ContextLayout.slot`). Returns embeds [B, L+m, D], the attention mask [B, L+m] (context
    attended) and position ids [B, L+m].
    """
    B, L, _ = embeds.shape
    m = context.shape[1]
    if context.shape[0] != B:
        raise ValueError(f"context has {context.shape[0]} rows for a batch of {B}")
    j = torch.arange(L + m, device=embeds.device).unsqueeze(0)  # [1, L+m] target positions
    p = slot.to(embeds.device).unsqueeze(1)  # [B, 1]
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
                          eos_ids: list[int], layout: ContextLayout, cache: str = "dynamic",
                          **generate_kwargs) -> list[list[int]]:
    """New tokens generated from the prompt with C placed as `layout` says (left-padded ids/mask
    [B, P], context [B, m, D]; None: the plain prompt), each row cut after its first EOS.

    cache "dynamic": a GRPO batch holds each prompt G times, so the prompt is run once per distinct
    row, its KV cache copied to the G rows, and `generate` goes on from the cache with the last input
    position (its positions come from the mask, as in `positions_from_mask`); HF `generate` would
    prefill every copy. cache "static": HF's static KV cache, whose decoding step transformers
    compiles on CUDA; it prefills every row. Both give the same tokens (tested).
    """
    if ids.shape[1] == 1 and context is None:  # nothing to prefill
        return cut_at_eos(model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs)[:, 1:], eos_ids)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        if context is not None:
            embeds, mask, _ = insert_context(embeds, mask, context.to(ids.device), layout.slot(mask))
        if cache == "static":
            return cut_at_eos(model.generate(inputs_embeds=embeds, attention_mask=mask, cache_implementation="static",
                                             **generate_kwargs), eos_ids)
        first, copies = distinct_rows(ids, context)
        prefix_mask = mask[first, :-1]
        kv = model(inputs_embeds=embeds[first, :-1], attention_mask=prefix_mask,
                   position_ids=positions_from_mask(prefix_mask), use_cache=True, logits_to_keep=1).past_key_values
        kv.batch_select_indices(copies.to(ids.device))
        # with inputs_embeds, generate feeds only the uncached last position and returns only new tokens
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, past_key_values=kv, **generate_kwargs)
    return cut_at_eos(out, eos_ids)


def distinct_rows(ids: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
    """first [U]: one row index per distinct (prompt, context) row; copies [B]: each row's entry in first."""
    _, copies = torch.unique(ids, dim=0, return_inverse=True)
    first = torch.full((int(copies.max()) + 1,), ids.shape[0], device=ids.device)
    first = first.scatter_reduce(0, copies, torch.arange(ids.shape[0], device=ids.device), reduce="amin")
    if context is not None and not torch.equal(context[first[copies]], context):  # same prompt, different C
        first = copies = torch.arange(ids.shape[0], device=ids.device)
    return first, copies
