"""Can an expert state's information reach the policy's answers through g_phi and C at all?

A supervised probe of the path that GRPO trains, without GRPO's noise: the policy is frozen (no LoRA),
and only the adapter g_phi learns, by teacher-forced cross-entropy of the gold reply (what a perfect
completion writes) with C placed as in training (musketeers/context.py). Run it on the oracle team
(experts/oracle.py) and on its shuffled control: if g_phi cannot make the oracle's answers pay off even
here, GRPO cannot either (README "Does the context carry signal?").

    python launch/path_probe.py team=oracle training.router_lr=3e-4
    python launch/path_probe.py team=oracle_shuffled --steps 40 --every 20
    python launch/path_probe.py configs/tasks/demo.yaml team=oracle adapter.state_norm=layernorm

Arguments after the options are a task (default: the demo) and key=value overrides, as `musketeers
train` takes them; g_phi's optimizer is the run's (AdamW, training.router_lr, adam_epsilon,
weight_decay, max_grad_norm). Prints, every --every steps, the loss, the FFN's saturation
(adapters.py), the gradient norm reaching each part of g_phi (upstream of a saturated FFN it is ~0),
the norm of C, and the greedy held-out accuracy with per-expert utilisation; --out writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musketeers.conditioning import build_conditioner  # noqa: E402
from musketeers.config import load_run_config  # noqa: E402
from musketeers.context import insert_context  # noqa: E402
from musketeers.data import build_prompt, default_split, load_split  # noqa: E402
from musketeers.generation import Evaluator, accuracy_summary, complete_rows, score_rows  # noqa: E402
from musketeers.policy import build_policy  # noqa: E402
from rewards.functions import reference_completion  # noqa: E402

PARTS = ("expert_proj", "latents", "w_q", "w_k", "w_v", "ffn.w1", "ffn.w2", "out_proj")  # input to output


def teacher_forced_loss(model, tokenizer, conditioner, cfg, rows) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of each row's gold reply (+ EOS) after its prompt, C inserted where training puts it."""
    cond = conditioner.prepare([r["question"] for r in rows], training=True)
    context = conditioner.context(cond.stored, training=True)  # differentiable in g_phi
    prompts = [tokenizer(build_prompt(r["question"], tokenizer, cfg.task), add_special_tokens=False)["input_ids"] for r in rows]
    replies = [tokenizer(reference_completion(r, cfg.task.assistant_prefill), add_special_tokens=False)["input_ids"]
               + [tokenizer.eos_token_id] for r in rows]
    width = max(len(p) + len(y) for p, y in zip(prompts, replies))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    labels = torch.full((len(rows), width + context.shape[1]), -100)  # C is inserted before the reply
    for i, (p, y) in enumerate(zip(prompts, replies)):  # left-padded, as generation sees prompts
        ids[i, width - len(p) - len(y):] = torch.tensor(p + y)
        mask[i, width - len(p) - len(y):] = 1
        labels[i, -len(y):] = torch.tensor(y)
    embeds, attention, positions = insert_context(model.get_input_embeddings()(ids), mask, context,
                                                  conditioner.layout.slot(mask))
    logits = model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    return loss, {**cond.metrics, "context_norm": float(context.detach().norm(dim=-1).mean())}


def held_out(cfg, model, tokenizer, conditioner, rows) -> dict:
    conditioner.adapter.eval()
    completions = complete_rows(Evaluator.of(cfg, model, tokenizer, conditioner), rows)
    conditioner.adapter.train()
    summary = accuracy_summary([r["task"] for r in rows], score_rows(rows, completions, cfg))
    routing = conditioner.prepare([r["question"] for r in rows], training=False).metrics
    return {"accuracy": summary["accuracy"], "score": summary["score"], **routing}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16, help="training rows per step")
    parser.add_argument("--every", type=int, default=20, help="print and evaluate every k steps")
    parser.add_argument("--eval-items", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("config", nargs="*", help="[task] key=value ...")
    args = parser.parse_args(argv)
    task = next((a for a in args.config if "=" not in a), "demo")
    cfg = load_run_config(task, [a for a in args.config if "=" in a])
    torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.seed)
    sampler = random.Random(cfg.seed)

    model, tokenizer, _ = build_policy(cfg)
    model.requires_grad_(False)
    conditioner = build_conditioner(cfg, model.get_input_embeddings().weight.shape[1], tokenizer)
    adapter, t = conditioner.adapter, cfg.training
    if adapter is None:
        parser.error(f"method {cfg.method!r} has no adapter g_phi to probe (perceiver, ffn, hard_routing)")
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=t.router_lr, eps=t.adam_epsilon, weight_decay=t.weight_decay)
    train_rows = list(load_split(cfg.task, "train"))
    eval_rows = list(load_split(cfg.task, default_split(cfg)))[:args.eval_items]
    log = [{"step": 0, **held_out(cfg, model, tokenizer, conditioner, eval_rows)}]
    print(json.dumps(log[-1]), flush=True)
    start = time.perf_counter()
    try:
        for step in range(1, args.steps + 1):
            loss, metrics = teacher_forced_loss(model, tokenizer, conditioner, cfg, sampler.sample(train_rows, args.batch))
            optimizer.zero_grad()
            loss.backward()
            grads = {part: sum(float(p.grad.norm()) ** 2 for n, p in adapter.named_parameters()
                               if n.startswith(part) and p.grad is not None) ** 0.5 for part in PARTS}
            torch.nn.utils.clip_grad_norm_(adapter.parameters(), t.max_grad_norm)
            optimizer.step()
            if step % args.every == 0 or step == args.steps:
                row = {"step": step, "loss": loss.item(), "seconds": round(time.perf_counter() - start, 1), **metrics,
                       **{f"grad/{k}": v for k, v in grads.items()}, **held_out(cfg, model, tokenizer, conditioner, eval_rows)}
                log.append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) and abs(v) > 1e-3 else v for k, v in row.items()}),
                      flush=True)
    finally:
        if conditioner.pool is not None:
            conditioner.pool.shutdown()
    if args.out:
        args.out.write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
