"""Adapters g_phi: shapes, dtypes, near-zero init, gradient flow, equivariance, hard routing."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from musketeers.adapters import AdapterOutput, FFNAdapter, HardRouter, PerceiverAdapter, count_trainable
from musketeers.config import AdapterConfig, ConfigError, load_run_config
from musketeers.methods import METHODS
from musketeers.metrics import routing_entropy

torch.set_num_threads(1)

DIMS, OUT, ENC = [24, 40, 32], 48, 16
TASK = str(Path(__file__).parents[1] / "fixtures" / "task_tiny.yaml")
SMALL = dict(latent_dim=32, num_queries=4, num_heads=4)


def make_states(B=5, dims=DIMS, scale=3.0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, d, generator=g) * scale).to(dtype) for d in dims]


def perceiver(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    return PerceiverAdapter(DIMS, OUT, **{**SMALL, **kw}).to(dtype)


def ffn(dtype=torch.float32):
    torch.manual_seed(0)
    return FFNAdapter(DIMS, OUT, latent_dim=32).to(dtype)


def router(**kw):
    torch.manual_seed(0)
    return HardRouter(ENC, DIMS, OUT, latent_dim=32, **kw)


def take_selected(one_hot, all_states):
    """The chosen rows of every expert's [B, d_i] states, as the caller of HardRouter feeds them."""
    return {i: all_states[i][rows] for i, rows in HardRouter.groups(one_hot).items()}


def build_adapter(method, expert_dims, out_dim, encoder_dim=None, **adapter):
    """g_phi as the method registry builds it from the adapter config."""
    return METHODS[method].build_adapter(expert_dims, out_dim, AdapterConfig(**adapter), encoder_dim)


def routed(r, B=6, training=True, seed=0):
    """Select experts, feed only the chosen experts' states; returns (output, one_hot, full states)."""
    torch.manual_seed(seed)
    enc = torch.randn(B, ENC)
    one_hot, logits = r.select(enc, training=training)
    full = make_states(B, seed=seed)
    return r(one_hot, take_selected(one_hot, full), logits), one_hot, full


# ---- shapes and dtypes ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_perceiver_shapes_and_dtypes(dtype, state_dtype):
    out = perceiver(dtype)(make_states(dtype=state_dtype))
    assert isinstance(out, AdapterOutput)
    assert out.context.shape == (5, 4, OUT) and out.context.dtype == dtype
    assert out.attention.shape == (5, 4, 3) and out.attention.dtype == dtype
    assert out.selection is None and out.router_logits is None
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.attention.float().sum(-1), torch.ones(5, 4), atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ffn_shapes_and_dtypes(dtype):
    out = ffn(dtype)(make_states(dtype=torch.float16))
    assert out.context.shape == (5, 3, OUT) and out.context.dtype == dtype
    assert out.attention is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hard_router_shapes_and_dtypes(dtype):
    r = router().to(dtype)
    out, one_hot, _ = routed(r)
    assert out.context.shape == (6, 1, OUT) and out.context.dtype == dtype
    assert out.selection is one_hot and out.router_logits.shape == (6, 3)
    assert out.attention is None


def test_input_validation_names_the_expert():
    a = perceiver()
    with pytest.raises(ValueError, match="3 experts"):
        a(make_states()[:2])
    bad = make_states()
    bad[1] = torch.randn(5, 41)
    with pytest.raises(ValueError, match="expert 1.*40"):
        a(bad)
    bad[1] = torch.randn(4, 40)  # batch mismatch
    with pytest.raises(ValueError, match="expert 1"):
        a(bad)
    with pytest.raises(ValueError, match="divisible"):
        PerceiverAdapter(DIMS, OUT, latent_dim=30, num_heads=4)


# ---- near-zero context at init, gradient flow ------------------------------------------------

@pytest.mark.parametrize("make", [perceiver, ffn, router])
def test_context_near_zero_at_init(make):
    emb = nn.Embedding(100, OUT)
    nn.init.normal_(emb.weight, std=0.02)
    ref = emb.weight.norm(dim=-1).mean().item()
    a = make()
    for scale in (1.0, 100.0):  # huge states saturate the tanh FFN: still bounded
        states = make_states(B=8, scale=scale)
        if isinstance(a, HardRouter):
            one_hot, _ = a.select(torch.randn(8, ENC), training=False)
            c = a(one_hot, take_selected(one_hot, states)).context
        else:
            c = a(states).context
        assert 0 < c.abs().max().item() < 1e-3 * ref


def test_default_size_context_near_zero():
    emb = nn.Embedding(100, 2048)
    nn.init.normal_(emb.weight, std=0.02)
    torch.manual_seed(0)
    a = PerceiverAdapter([1536, 3584, 3072], 2048)
    c = a(make_states(B=4, dims=[1536, 3584, 3072], scale=100.0)).context
    assert c.abs().max().item() < 1e-3 * emb.weight.norm(dim=-1).mean().item()


def assert_all_grads(module):
    missing = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("make", [perceiver, ffn])
def test_gradients_reach_every_parameter(make, dtype):
    a = make(dtype)
    (a(make_states()).context ** 2 + a(make_states()).context).sum().backward()
    assert_all_grads(a)


def test_hard_router_gradients_reach_every_parameter():
    r = router().train()
    # every expert must be chosen by some prompt for all W_i to get gradients
    out, one_hot, _ = routed(r, B=32)
    assert set(HardRouter.groups(one_hot)) == {0, 1, 2}
    out.context.sum().backward()
    assert_all_grads(r)


# ---- perceiver routing --------------------------------------------------------------------------

def test_permutation_equivariance():
    a = perceiver()
    states = make_states()
    perm = [2, 0, 1]
    b = PerceiverAdapter([DIMS[p] for p in perm], OUT, **SMALL)
    shared = {k: v for k, v in a.state_dict().items() if not k.startswith("expert_proj.")}
    b.load_state_dict(shared, strict=False)
    for j, p in enumerate(perm):
        b.expert_proj[j].load_state_dict(a.expert_proj[p].state_dict())
    out_a, out_b = a(states), b([states[p] for p in perm])
    torch.testing.assert_close(out_b.attention, out_a.attention[..., perm])
    torch.testing.assert_close(out_b.context, out_a.context)


def test_head_attention_is_what_a_averages():
    out = perceiver()(make_states())
    assert out.head_attention.shape == (5, 4, 4, 3)  # [B, H, m, n]
    torch.testing.assert_close(out.head_attention.mean(1), out.attention)
    # every head one-hot on another expert: A looks spread (H = log 2) while each head reads one expert
    heads = torch.zeros(1, 2, 1, 2)
    heads[0, 0, 0, 0] = heads[0, 1, 0, 1] = 1.0
    assert routing_entropy(heads.mean(1)) == pytest.approx(math.log(2)) and routing_entropy(heads.flatten(1, 2)) == 0.0


def test_attention_starts_near_uniform():
    a = PerceiverAdapter(DIMS, OUT, **SMALL)
    h = routing_entropy(a(make_states(scale=1.0)).attention)
    assert h > 0.9 * torch.log(torch.tensor(3.0)).item()


# ---- hard routing -------------------------------------------------------------------------------

def test_gumbel_selection_exactly_one_hot_in_training():
    r = router(gumbel_temperature=0.5).train()
    for seed in range(5):
        _, one_hot, _ = routed(r, B=64, seed=seed)
        assert ((one_hot == 0) | (one_hot == 1)).all() and (one_hot.sum(-1) == 1).all()


def test_eval_selection_is_deterministic_argmax():
    r = router().eval()
    enc = torch.randn(10, ENC)
    first, logits = r.select(enc)
    second, _ = r.select(enc)
    assert torch.equal(first, second)
    assert torch.equal(first.argmax(-1), logits.argmax(-1)) and (first.sum(-1) == 1).all()


def test_router_logits_get_gradients_through_memory_token():
    r = router().train()
    out, one_hot, _ = routed(r)
    token_only = r(one_hot.detach(), take_selected(one_hot, make_states(6)))
    torch.testing.assert_close(out.context, token_only.context, rtol=0, atol=0)  # weight is exactly 1
    (out.context * torch.randn_like(out.context)).sum().backward()
    assert r.router.weight.grad is not None and r.router.weight.grad.abs().sum() > 0


def test_hard_routing_uses_only_the_chosen_expert():
    r = router().eval()
    out, one_hot, full = routed(r, training=False)
    chosen = one_hot.argmax(-1)
    changed = [h.clone() for h in full]
    for i, h in enumerate(changed):
        h[chosen != i] = torch.randn_like(h[chosen != i]) * 50  # alter every unchosen state
    again = r(one_hot, take_selected(one_hot, changed))
    torch.testing.assert_close(again.context, out.context, rtol=0, atol=0)
    changed[chosen[0]][0] += 1.0  # the chosen state does matter
    assert not torch.equal(r(one_hot, take_selected(one_hot, changed)).context[0], out.context[0])


def test_hard_routing_state_errors():
    r = router().eval()
    one_hot = torch.eye(3)[[0, 0, 2]]
    with pytest.raises(ValueError, match="expert 2"):
        r(one_hot, {0: torch.randn(2, 24)})
    with pytest.raises(ValueError, match=r"\[1\]"):
        r(one_hot, {0: torch.randn(2, 24), 1: torch.randn(1, 40), 2: torch.randn(1, 32)})
    with pytest.raises(ValueError, match="expert 0"):
        r(one_hot, {0: torch.randn(1, 24), 2: torch.randn(1, 32)})


# ---- factory and parameter counts ---------------------------------------------------------------

def test_each_method_builds_its_adapter():
    kw = dict(latent_dim=32, num_queries=4, num_heads=4, encoder_dim=ENC)
    assert isinstance(build_adapter("perceiver", DIMS, OUT, **kw), PerceiverAdapter)
    assert isinstance(build_adapter("ffn", DIMS, OUT, **kw), FFNAdapter)
    assert isinstance(build_adapter("hard_routing", DIMS, OUT, **kw), HardRouter)
    assert build_adapter("text_hints", DIMS, OUT, **kw) is None
    assert build_adapter("single", DIMS, OUT, **kw) is None
    with pytest.raises(ValueError, match="encoder_dim"):
        build_adapter("hard_routing", DIMS, OUT, latent_dim=32)
    with pytest.raises(ConfigError, match="perceiver, ffn, hard_routing, text_hints, single"):
        load_run_config(TASK, ["method=moe"])
    assert tuple(METHODS) == ("perceiver", "ffn", "hard_routing", "text_hints", "single")


def expected_counts(dims, out, enc, d=512, m=8):
    shared = sum(dims) * d + d * (d // 2) * 2 + d * out + out  # W_i, FFN (W_1, W_2), W_out + b_out
    return {"perceiver": shared + m * d + 3 * d * d,            # + Q_lat, W_Q, W_K, W_V
            "ffn": shared,
            "hard_routing": shared + enc * len(dims) + len(dims)}  # + router head


@pytest.mark.parametrize("dims,out", [([1536, 3584, 3072], 2048), ([576, 640, 768], 576)])
def test_parameter_counts_default_sizes(dims, out):
    want = expected_counts(dims, out, 384)
    for method, n in want.items():
        a = build_adapter(method, dims, out, latent_dim=512, num_queries=8, num_heads=8, encoder_dim=384)
        assert count_trainable(a) == n, method


def test_parameter_count_paper_team_by_hand():
    # 8192*512 (W_i) + 8*512 (Q_lat) + 3*512^2 (W_Q, W_K, W_V) + 2*512*256 (FFN) + 512*2048 + 2048
    adapter = build_adapter("perceiver", [1536, 3584, 3072], 2048, latent_dim=512, num_queries=8, num_heads=8)
    assert count_trainable(adapter) == 6_297_600


def test_state_norm_layernorm_makes_each_state_scale_free():
    """adapter.state_norm=layernorm (off by default): z_i = LN(h_i) W_i, so a state's scale and offset
    do not change C; without it they do (the paper's equations)."""
    states = make_states()
    shifted = [s * 40.0 + 7.0 for s in states]
    normed = perceiver(state_norm="layernorm", out_init_std=1.0)
    assert torch.allclose(normed(states).context, normed(shifted).context, atol=1e-4)
    plain = perceiver(out_init_std=1.0)
    assert plain.state_norm == "none" and not torch.allclose(plain(states).context, plain(shifted).context, atol=1e-2)
    assert float(plain(shifted).saturation) > 0.5  # large raw states saturate the FFN from the start
    cfg = load_run_config(TASK, ["adapter.state_norm=layernorm"])
    assert METHODS["perceiver"].build_adapter(DIMS, OUT, cfg.adapter).state_norm == "layernorm"
    with pytest.raises(ConfigError, match="adapter.state_norm"):
        load_run_config(TASK, ["adapter.state_norm=batchnorm"])


def test_init_scale_unit_keeps_each_maps_input_rms():
    """adapter.init_scale=unit (torch by default): the bias-free maps are N(0, 1/d_in) and the latents
    N(0, 1); W_out keeps its near-zero init; a bad value is a config error naming the key."""
    torch.manual_seed(0)
    unit, default = perceiver(init_scale="unit"), perceiver()
    for name, w in unit.named_parameters():
        if name.endswith("weight") and not name.startswith("out_proj"):
            assert abs(float(w.std()) * w.shape[1] ** 0.5 - 1.0) < 0.1, name
    assert abs(float(unit.latents.std()) - 1.0) < 0.2 and float(default.latents.std()) < 0.05
    assert float(unit.out_proj.weight.std()) < 1e-5 and float(unit.out_proj.bias.abs().max()) == 0.0
    x = torch.randn(512, unit.latent_dim)
    for adapter, rms in ((unit, 1.0), (default, 3 ** -0.5)):  # torch's U(+-1/sqrt(d_in)) shrinks by sqrt(3)
        assert abs(float(adapter.ffn.w1(x).pow(2).mean().sqrt()) - rms) < 0.1
    for name in ("ffn", "hard_routing"):
        adapter = build_adapter(name, DIMS, OUT, latent_dim=64, init_scale="unit", **({"encoder_dim": ENC} if name == "hard_routing" else {}))
        assert abs(float(adapter.ffn.w2.weight.std()) * 32 ** 0.5 - 1.0) < 0.15
    cfg = load_run_config(TASK, ["adapter.init_scale=unit"])
    assert METHODS["perceiver"].build_adapter(DIMS, OUT, cfg.adapter).init_scale == "unit"
    with pytest.raises(ConfigError, match="adapter.init_scale"):
        load_run_config(TASK, ["adapter.init_scale=xavier"])


def test_saturation_is_the_share_of_saturated_ffn_units():
    """AdapterOutput.saturation: the share of |W_1 x| > 3, where tanh passes under 1% of a gradient."""
    adapter = perceiver()
    assert float(adapter(make_states()).saturation) == 0.0  # at initialisation: none
    with torch.no_grad():
        adapter.ffn.w1.weight.mul_(1e4)  # what a few too-large Adam steps do to W_1
    out = adapter(make_states())
    assert float(out.saturation) > 0.9
    out.context.sum().backward()
    assert adapter.expert_proj[0].weight.grad.abs().max() < 1e-3 * adapter.ffn.w2.weight.grad.abs().max()
    for other in (ffn(), router()):
        assert other.ffn.saturation is None
