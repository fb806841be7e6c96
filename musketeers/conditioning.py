"""From a batch of questions to what the policy is conditioned on, for every method.

    conditioner = Conditioner(cfg, pool, adapter, encoder, policy_tokenizer)
    cond = conditioner.prepare(questions, training=True)   # experts run here, no gradients
    cond.context        # [B, m, D] context tokens C for generation (None: no context tokens)
    conditioner.layout  # where C sits in the prompt, what the reference sees instead (context.py)
    cond.prompts        # rewritten prompts (text_hints), else None
    cond.stored         # tensors that let the loss pass rebuild C with gradients
    conditioner.context(cond.stored, training=True)         # C again, differentiable in phi

Experts are frozen and their pooled states depend only on (expert, pooling, prompt), so they are
computed once, here; the loss pass recomputes only the adapter from the stored states.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from musketeers.adapters import HardRouter
from musketeers.config import RunConfig
from musketeers.context import ContextLayout
from musketeers.data import build_prompt
from musketeers.metrics import routing_entropy, selection_frequencies, utilisation

CONTEXT_METHODS = ("perceiver", "ffn", "hard_routing")
ROUTING_KEYS = ("router_input", "gumbel_noise", "selected_state")  # stored by hard routing


@dataclass
class Conditioning:
    context: Tensor | None = None
    prompts: list[str] | None = None
    stored: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class SentenceEncoder(nn.Module):
    """Frozen sentence encoder for hard routing (all-MiniLM-L6-v2): mean-pooled, L2-normalised
    token states, as sentence-transformers pools that model."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 256):
        super().__init__()
        self.model, self.tokenizer, self.max_length = model.eval().requires_grad_(False), tokenizer, max_length
        self.dim = model.config.hidden_size

    @torch.no_grad()
    def forward(self, texts: list[str]) -> Tensor:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(device)
        states = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        return nn.functional.normalize(pooled, dim=-1).float()


class Conditioner:
    """Owns the method's pieces: the expert pool, the trainable adapter g_phi, the router encoder."""

    def __init__(self, cfg: RunConfig, pool=None, adapter: nn.Module | None = None,
                 encoder: SentenceEncoder | None = None, tokenizer=None):
        self.method, self.task = cfg.method, cfg.task
        self.hint_max_tokens = cfg.adapter.hint_max_tokens
        self.pool, self.adapter, self.encoder, self.tokenizer = pool, adapter, encoder, tokenizer
        self.layout = ContextLayout(cfg.adapter.context_position, cfg.training.reference_context)  # where C sits
        self.names = pool.names if pool is not None else []
        self.timings: dict[str, float] = {}
        if self.method in CONTEXT_METHODS and adapter is None:
            raise ValueError(f"method {self.method!r} needs an adapter")
        if self.method == "hard_routing" and encoder is None:
            raise ValueError("method 'hard_routing' needs a sentence encoder")

    @property
    def uses_context(self) -> bool:
        return self.method in CONTEXT_METHODS

    @property
    def device(self) -> torch.device:
        return next(self.adapter.parameters()).device

    def prepare(self, questions: list[str], training: bool) -> Conditioning:
        """Run the experts (no gradients) and build the generation-time conditioning."""
        start = time.perf_counter()
        if self.method == "single":
            cond = Conditioning()
        elif self.method == "text_hints":
            cond = self._hints(questions)
        elif self.method == "hard_routing":
            cond = self._hard_routing(questions, training)
        else:
            states = self.pool.encode(questions)
            cond = Conditioning(stored={f"expert_state_{i}": s.to(self.device) for i, s in enumerate(states)})
        if self.uses_context:
            with torch.no_grad():
                out = self._adapter_output(cond.stored, training)
            cond.context = out.context
            cond.metrics.update(self._routing_metrics(out))
        self.timings["experts"] = time.perf_counter() - start
        return cond

    @staticmethod
    def stored_part(batch: dict) -> dict[str, Tensor]:
        """The tensors prepare() stored, picked out of a (split, shuffled) training batch."""
        return {k: v for k, v in batch.items() if k in ROUTING_KEYS or k.startswith("expert_state_")}

    def context(self, stored: dict[str, Tensor], training: bool) -> Tensor:
        """C from the stored expert states, differentiable in the adapter's parameters."""
        return self._adapter_output(stored, training).context

    # ------------------------------------------------------------------------- methods

    def _adapter_output(self, stored: dict[str, Tensor], training: bool):
        if self.method != "hard_routing":
            return self.adapter([stored[f"expert_state_{i}"] for i in range(len(self.names))])
        noise = stored["gumbel_noise"] if training else None
        one_hot, logits = self.adapter.select(stored["router_input"], training=training, noise=noise)
        selected = stored["selected_state"]
        states = {i: selected[rows, : self.adapter.expert_dims[i]] for i, rows in HardRouter.groups(one_hot).items()}
        return self.adapter(one_hot, states, logits)

    def _hard_routing(self, questions: list[str], training: bool) -> Conditioning:
        """Route each question to one expert; only that expert runs for it (eq. 13)."""
        embeddings = self.encoder(questions).to(self.device)
        noise = HardRouter.sample_noise((len(questions), len(self.names)), self.device)
        with torch.no_grad():
            one_hot, _ = self.adapter.select(embeddings, training=training, noise=noise)
        selected = torch.zeros(len(questions), max(self.adapter.expert_dims), device=self.device)
        for i, rows in HardRouter.groups(one_hot).items():
            states = self.pool.encode_expert(i, [questions[r] for r in rows.tolist()])
            selected[rows, : states.shape[1]] = states.to(self.device)
        return Conditioning(stored={"router_input": embeddings, "gumbel_noise": noise, "selected_state": selected})

    def _hints(self, questions: list[str]) -> Conditioning:
        """Each expert writes a hint of at most hint_max_tokens; hints go verbatim into the prompt (eq. 12)."""
        unique = list(dict.fromkeys(questions))
        hints = self.pool.generate_hints(unique, self.hint_max_tokens)  # [expert][question]
        by_question = {q: [(name, hints[e][k]) for e, name in enumerate(self.names)] for k, q in enumerate(unique)}
        return Conditioning(prompts=[build_prompt(q, self.tokenizer, self.task, by_question[q]) for q in questions])

    def _routing_metrics(self, out) -> dict[str, float]:
        if out.attention is not None:  # eq. 15
            metrics = {"routing/entropy": routing_entropy(out.attention)}
            u = utilisation(out.attention)
            metrics.update({f"routing/utilisation/{name}": float(u[i]) for i, name in enumerate(self.names)})
            return metrics
        if out.selection is not None:
            f = selection_frequencies(out.selection)
            return {f"routing/frequency/{name}": float(f[i]) for i, name in enumerate(self.names)}
        return {}
