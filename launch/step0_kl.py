"""Step 0 on the real embedded policy: how far the untrained context methods are from the base policy
and from their KL reference, for every context position x reference (musketeers/context.py).

    python launch/step0_kl.py                          # 64 demo prompts x 4 samples, 500 validation items
    python launch/step0_kl.py --prompts 16 --eval-items 64 --positions after_first,prefix

The policy is the demo's (SmolLM2-135M-Instruct, LoRA at its initialisation: B = 0) and the adapter
g_phi is exactly the one a run starts from (same seed, built in the same order as `train()`), fed by
the embedded team. For each position:
  1. sample G completions per training prompt from the policy with C (temperature 1, as training);
  2. on those completions, per completion token and over the whole vocabulary:
       kl_ref   KL(policy || reference) for each reference: `zeros` (C = 0 at the same positions) and
                `none` (no context tokens: pi_ref(y | x)); TRL's logged k3 estimate beside it
       kl_base  KL(policy || base model without C), the same as kl_ref of `none`
  3. greedy accuracy of the untrained policy on the first --eval-items validation items, next to
     `single` (no C) on the same items, and how many items score differently from single.
Prints a markdown table and writes all figures as JSON (--out).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None) -> argparse.Namespace:
    from musketeers.config import CONTEXT_POSITIONS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="demo")
    p.add_argument("--method", default="perceiver", choices=("perceiver", "ffn"))
    p.add_argument("--prompts", type=int, default=64, help="training prompts the step-0 KL is averaged over")
    p.add_argument("--generations", type=int, default=4, help="completions sampled per prompt")
    p.add_argument("--eval-items", type=int, default=500, help="validation items for the greedy accuracy (0: skip)")
    p.add_argument("--positions", default=",".join(CONTEXT_POSITIONS))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/step0_kl.json")
    p.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = p.parse_args(argv)
    args.positions = [x.strip() for x in args.positions.split(",") if x.strip()]
    bad = [x for x in args.positions if x not in CONTEXT_POSITIONS]
    if bad:
        p.error(f"--positions: unknown {bad}; valid: {', '.join(CONTEXT_POSITIONS)}")
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- log-probs


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def completion_log_probs(model, ids, mask, k: int, context, layout) -> torch.Tensor:
    """log pi(. | prefix) over the vocabulary at the k completion positions of [prompt][completion]
    rows, C placed as `layout` says (None: no C) -> [B, k, V]."""
    from musketeers.context import insert_context, positions_from_mask

    embeds = model.get_input_embeddings()(ids)
    if context is None:
        full_mask, positions = mask, positions_from_mask(mask)
    else:
        embeds, full_mask, positions = insert_context(embeds, mask, context, layout.slot(mask[:, :-k]))
    logits = model(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions, logits_to_keep=k + 1).logits
    return logits[:, :-1].float().log_softmax(-1)


def kl_figures(policy: torch.Tensor, other: torch.Tensor, sampled: torch.Tensor, valid: torch.Tensor) -> tuple[float, float]:
    """Sums over valid completion tokens of the exact KL(policy || other) and of TRL's k3 estimate at
    the sampled tokens: exp(r) - r - 1, r = log other - log policy."""
    exact = (policy.exp() * (policy - other)).sum(-1)
    r = (other - policy).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
    k3 = torch.exp(r) - r - 1
    return float(exact[valid].sum()), float(k3[valid].sum())


# ----------------------------------------------------------------------------- measurement


def sample_completions(model, tokenizer, prompts, contexts, layout, generations, max_tokens, batch_size, eos):
    """G sampled completions per prompt, from the policy with C (token ids, cut after EOS)."""
    from transformers import GenerationConfig

    from musketeers.context import generate_with_context

    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_tokens,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
    out = []
    per_batch = max(1, batch_size // generations)
    for s in range(0, len(prompts), per_batch):
        rows = [p for p in prompts[s : s + per_batch] for _ in range(generations)]
        ids, mask = left_pad(rows, tokenizer.pad_token_id)
        c = None if contexts is None else contexts[s : s + per_batch].repeat_interleave(generations, 0)
        out += generate_with_context(model, ids, mask, c, eos, layout, generation_config=config)
    return out


def step0_kl(model, tokenizer, prompt_ids, contexts, layout, completions, generations, batch_size) -> dict:
    """Mean per-token KL of the policy (with C) against the zeros reference, the none reference (= the
    base model without C), exact and k3, over the sampled completions."""
    from musketeers.context import ContextLayout

    sums = {"zeros": [0.0, 0.0], "none": [0.0, 0.0]}
    tokens = 0
    rows = [p for p in prompt_ids for _ in range(generations)]
    c_rows = contexts.repeat_interleave(generations, 0)
    for s in range(0, len(rows), batch_size):
        comp = completions[s : s + batch_size]
        k = max(map(len, comp))
        p_ids, p_mask = left_pad(rows[s : s + batch_size], tokenizer.pad_token_id)
        c_ids = torch.tensor([c + [tokenizer.pad_token_id] * (k - len(c)) for c in comp])
        c_mask = torch.tensor([[1] * len(c) + [0] * (k - len(c)) for c in comp])
        ids, mask = torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask], 1)
        valid = c_mask.bool()
        c = c_rows[s : s + batch_size]
        policy = completion_log_probs(model, ids, mask, k, c, layout)
        for reference in sums:
            ref_c = ContextLayout(layout.position, reference).reference_context(c)
            other = completion_log_probs(model, ids, mask, k, ref_c, layout)
            exact, k3 = kl_figures(policy, other, c_ids, valid)
            sums[reference][0] += exact
            sums[reference][1] += k3
        tokens += int(valid.sum())
    return {ref: {"kl_exact": v[0] / tokens, "kl_k3": v[1] / tokens} for ref, v in sums.items()} | {"tokens": tokens}


def greedy_scores(model, tokenizer, cfg, rows, contexts, layout, batch_size) -> tuple[list[float], list[str]]:
    from musketeers.data import build_prompt
    from musketeers.generation import greedy_completions, score_rows

    completions = []
    for s in range(0, len(rows), batch_size):
        prompts = [build_prompt(r["question"], tokenizer, cfg.task) for r in rows[s : s + batch_size]]
        c = None if contexts is None else contexts[s : s + batch_size]
        completions += greedy_completions(model, tokenizer, prompts, c, cfg.training.max_completion_length, layout)
    return score_rows(rows, completions, cfg.task.assistant_prefill), completions


def paired(scores: list[float], single: list[float]) -> dict:
    """Accuracy difference to single on the same items, its paired standard error, items that differ."""
    d = [a - b for a, b in zip(scores, single)]
    n, mean = len(d), sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else float("nan")
    return {"accuracy": sum(scores) / n, "delta_vs_single": mean, "delta_se": se, "items_differing": sum(x != 0 for x in d)}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import set_seed

    from musketeers.config import load_run_config
    from musketeers.context import ContextLayout
    from musketeers.data import build_prompt, load_split
    from musketeers.generation import eos_token_ids
    from musketeers.rundir import write_json_atomic
    from musketeers.conditioning import build_conditioner
    from musketeers.policy import build_policy

    cache = tempfile.mkdtemp(prefix="step0-states-")
    cfg = load_run_config(args.task, [f"method={args.method}", "team.backend=local", f"team.cache_dir={cache}", *args.overrides])
    start = time.perf_counter()
    log(f"loading the policy {cfg.policy.model} and the {cfg.team.name} team ({', '.join(e.name for e in cfg.team.experts)})")
    set_seed(cfg.seed)  # the order of train(): policy, then the adapter, so g_phi is the run's initial one
    model, tokenizer, _ = build_policy(cfg)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    conditioner = build_conditioner(cfg, model.get_input_embeddings().weight.shape[1], tokenizer)
    model.eval()
    conditioner.adapter.eval()
    eos = eos_token_ids(model, tokenizer)

    train_rows = [load_split(cfg.task, "train")[k] for k in range(args.prompts)]
    questions = [r["question"] for r in train_rows]
    prompt_ids = [tokenizer(text=build_prompt(q, tokenizer, cfg.task))["input_ids"] for q in questions]
    eval_rows = [r for _, r in zip(range(args.eval_items), load_split(cfg.task, "validation"))]
    with torch.no_grad():
        log(f"expert states and C for {len(questions)} training prompts and {len(eval_rows)} validation items")
        train_c = conditioner.prepare(questions, training=False).context
        eval_c = conditioner.prepare([r["question"] for r in eval_rows], training=False).context if eval_rows else None
        log(f"C at step 0: mean |C| {train_c.abs().mean():.2e}, max {train_c.abs().max():.2e}; "
            f"an embedding row's mean |x|: {model.get_input_embeddings().weight.abs().mean():.2e}")
        results = {"config": {"task": cfg.task.name, "method": cfg.method, "policy": cfg.policy.model, "team": cfg.team.name,
                              "prompts": args.prompts, "generations": args.generations, "eval_items": len(eval_rows),
                              "max_completion_length": cfg.training.max_completion_length, "seed": cfg.seed,
                              "torch": torch.__version__, "threads": args.threads}, "positions": {}}
        if eval_rows:
            log("greedy accuracy of single (no C)")
            single, _ = greedy_scores(model, tokenizer, cfg, eval_rows, None, ContextLayout(), args.batch_size)
            results["single"] = {"accuracy": sum(single) / len(single)}
        for position in args.positions:
            layout = ContextLayout(position)
            torch.manual_seed(cfg.seed)
            log(f"{position}: sampling {args.generations} completions for each of {len(questions)} prompts")
            completions = sample_completions(model, tokenizer, prompt_ids, train_c, layout, args.generations,
                                             cfg.training.max_completion_length, args.batch_size, eos)
            log(f"{position}: KL against the references")
            entry = step0_kl(model, tokenizer, prompt_ids, train_c, layout, completions, args.generations, args.batch_size)
            if eval_rows:
                log(f"{position}: greedy accuracy of the untrained policy")
                scores, _ = greedy_scores(model, tokenizer, cfg, eval_rows, eval_c, layout, args.batch_size)
                entry["untrained"] = paired(scores, single)
            results["positions"][position] = entry
    results["seconds"] = round(time.perf_counter() - start, 1)
    conditioner.pool.shutdown()
    write_json_atomic(Path(args.out), results)
    print(table(results))
    log(f"wrote {args.out} ({results['seconds']} s)")


def table(results: dict) -> str:
    lines = ["| position | reference | step-0 KL(policy ‖ ref), exact | k3 (TRL's logged kl) | KL(policy ‖ base without C) "
             "| untrained accuracy (single: {}) | items differing from single |".format(
                 f"{100 * results['single']['accuracy']:.1f}%" if "single" in results else "-"),
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for position, e in results["positions"].items():
        u = e.get("untrained")
        acc = f"{100 * u['accuracy']:.1f}% ({100 * u['delta_vs_single']:+.1f} ± {100 * u['delta_se']:.1f})" if u else "-"
        diff = f"{u['items_differing']} of {results['config']['eval_items']}" if u else "-"
        for reference in ("zeros", "none"):
            r = e[reference]
            lines.append(f"| {position} | {reference} | {r['kl_exact']:.2g} | {r['kl_k3']:.2g} | {e['none']['kl_exact']:.2g} "
                         f"| {acc} | {diff} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
