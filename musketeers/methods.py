"""The methods the paper compares, one class each, in one registry (docs/method.md).

A method declares what it needs and builds its conditioning through one signature:

    method = METHODS[cfg.method]
    method.experts, method.encoder, method.context_tokens   # needs the team / a sentence encoder; gives C
    adapter = method.build_adapter(expert_dims, policy_dim, cfg.adapter, encoder_dim)   # g_phi, or None
    cond = method.prepare(conditioner, prompts, training)   # distinct questions; the experts run here, no gradients
    out = method.adapter_output(adapter, cond.stored, training)  # C from the stored states, with gradients

Adding a method is one class here, its line in METHODS and its traits in musketeers/method_traits.py
(name, label, what it needs); nothing else dispatches on its name.
A method prepares each distinct question once; the conditioner repeats the result for the G rows
(completions) of its GRPO group (`Conditioning.for_rows`). What a method stores for the loss pass is a
typed `RowTensors`, one row per completion after that, carried through TRL's batch dict, which
shuffles and splits it with the batch.

It may import method_traits, config, data and adapters (layer 3 of musketeers/layers.py), never
conditioning, which runs it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from musketeers.method_traits import METHOD_TRAITS

if TYPE_CHECKING:  # torch is imported where it is used
    from torch import Tensor, nn

    from musketeers.adapters import AdapterOutput
    from musketeers.config import AdapterConfig


# ----------------------------------------------------------------------------- what the loss pass gets


class RowTensors:
    """A dataclass of tensors (or tuples of tensors) with one row per completion.

    TRL's batch dict shuffles a value that is not a tensor row by row (value[i], giving a list)
    and splits it in slices (value[a:b], `ndim` > 0); `collate` turns either back into one object.
    """

    ndim = 1

    def __len__(self) -> int:
        first = getattr(self, dataclasses.fields(self)[0].name)
        return len(first[0] if isinstance(first, tuple) else first)

    def __getitem__(self, index) -> RowTensors:
        def take(v):
            return tuple(t[index] for t in v) if isinstance(v, tuple) else v[index]

        return dataclasses.replace(self, **{f.name: take(getattr(self, f.name)) for f in dataclasses.fields(self)})

    @staticmethod
    def collate(value: RowTensors | list[RowTensors]) -> RowTensors:
        """One object from what TRL hands back: the object itself (split) or a list of rows (shuffled)."""
        if not isinstance(value, list):
            return value
        import torch

        def stack(vs):
            return tuple(torch.stack(t) for t in zip(*vs)) if isinstance(vs[0], tuple) else torch.stack(vs)

        names = [f.name for f in dataclasses.fields(value[0])]
        return dataclasses.replace(value[0], **{n: stack([getattr(row, n) for row in value]) for n in names})


@dataclass
class ExpertStates(RowTensors):
    """The pooled state h_i of every expert: states[i] is [rows, d_i]."""

    states: tuple[Tensor, ...]


@dataclass
class RoutedState(RowTensors):
    """Hard routing, per completion row: the router's input [rows, e], its prompt's Gumbel noise [rows, n]
    and chosen expert [rows] (the same on the G rows of a prompt), and that expert's state zero-padded to
    the widest expert [rows, max d_i]. The loss pass takes the choice from here, not from a new argmax."""

    router_input: Tensor
    gumbel_noise: Tensor
    choice: Tensor
    selected_state: Tensor


@dataclass
class Conditioning:
    """What a batch of questions conditions the policy on."""

    context: Tensor | None = None      # [B, m, D] context tokens C for generation (None: no C)
    prompts: list[str] | None = None   # rewritten prompts (text_hints), else None
    stored: RowTensors | None = None   # what the loss pass rebuilds C from, with gradients
    metrics: dict[str, float] = field(default_factory=dict)

    def for_rows(self, index: list[int]) -> Conditioning:
        """The conditioning of each batch row: row r is prompt index[r] (metrics stay per prompt)."""
        import torch

        at = torch.tensor(index, device=None if self.context is None else self.context.device)
        return dataclasses.replace(self, context=None if self.context is None else self.context[at],
                                   prompts=None if self.prompts is None else [self.prompts[k] for k in index],
                                   stored=None if self.stored is None else self.stored[at])


# ----------------------------------------------------------------------------- methods


class Method:
    """One method's behaviour; what it is and needs (label, table_row, experts, encoder, context_tokens)
    is its entry in musketeers.method_traits.METHOD_TRAITS, read through the properties below.
    `conditioner` below is the musketeers.conditioning.Conditioner that runs the method."""

    name: ClassVar[str]

    @property
    def label(self) -> str:
        return METHOD_TRAITS[self.name].label

    @property
    def table_row(self) -> int:
        return METHOD_TRAITS[self.name].table_row

    @property
    def experts(self) -> bool:
        return METHOD_TRAITS[self.name].experts

    @property
    def encoder(self) -> bool:
        return METHOD_TRAITS[self.name].encoder

    @property
    def context_tokens(self) -> bool:
        return METHOD_TRAITS[self.name].context_tokens

    def build_adapter(self, expert_dims: list[int], out_dim: int, cfg: AdapterConfig,
                      encoder_dim: int | None = None) -> nn.Module | None:
        """The trainable g_phi, or None for methods without one."""
        return None

    def prepare(self, conditioner, questions: list[str], training: bool) -> Conditioning:
        """Run what the method needs for these distinct questions (no gradients), one entry each; C is
        added by the conditioner."""
        return Conditioning()

    def adapter_output(self, adapter: nn.Module, stored: RowTensors, training: bool) -> AdapterOutput:
        """C (and routing weights) from the stored tensors, differentiable in g_phi's parameters."""
        raise NotImplementedError(f"method {self.name!r} has no context tokens")


class Single(Method):
    name = "single"


class TextHints(Method):
    """Output-level collaboration (eq. 12): each expert writes a hint of at most hint_max_tokens; the
    hints go verbatim into an "[Expert Hints]" block before the question (musketeers.data.build_prompt).
    No trainable parameters."""

    name = "text_hints"

    def prepare(self, conditioner, questions, training):
        from musketeers.data import build_prompt

        hints = conditioner.pool.generate_hints(questions, conditioner.hint_max_tokens)  # [expert][question]
        names = conditioner.names
        return Conditioning(prompts=[build_prompt(q, conditioner.tokenizer, conditioner.task,
                                                  [(name, hints[e][k]) for e, name in enumerate(names)])
                                     for k, q in enumerate(questions)])


class Perceiver(Method):
    """The paper's method: m latent queries cross-attend over the n expert states (eqs. 6-11, 16)."""

    name = "perceiver"

    def build_adapter(self, expert_dims, out_dim, cfg, encoder_dim=None):
        from musketeers.adapters import PerceiverAdapter

        return PerceiverAdapter(expert_dims, out_dim, cfg.latent_dim, cfg.num_queries, cfg.num_heads,
                                state_norm=cfg.state_norm, init_scale=cfg.init_scale)

    def prepare(self, conditioner, questions, training):
        device = conditioner.device
        return Conditioning(stored=ExpertStates(tuple(s.to(device) for s in conditioner.pool.encode(questions))))

    def adapter_output(self, adapter, stored, training):
        return adapter(list(stored.states))


class FFN(Perceiver):
    """Without cross-attention (eq. 14): one context token per expert, FFN(V)."""

    name = "ffn"

    def build_adapter(self, expert_dims, out_dim, cfg, encoder_dim=None):
        from musketeers.adapters import FFNAdapter

        return FFNAdapter(expert_dims, out_dim, cfg.latent_dim, state_norm=cfg.state_norm, init_scale=cfg.init_scale)


class HardRouting(Method):
    """Top-1 routing (eq. 13): a sentence encoder and a router head pick one expert per prompt; only
    that expert runs, and its state becomes one memory token.

    Training draws Gumbel noise once per distinct prompt of the generation round (`prepare` sees each
    once; torch's generator, seeded by the run and restored with checkpoints), so the G completions
    of a GRPO group all see the expert of one straight-through Gumbel-softmax sample (two groups of
    one question in the same round share it); a prompt met again in a later round gets a new draw.
    Evaluation takes the argmax. The loss pass keeps the stored choice as the forward value, so every
    row is scored with the expert its completion was sampled with, whatever the router has learned
    since; the gradient is the soft sample's, from the stored noise."""

    name = "hard_routing"

    def build_adapter(self, expert_dims, out_dim, cfg, encoder_dim=None):
        from musketeers.adapters import HardRouter

        if encoder_dim is None:
            raise ValueError("hard_routing needs encoder_dim (the sentence encoder's embedding size)")
        return HardRouter(encoder_dim, expert_dims, out_dim, cfg.latent_dim, cfg.gumbel_temperature,
                          state_norm=cfg.state_norm, init_scale=cfg.init_scale)

    def prepare(self, conditioner, questions, training):
        import torch

        from musketeers.adapters import HardRouter

        router, device = conditioner.adapter, conditioner.device
        embeddings = conditioner.encoder(questions).to(device)
        noise = HardRouter.sample_noise((len(questions), router.num_experts), device)  # one draw per prompt
        with torch.no_grad():
            one_hot, _ = router.select(embeddings, training=training, noise=noise)
        selected = torch.zeros(len(questions), max(router.expert_dims), device=device)
        for i, rows in HardRouter.groups(one_hot).items():
            states = conditioner.pool.encode_expert(i, [questions[r] for r in rows.tolist()])
            selected[rows, : states.shape[1]] = states.to(device)
        return Conditioning(stored=RoutedState(embeddings, noise, one_hot.argmax(-1), selected))

    def adapter_output(self, adapter, stored, training):
        import torch.nn.functional as F

        from musketeers.adapters import HardRouter

        sample, logits = adapter.select(stored.router_input, training=training, noise=stored.gumbel_noise if training else None)
        # value: exactly the stored one-hot; gradient: the soft sample's (sample - sample.detach() is 0 in value)
        one_hot = F.one_hot(stored.choice, adapter.num_experts).to(sample) + (sample - sample.detach())
        states = {i: stored.selected_state[rows, : adapter.expert_dims[i]] for i, rows in HardRouter.groups(one_hot).items()}
        return adapter(one_hot, states, logits)


METHODS: dict[str, Method] = {m.name: m for m in (Perceiver(), FFN(), HardRouting(), TextHints(), Single())}
assert tuple(METHODS) == tuple(METHOD_TRAITS), "methods.py and method_traits.py list the same methods, in one order"
