"""Conditioning per method: hard routing runs one expert per prompt; hints go into the prompt."""
from pathlib import Path

import torch

from musketeers.adapters import HardRouter
from musketeers.conditioning import Conditioner
from musketeers.config import load_run_config
from musketeers.data import build_prompt

TASK = str(Path(__file__).parents[1] / "fixtures" / "task_tiny.yaml")


class CountingPool:
    """Stands in for ExpertPool and records which expert encoded which question."""

    names = ["a", "b", "c"]
    hidden_sizes = [6, 8, 10]

    def __init__(self):
        self.calls = []

    def encode_expert(self, index, questions):
        self.calls.append((index, list(questions)))
        return torch.full((len(questions), self.hidden_sizes[index]), float(index + 1))

    def generate_hints(self, questions, max_new_tokens):
        return [[f"hint {name} for {q}" for q in questions] for name in self.names]


class FixedEncoder(torch.nn.Module):
    dim = 4

    def forward(self, texts):
        return torch.stack([torch.tensor([float(len(t)), 1.0, -1.0, 0.5]) for t in texts])


def test_hard_routing_runs_exactly_one_expert_per_prompt():
    torch.manual_seed(0)
    cfg = load_run_config(TASK, ["method=hard_routing"])
    pool = CountingPool()
    router = HardRouter(4, pool.hidden_sizes, out_dim=12, latent_dim=8)
    conditioner = Conditioner(cfg, pool, router, FixedEncoder())
    questions = [f"question {k}" + "?" * k for k in range(10)]
    cond = conditioner.prepare(questions, training=True)
    encoded = [q for _, qs in pool.calls for q in qs]
    assert sorted(encoded) == sorted(questions)  # each prompt once, by one expert
    assert len({index for index, _ in pool.calls}) == len(pool.calls)  # one batched call per chosen expert
    assert cond.context.shape == (10, 1, 12)
    # the loss pass rebuilds the same context, now with gradients to the router
    rebuilt = conditioner.context(cond.stored, training=True)
    assert torch.allclose(rebuilt, cond.context)
    rebuilt.sum().backward()
    assert router.router.weight.grad is not None and router.router.weight.grad.abs().sum() > 0


def test_hard_routing_draws_one_expert_per_prompt_shared_by_its_group():
    """One Gumbel draw per prompt: the G completions of a GRPO group see one expert, at generation and in
    the loss pass (rows shuffled as TRL does, the router moved by an update since); different prompts
    see different experts; the same prompt in a later round draws again."""
    torch.manual_seed(0)
    cfg = load_run_config(TASK, ["method=hard_routing"])
    pool = CountingPool()
    router = HardRouter(4, pool.hidden_sizes, out_dim=12, latent_dim=8)
    torch.nn.init.zeros_(router.router.weight)  # equal logits: the noise alone decides
    conditioner = Conditioner(cfg, pool, router, FixedEncoder())
    prompts, G = [f"question {k}" for k in range(8)], 4
    questions = [q for q in prompts for _ in range(G)]  # TRL's RepeatSampler: each prompt G times in a row
    cond = conditioner.prepare(questions, training=True)
    stored = cond.stored
    for per_row in (stored.choice, stored.gumbel_noise, cond.context):
        grouped = per_row.view(len(prompts), G, -1)
        assert torch.equal(grouped, grouped[:, :1].expand_as(grouped))  # one value per group
    assert len(set(stored.choice.tolist())) > 1  # prompts route differently
    assert sorted(q for _, qs in pool.calls for q in qs) == prompts  # each prompt's expert ran once

    with torch.no_grad():
        router.router.weight.normal_(std=10.0)  # an optimizer step since generation (e.g. num_iterations > 1)
    fresh, _ = router.select(stored.router_input, training=True, noise=stored.gumbel_noise)
    assert (fresh.argmax(-1) != stored.choice).any()  # a new argmax would now pick other experts
    shuffled = torch.randperm(len(questions))
    out = conditioner.method.adapter_output(router, stored[shuffled], training=True)
    assert torch.equal(out.selection.detach().argmax(-1), stored.choice[shuffled])  # the loss pass keeps the sampled expert
    assert torch.allclose(out.context, cond.context[shuffled])
    out.context.sum().backward()
    assert router.router.weight.grad.abs().sum() > 0

    later = conditioner.prepare(questions, training=True).stored
    assert not torch.equal(later.gumbel_noise, stored.gumbel_noise)
    grouped = later.choice.view(len(prompts), G)
    assert torch.equal(grouped, grouped[:, :1].expand_as(grouped))


def test_text_hints_go_verbatim_into_an_expert_hints_block_before_the_question():
    cfg = load_run_config(TASK, ["method=text_hints"])

    class Plain:
        chat_template = None

    conditioner = Conditioner(cfg, CountingPool(), tokenizer=Plain())
    cond = conditioner.prepare(["q1", "q2", "q1"], training=True)
    assert cond.context is None and len(cond.prompts) == 3
    hints = [("a", "hint a for q1"), ("b", "hint b for q1"), ("c", "hint c for q1")]
    assert cond.prompts[0] == cond.prompts[2] == build_prompt("q1", Plain(), cfg.task, hints)
    assert cond.prompts[0].endswith("User: [Expert Hints]\na: hint a for q1\nb: hint b for q1\nc: hint c for q1\n\nq1\nAssistant: <answer>")
