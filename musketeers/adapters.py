"""Trainable adapters g_phi: frozen expert states {h_i} -> context tokens C for the policy.

Methods (docs/method.md):
- PerceiverAdapter: the paper's method, latent queries cross-attend over the experts (eqs. 6-11, 16).
- FFNAdapter: "without cross-attention" baseline, one token per expert (eq. 14).
- HardRouter: top-1 routing from a frozen sentence encoder, one memory token (eq. 13).
- text_hints / single: no trainable parameters.
Which method builds which adapter: musketeers/methods.py.

Every adapter returns an AdapterOutput whose `.context` [B, m, out_dim] goes in front of the prompt.
Linear maps that the equations write without a bias (W_i, W_Q, W_K, W_V, W_1, W_2) have none; the
output projection has the explicit b_out. The output projection starts near zero, so C ~ 0 at step
one (the policy starts as if it had no context) while every parameter still gets a gradient.

A leaf: torch only, nothing of the project (methods.py builds these).

Layer 0 of musketeers/layers.py: it imports nothing of the project.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# W_out ~ N(0, std^2). C' is tanh-bounded (|C'| <= 1), so |C| <= ~4 * sqrt(d) * std over all
# entries even with saturated C': 4 * sqrt(512) * 1e-6 ~ 1e-4, far below 1e-3 x an embedding row
# norm (~0.5-1 for real policies). Adam (eps 1e-6) grows W_out within a few steps.
OUT_INIT_STD = 1e-6
SATURATED = 3.0  # |pre-activation| beyond which tanh' = 1 - tanh^2 < 0.01


@dataclass
class AdapterOutput:
    context: Tensor                      # [B, m, out_dim] context tokens C
    attention: Tensor | None = None      # [B, m, n] routing weights A (perceiver only)
    head_attention: Tensor | None = None  # [B, H, m, n] each head's weights, before A's mean (perceiver only)
    selection: Tensor | None = None      # [B, n] straight-through one-hot (hard routing only)
    router_logits: Tensor | None = None  # [B, n] expert logits (hard routing only)
    saturation: Tensor | None = None     # [] share of saturated FFN inner units (module docstring)


def count_trainable(module: nn.Module) -> int:
    """Number of parameters with requires_grad."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class FFN(nn.Module):
    """FFN(x) = tanh(W_2 tanh(W_1 x)), W_1: d -> d/2, W_2: d/2 -> d (no biases, as written)."""

    saturation: Tensor | None = None  # of the last forward, a 0-dim tensor (no device sync here)

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"latent_dim must be even for the d -> d/2 -> d FFN, got {dim}")
        self.w1 = nn.Linear(dim, dim // 2, bias=False)
        self.w2 = nn.Linear(dim // 2, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        inner = self.w1(x)
        self.saturation = (inner.detach().abs() > SATURATED).float().mean() if inner.numel() else None
        return torch.tanh(self.w2(torch.tanh(inner)))


class _Adapter(nn.Module):
    """Shared pieces: per-expert projections W_i, input checks, near-zero output projection."""

    def __init__(self, expert_dims: list[int], out_dim: int, latent_dim: int, out_init_std: float,
                 state_norm: str = "none", init_scale: str = "torch"):
        super().__init__()
        if state_norm not in ("none", "layernorm"):
            raise ValueError(f"state_norm {state_norm!r} is not one of none, layernorm")
        if init_scale not in ("torch", "unit"):
            raise ValueError(f"init_scale {init_scale!r} is not one of torch, unit")
        self.state_norm, self.init_scale = state_norm, init_scale
        if not expert_dims:
            raise ValueError("expert_dims is empty: an adapter needs at least one expert")
        self.expert_dims = [int(d) for d in expert_dims]
        self.out_dim, self.latent_dim = int(out_dim), int(latent_dim)
        # z_i = h_i W_i, W_i in R^{d_i x d}
        self.expert_proj = nn.ModuleList(nn.Linear(d, latent_dim, bias=False) for d in self.expert_dims)
        self.ffn = FFN(latent_dim)
        # C = C' W_out + b_out (eq. 16), W_out near zero, b_out = 0
        self.out_proj = nn.Linear(latent_dim, out_dim)
        nn.init.normal_(self.out_proj.weight, std=out_init_std)
        nn.init.zeros_(self.out_proj.bias)

    def _unit_scale(self) -> None:
        """init_scale=unit: every bias-free map W (d_in -> d_out) ~ N(0, 1/d_in), so it keeps the RMS of
        its input (torch's default, U(+-1/sqrt(d_in)), shrinks it by sqrt(3) a map: 9x over W_i, W_V,
        W_1, W_2), and the latents ~ N(0, 1), the scale the Perceiver's LayerNorm gives its latents
        before W_Q. W_out keeps out_init_std; subclasses call this after building their maps."""
        if self.init_scale != "unit":
            return
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is None:
                nn.init.normal_(module.weight, std=module.in_features ** -0.5)
        if isinstance(getattr(self, "latents", None), nn.Parameter):
            nn.init.normal_(self.latents)

    @property
    def num_experts(self) -> int:
        return len(self.expert_dims)

    def _check_state(self, i: int, h: Tensor, rows: int | None = None) -> Tensor:
        """Validate expert i's states [B, d_i]; cast to the adapter's dtype and device."""
        if h.dim() != 2 or h.shape[1] != self.expert_dims[i]:
            raise ValueError(f"expert {i}: expected states of shape [batch, {self.expert_dims[i]}], "
                             f"got {tuple(h.shape)}")
        if rows is not None and h.shape[0] != rows:
            raise ValueError(f"expert {i}: expected {rows} rows, got {h.shape[0]}")
        w = self.out_proj.weight
        h = h.to(device=w.device, dtype=w.dtype)
        return F.layer_norm(h, h.shape[-1:]) if self.state_norm == "layernorm" else h

    def _project_all(self, states: list[Tensor]) -> Tensor:
        """V = stack(z_1..z_n) -> [B, n, d]."""
        if len(states) != self.num_experts:
            raise ValueError(f"expected states from {self.num_experts} experts, got {len(states)}")
        batch = states[0].shape[0] if states[0].dim() == 2 else None
        z = [proj(self._check_state(i, h, batch)) for i, (proj, h) in enumerate(zip(self.expert_proj, states))]
        return torch.stack(z, dim=1)


class PerceiverAdapter(_Adapter):
    """m trainable latent queries cross-attend over the n projected expert states (eqs. 6-11, 16)."""

    def __init__(self, expert_dims: list[int], out_dim: int, latent_dim: int = 512, num_queries: int = 8,
                 num_heads: int = 8, out_init_std: float = OUT_INIT_STD, state_norm: str = "none",
                 init_scale: str = "torch"):
        super().__init__(expert_dims, out_dim, latent_dim, out_init_std, state_norm, init_scale)
        if latent_dim % num_heads:
            raise ValueError(f"latent_dim {latent_dim} is not divisible by num_heads {num_heads}")
        self.num_queries, self.num_heads = int(num_queries), int(num_heads)
        # Q_lat in R^{m x d}; std 0.02 as for Perceiver latents: attention starts near uniform
        self.latents = nn.Parameter(torch.randn(num_queries, latent_dim) * 0.02)
        self.w_q = nn.Linear(latent_dim, latent_dim, bias=False)
        self.w_k = nn.Linear(latent_dim, latent_dim, bias=False)
        self.w_v = nn.Linear(latent_dim, latent_dim, bias=False)
        self._unit_scale()

    def forward(self, states: list[Tensor]) -> AdapterOutput:
        """states: one [B, d_i] tensor per expert -> context [B, m, out_dim], attention [B, m, n]."""
        v = self._project_all(states)                        # V: [B, n, d]
        B, n, d = v.shape
        H, dh = self.num_heads, d // self.num_heads
        q = self.w_q(self.latents).view(-1, H, dh).transpose(0, 1)  # Q = Q_lat W_Q: [H, m, dh]
        k = self.w_k(v).view(B, n, H, dh).transpose(1, 2)    # K = V W_K: [B, H, n, dh]
        vv = self.w_v(v).view(B, n, H, dh).transpose(1, 2)   # V' = V W_V: [B, H, n, dh]
        # softmax(Q K^T / sqrt(d)) V' in its standard multi-head form: H heads of size d/H, each
        # scaled by 1/sqrt(d/H), heads concatenated, no output projection (the equation has none)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)  # [B, H, m, n]
        attn_out = (probs @ vv).transpose(1, 2).reshape(B, -1, d)               # [B, m, d]
        c_prime = self.ffn(self.latents + attn_out)          # C' = FFN(Q_lat + attn)
        context = self.out_proj(c_prime)                     # C = C' W_out + b_out (eq. 16)
        return AdapterOutput(context=context, attention=probs.mean(dim=1),  # A: mean over heads
                             head_attention=probs, saturation=self.ffn.saturation)


class FFNAdapter(_Adapter):
    """Without cross-attention (eq. 14): C = FFN(V) W_out + b_out, one context token per expert."""

    def __init__(self, expert_dims: list[int], out_dim: int, latent_dim: int = 512,
                 out_init_std: float = OUT_INIT_STD, state_norm: str = "none", init_scale: str = "torch"):
        super().__init__(expert_dims, out_dim, latent_dim, out_init_std, state_norm, init_scale)
        self._unit_scale()

    def forward(self, states: list[Tensor]) -> AdapterOutput:
        """states: one [B, d_i] tensor per expert -> context [B, n, out_dim]."""
        context = self.out_proj(self.ffn(self._project_all(states)))
        return AdapterOutput(context=context, saturation=self.ffn.saturation)


class HardRouter(_Adapter):
    """Top-1 hard routing (eq. 13): a router head on a frozen sentence embedding picks one expert;
    only that expert runs, and its state becomes one memory token FFN(h_i W_i) W_out + b_out.

    Usage (the caller runs only the chosen experts):
        one_hot, logits = router.select(encoder_embeddings)      # [B, n], [B, n]
        groups = router.groups(one_hot)                          # {i: batch rows that chose i}
        states = {i: expert_i(prompts[rows]) for i, rows in groups.items()}  # [len(rows), d_i]
        out = router(one_hot, states, logits)                    # out.context: [B, 1, out_dim]
    """

    def __init__(self, encoder_dim: int, expert_dims: list[int], out_dim: int, latent_dim: int = 512,
                 gumbel_temperature: float = 1.0, out_init_std: float = OUT_INIT_STD, state_norm: str = "none",
                 init_scale: str = "torch"):
        super().__init__(expert_dims, out_dim, latent_dim, out_init_std, state_norm, init_scale)
        self.encoder_dim, self.gumbel_temperature = int(encoder_dim), float(gumbel_temperature)
        self.router = nn.Linear(encoder_dim, self.num_experts)
        self._unit_scale()  # the router head has a bias: it keeps torch's init

    def select(self, encoder_embeddings: Tensor, training: bool | None = None,
               noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """[B, e] sentence embeddings -> (one_hot [B, n], logits [B, n]).

        Training (default: self.training): straight-through Gumbel-softmax; the forward value is
        exactly one-hot, the gradient is that of the soft sample. `noise` [B, n] (Gumbel(0, 1)
        samples) may be given so a later pass reproduces the same choice with gradients; we draw it
        ourselves because F.gumbel_softmax cannot take it. Evaluation: argmax, no noise.
        """
        if encoder_embeddings.dim() != 2 or encoder_embeddings.shape[1] != self.encoder_dim:
            raise ValueError(f"expected encoder embeddings [batch, {self.encoder_dim}], "
                             f"got {tuple(encoder_embeddings.shape)}")
        w = self.router.weight
        logits = self.router(encoder_embeddings.to(device=w.device, dtype=w.dtype))
        training = self.training if training is None else training
        if not training:
            return F.one_hot(logits.argmax(-1), self.num_experts).to(logits.dtype), logits
        if noise is None:
            noise = self.sample_noise(logits.shape, logits.device)
        soft = torch.softmax((logits + noise.to(logits)) / self.gumbel_temperature, dim=-1)
        hard = F.one_hot(soft.argmax(-1), self.num_experts).to(soft.dtype)
        return hard + (soft - soft.detach()), logits  # value exactly one-hot (no 1 - s + s rounding)

    @staticmethod
    def sample_noise(shape: torch.Size | tuple[int, ...], device: torch.device | str = "cpu") -> Tensor:
        """Gumbel(0, 1) noise: -log(-log U), U ~ Uniform(0, 1)."""
        u = torch.rand(shape, device=device).clamp_(1e-10, 1.0 - 1e-7)
        return -torch.log(-torch.log(u))

    @staticmethod
    def groups(one_hot: Tensor) -> dict[int, Tensor]:
        """Batch rows (ascending) that chose each expert: {expert index: LongTensor [k_i]}."""
        chosen = one_hot.detach().argmax(-1)
        return {int(i): (chosen == i).nonzero().flatten() for i in chosen.unique()}

    def forward(self, one_hot: Tensor, states: dict[int, Tensor],
                router_logits: Tensor | None = None) -> AdapterOutput:
        """one_hot [B, n] from select(); states[i]: [k_i, d_i] for the rows groups() gave expert i."""
        groups = self.groups(one_hot)
        extra = sorted(set(states) - set(groups))
        if extra:
            raise ValueError(f"states given for experts {extra} that no prompt selected")
        w = self.out_proj.weight
        z = torch.zeros(one_hot.shape[0], self.latent_dim, device=w.device, dtype=w.dtype)
        for i, rows in groups.items():
            if i not in states:
                raise ValueError(f"expert {i} was selected by {len(rows)} prompts but no states were given")
            z = z.index_copy(0, rows.to(w.device), self.expert_proj[i](self._check_state(i, states[i], len(rows))))
        token = self.out_proj(self.ffn(z))                   # FFN(h_i W_i) W_out + b_out: [B, out]
        weight = (one_hot.to(device=w.device, dtype=w.dtype) * one_hot.detach().to(w.device)).sum(-1, keepdim=True)
        context = (token * weight).unsqueeze(1)              # x 1.0 in value, routes grads to the router
        return AdapterOutput(context=context, selection=one_hot, router_logits=router_logits,
                             saturation=self.ffn.saturation)
