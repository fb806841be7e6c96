"""Can an expert state's information reach the policy's answers through g_phi and C at all?

A supervised probe of the path that GRPO trains, without GRPO's noise: g_phi (and with --lora the
policy's LoRA, at the run's two learning rates) learns by teacher-forced cross-entropy of the gold reply
(what a perfect completion writes), with C placed as in training (musketeers/context.py). Run it on the
oracle team (experts/oracle.py) and on its shuffled control: if the oracle's answers do not pay off even
here, GRPO cannot make them (README "Does the context carry signal?", docs/signal.md).

--context takes the path apart: `gold` puts in C what a perfect g_phi would (the token embeddings of
"The answer is <gold>."), `shuffled` the same for another item's answer, `none` no C at all (`single`).

    python launch/path_probe.py --lora team=oracle training.router_lr=3e-4
    python launch/path_probe.py --lora --context gold --steps 40           # can the policy learn to read C?
    python launch/path_probe.py --context gold --steps 0 --eval-items 128   # does the policy as it is read C?

Arguments after the options are a task (default: the demo) and key=value overrides, as `musketeers
train` takes them; the optimizer is the run's (AdamW with training.router_lr for g_phi and
training.learning_rate for LoRA, adam_epsilon, weight_decay, max_grad_norm). Prints, every --every
steps, the loss, the FFN's saturation (adapters.py), the gradient norm reaching each part of g_phi
(upstream of a saturated FFN it is ~0), the norm of C, and the greedy held-out accuracy, score and
`number` (the first number written is the answer, whatever the format) with per-expert utilisation;
--out writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musketeers.conditioning import build_conditioner  # noqa: E402
from musketeers.config import load_run_config  # noqa: E402
from musketeers.context import ContextLayout, insert_context, positions_from_mask  # noqa: E402
from musketeers.data import build_prompt, default_split, load_split  # noqa: E402
from musketeers.generation import accuracy_summary, policy_completions, score_rows  # noqa: E402
from musketeers.policy import build_policy  # noqa: E402
from rewards.functions import reference_completion  # noqa: E402

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
SOURCES = ("adapter", "gold", "shuffled", "none")
PARTS = ("expert_proj", "latents", "w_q", "w_k", "w_v", "ffn.w1", "ffn.w2", "out_proj")  # input to output


class ContextSource:
    """Where C comes from: g_phi on the experts' states (`adapter`, the method), a perfect g_phi's output
    (`gold`: the token embeddings of "The answer is <gold>.", repeated to fill the m slots), the same for
    another item's answer (`shuffled`: the next row's, no information), or no C at all (`none`: `single`)."""

    def __init__(self, kind: str, cfg, model, tokenizer, conditioner):
        self.kind, self.tokenizer, self.conditioner, self.m = kind, tokenizer, conditioner, cfg.adapter.num_queries
        self.table = model.get_input_embeddings().weight
        self.layout = ContextLayout(cfg.adapter.context_position, cfg.training.reference_context)

    def __call__(self, rows: list[dict], training: bool) -> tuple[torch.Tensor | None, dict]:
        if self.kind == "adapter":
            cond = self.conditioner.prepare([r["question"] for r in rows], training=training)
            return (self.conditioner.context(cond.stored, training=True) if training else cond.context), cond.metrics
        if self.kind == "none":
            return None, {}
        answers = [str(r["answer"]) for r in rows]
        answers = answers[1:] + answers[:1] if self.kind == "shuffled" else answers
        ids = [self.tokenizer(f"The answer is {a}.", add_special_tokens=False)["input_ids"] for a in answers]
        return torch.stack([self.table[[t[k % len(t)] for k in range(self.m)]] for t in ids]).detach(), {}


def teacher_forced_loss(model, tokenizer, source: ContextSource, cfg, rows) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of each row's gold reply (+ EOS) after its prompt, C inserted where training puts it."""
    context, metrics = source(rows, training=True)  # differentiable in g_phi
    prompts = [tokenizer(build_prompt(r["question"], tokenizer, cfg.task), add_special_tokens=False)["input_ids"] for r in rows]
    replies = [tokenizer(reference_completion(r, cfg.task.assistant_prefill), add_special_tokens=False)["input_ids"]
               + [tokenizer.eos_token_id] for r in rows]
    width = max(len(p) + len(y) for p, y in zip(prompts, replies))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    m = 0 if context is None else context.shape[1]
    labels = torch.full((len(rows), width + m), -100)  # C is inserted before the reply
    for i, (p, y) in enumerate(zip(prompts, replies)):  # left-padded, as generation sees prompts
        ids[i, width - len(p) - len(y):] = torch.tensor(p + y)
        mask[i, width - len(p) - len(y):] = 1
        labels[i, -len(y):] = torch.tensor(y)
    embeds = model.get_input_embeddings()(ids)
    if context is None:
        attention, positions = mask, positions_from_mask(mask)
    else:
        embeds, attention, positions = insert_context(embeds, mask, context, source.layout.slot(mask))
    logits = model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    norm = 0.0 if context is None else float(context.detach().norm(dim=-1).mean())
    return loss, {**metrics, "context_norm": norm}


def first_number_right(completion: str, answer: str) -> bool:
    """Whether the first number the completion writes is the gold answer, whatever surrounds it: what
    the policy knows, apart from the format the score also asks for (" = 15" scores 0.5, "15" 1.0)."""
    numbers = NUMBER.findall(completion)
    return bool(numbers) and numbers[0] == answer.strip()


def held_out(cfg, model, tokenizer, source: ContextSource, rows, batch: int = 32) -> dict:
    """Greedy completions of the first eval items with C from `source` (built once for all of them, so
    `shuffled` never pairs an item with itself): accuracy, score, `number` (first_number_right) and,
    with the adapter, the routing metrics."""
    adapter = source.conditioner.adapter if source.conditioner is not None else None
    if adapter is not None:
        adapter.eval()
    context, metrics = source(rows, training=False)
    completions = []
    for k in range(0, len(rows), batch):
        prompts = [build_prompt(r["question"], tokenizer, cfg.task) for r in rows[k:k + batch]]
        completions += policy_completions(model, tokenizer, prompts, None if context is None else context[k:k + batch],
                                          cfg.training.max_completion_length, source.layout)
    if adapter is not None:
        adapter.train()
    summary = accuracy_summary([r["task"] for r in rows], score_rows(rows, completions, cfg))
    number = sum(first_number_right(c, str(r["answer"])) for c, r in zip(completions, rows)) / max(len(rows), 1)
    return {"accuracy": summary["accuracy"], "score": summary["score"], "number": number, **metrics,
            "examples": completions[:3]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16, help="training rows per step")
    parser.add_argument("--every", type=int, default=20, help="print and evaluate every k steps")
    parser.add_argument("--eval-items", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lora", action="store_true",
                        help="train the policy's LoRA too (at training.learning_rate), as GRPO does")
    parser.add_argument("--context", choices=SOURCES, default="adapter",
                        help="where C comes from (ContextSource); with --steps 0 nothing trains")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("config", nargs="*", help="[task] key=value ...")
    args = parser.parse_args(argv)
    task = next((a for a in args.config if "=" not in a), "demo")
    cfg = load_run_config(task, [a for a in args.config if "=" in a])
    torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.seed)
    sampler = random.Random(cfg.seed)

    model, tokenizer, lora_config = build_policy(cfg)
    model.requires_grad_(False)
    if args.lora:
        from peft import get_peft_model
        model = get_peft_model(model, lora_config)  # only the LoRA weights require gradients
    conditioner = None
    if args.context == "adapter":
        conditioner = build_conditioner(cfg, model.get_input_embeddings().weight.shape[1], tokenizer)
        if conditioner.adapter is None:
            parser.error(f"method {cfg.method!r} has no adapter g_phi to probe (perceiver, ffn, hard_routing)")
    source, t = ContextSource(args.context, cfg, model, tokenizer, conditioner), cfg.training
    adapter = conditioner.adapter if conditioner is not None else torch.nn.Module()
    groups = [{"params": list(adapter.parameters()), "lr": t.router_lr}]  # the trainer's two groups
    groups += [{"params": [p for p in model.parameters() if p.requires_grad], "lr": t.learning_rate}] if args.lora else []
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.AdamW(groups, eps=t.adam_epsilon, weight_decay=t.weight_decay) if groups else None
    if args.context == "shuffled" and min(args.batch, args.eval_items) < 2:
        parser.error("--context shuffled pairs each row with another row's answer: --batch and --eval-items must be >= 2")
    if optimizer is None and args.steps:
        parser.error(f"--context {args.context} without --lora trains nothing: add --lora, or --steps 0 to evaluate only")
    trained = [p for group in groups for p in group["params"]]
    train_rows = list(load_split(cfg.task, "train"))
    eval_rows = list(load_split(cfg.task, default_split(cfg)))[:args.eval_items]
    counts = {"trained/g_phi": sum(p.numel() for p in adapter.parameters()),
              "trained/lora": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    log = [{"step": 0, "context": args.context, **counts, **held_out(cfg, model, tokenizer, source, eval_rows)}]
    print(json.dumps(log[-1]), flush=True)
    start = time.perf_counter()
    try:
        for step in range(1, args.steps + 1):
            loss, metrics = teacher_forced_loss(model, tokenizer, source, cfg, sampler.sample(train_rows, args.batch))
            optimizer.zero_grad()
            loss.backward()
            grads = {part: sum(float(p.grad.norm()) ** 2 for n, p in adapter.named_parameters()
                               if n.startswith(part) and p.grad is not None) ** 0.5 for part in PARTS}
            torch.nn.utils.clip_grad_norm_(trained, t.max_grad_norm)
            optimizer.step()
            if step % args.every == 0 or step == args.steps:
                row = {"step": step, "loss": loss.item(), "seconds": round(time.perf_counter() - start, 1), **metrics,
                       **{f"grad/{k}": v for k, v in grads.items()}, **held_out(cfg, model, tokenizer, source, eval_rows)}
                log.append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) and abs(v) > 1e-3 else v for k, v in row.items()}),
                      flush=True)
    finally:
        if conditioner is not None and conditioner.pool is not None:
            conditioner.pool.shutdown()
    if args.out:
        args.out.write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
