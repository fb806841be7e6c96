"""From a batch of questions to what the policy is conditioned on, for every method.

    conditioner = build_conditioner(cfg, policy_dim, policy_tokenizer)  # pool, g_phi, encoder
    cond = conditioner.prepare(questions, training=True)   # experts run here, once per distinct question
    cond.context        # [B, m, D] context tokens C for generation, one row per question row (None: no C)
    cond.prompts        # rewritten prompts (text_hints), else None
    cond.stored         # typed tensors that let the loss pass rebuild C with gradients
    conditioner.context(cond.stored, training=True)         # C again, differentiable in phi
    conditioner.layout  # where C sits in the prompt, what the reference sees instead (context.py)

What each method does is in musketeers/methods.py; this module runs it and logs its routing.
Experts are frozen and their pooled states depend only on (expert, pooling, prompt), so they are
computed once, here; the loss pass recomputes only the adapter from the stored states.

It may import config, context, data, methods, metrics and experts/ (layer 4 of musketeers/layers.py);
generation, the trainer and the commands import it.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from musketeers.config import RunConfig
from musketeers.context import ContextLayout
from musketeers.methods import METHODS, Conditioning, Method, RowTensors
from musketeers.metrics import routing_entropy, selection_frequencies, utilisation


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
    """Owns the method's pieces: the expert pool, the trainable adapter g_phi, the router encoder,
    and where C sits in the prompt (`layout`)."""

    def __init__(self, cfg: RunConfig, pool=None, adapter: nn.Module | None = None,
                 encoder: SentenceEncoder | None = None, tokenizer=None):
        self.method: Method = METHODS[cfg.method]
        self.task, self.hint_max_tokens = cfg.task, cfg.adapter.hint_max_tokens
        self.pool, self.adapter, self.encoder, self.tokenizer = pool, adapter, encoder, tokenizer
        self.layout = ContextLayout(cfg.adapter.context_position, cfg.training.reference_context)
        self.names = pool.names if pool is not None else []
        self.timings: dict[str, float] = {}
        if self.method.context_tokens and adapter is None:
            raise ValueError(f"method {self.method.name!r} needs an adapter")
        if self.method.encoder and encoder is None:
            raise ValueError(f"method {self.method.name!r} needs a sentence encoder")

    @property
    def uses_context(self) -> bool:
        return self.method.context_tokens

    @property
    def device(self) -> torch.device:
        return next(self.adapter.parameters()).device

    def prepare(self, questions: list[str], training: bool) -> Conditioning:
        """Run the experts (no gradients) and build the generation-time conditioning of each row.

        The method runs once per distinct question (TRL's batch holds each prompt G times), and its
        result is repeated for the rows: the G completions of a group see the same C, bit for bit, and
        hard routing draws one expert per prompt. Routing metrics are means over distinct prompts."""
        start = time.perf_counter()
        index = {q: k for k, q in enumerate(dict.fromkeys(questions))}
        cond = self.method.prepare(self, list(index), training)
        if self.uses_context:
            with torch.no_grad():
                out = self.method.adapter_output(self.adapter, cond.stored, training)
            cond.context = out.context
            cond.metrics.update(self._routing_metrics(out))
        self.timings["experts"] = time.perf_counter() - start
        return cond.for_rows([index[q] for q in questions])

    def context(self, stored: RowTensors, training: bool) -> Tensor:
        """C from the stored tensors, differentiable in the adapter's parameters."""
        return self.method.adapter_output(self.adapter, stored, training).context

    def _routing_metrics(self, out) -> dict[str, float]:
        saturation = {} if out.saturation is None else {"adapter/saturation": float(out.saturation)}
        return {**saturation, **self._routing(out)}

    def _routing(self, out) -> dict[str, float]:
        if out.attention is not None:  # eq. 15
            metrics = {"routing/entropy": routing_entropy(out.attention)}
            if out.head_attention is not None:  # A can look spread while every head is one-hot
                metrics["routing/head_entropy"] = routing_entropy(out.head_attention.flatten(1, 2))
            u = utilisation(out.attention)
            metrics.update({f"routing/utilisation/{name}": float(u[i]) for i, name in enumerate(self.names)})
            return metrics
        if out.selection is not None:
            f = selection_frequencies(out.selection)
            return {f"routing/frequency/{name}": float(f[i]) for i, name in enumerate(self.names)}
        return {}


def start_experts(cfg: RunConfig):
    """The run's expert pool (None for methods without experts), its Ray experts still loading in their
    actors when this returns, so that the caller can load the policy meanwhile."""
    if not METHODS[cfg.method].experts:
        return None
    from experts.pool import ExpertPool
    from musketeers.data import system_prompt

    return ExpertPool(cfg.team, system_prompt(cfg.task), seed=cfg.seed, wait=False, answers=oracle_answers(cfg))


def oracle_answers(cfg: RunConfig):
    """The task's answer table when the team has an oracle expert (experts/oracle.py), else None."""
    from experts.oracle import oracle_kind
    from musketeers.data import answer_table

    return answer_table(cfg.task) if any(oracle_kind(e.model) for e in cfg.team.experts) else None


def build_conditioner(cfg: RunConfig, policy_dim: int, tokenizer, device: str | torch.device = "cpu",
                      pool=None) -> Conditioner:
    """Expert pool (`pool`, from start_experts, else started here), adapter g_phi and router encoder for
    the configured method (policy_dim: the policy's embedding size, the width of C)."""
    method = METHODS[cfg.method]
    if not method.experts:
        return Conditioner(cfg, tokenizer=tokenizer)
    from experts.models import load_model

    pool = pool or start_experts(cfg)
    encoder = None
    if method.encoder:
        encoder = SentenceEncoder(*load_model(cfg.adapter.router_encoder, causal_lm=False, device=device))
    adapter = method.build_adapter(pool.hidden_sizes, policy_dim, cfg.adapter, encoder.dim if encoder else None)
    return Conditioner(cfg, pool, adapter, encoder, tokenizer)


def precompute_states(cfg: RunConfig, batch_size: int = 64, progress: bool = True) -> dict[str, dict[str, int]]:
    """Every pooled state of the task's training and evaluation prompts, computed once into the team's
    disk cache (team.cache_dir): a run whose states are all there never loads an expert model. The
    key is the hash of the token ids each expert reads (template, system prompt, date) within a directory
    per expert, dtype, pooling and (random poolings only) seed, so the runs of every method and seed share it. Returns each expert's cache counts."""
    from tqdm import tqdm

    from experts.pool import ExpertPool
    from musketeers.config import ConfigError
    from musketeers.data import default_split, load_split, system_prompt

    if not cfg.team.cache_dir:
        raise ConfigError("team.cache_dir: experts precompute fills the team's disk cache; set team.cache_dir=DIR")
    with ExpertPool(cfg.team, system_prompt(cfg.task), seed=cfg.seed, answers=oracle_answers(cfg)) as pool:
        for split in ("train", default_split(cfg)):
            rows = load_split(cfg.task, split)
            with tqdm(total=len(rows), desc=f"expert states, {split}", unit="prompt", disable=not progress) as bar:
                for s in range(0, len(rows), batch_size):
                    batch = [rows[k]["question"] for k in range(s, min(s + batch_size, len(rows)))]
                    pool.encode(batch)
                    bar.update(len(batch))
        return {**pool.stats, "models_loaded": pool.loads}
