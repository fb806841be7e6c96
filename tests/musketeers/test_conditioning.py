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


def test_text_hints_go_verbatim_into_an_expert_hints_block():
    cfg = load_run_config(TASK, ["method=text_hints"])

    class Plain:
        chat_template = None

    conditioner = Conditioner(cfg, CountingPool(), tokenizer=Plain())
    cond = conditioner.prepare(["q1", "q2", "q1"], training=True)
    assert cond.context is None and len(cond.prompts) == 3
    hints = [("a", "hint a for q1"), ("b", "hint b for q1"), ("c", "hint c for q1")]
    assert cond.prompts[0] == cond.prompts[2] == build_prompt("q1", Plain(), cfg.task, hints)
    assert "[Expert Hints]\na: hint a for q1\nb: hint b for q1\nc: hint c for q1" in cond.prompts[0]
