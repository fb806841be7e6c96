"""`musketeers eval`: held-out accuracy of a trained (or untrained) policy, for every method.

    musketeers eval runs/<run>                  # final/ (or the last checkpoint-N) of a run
    musketeers eval runs/<run>/checkpoint-200   # one checkpoint
    musketeers eval runs/<run> --baseline       # the untrained policy, evaluated the same way
    musketeers eval runs/<run> --samples 3      # Reasoning Gym's recipe: mean@3 and pass@3 at T 0.6, top-p 0.9

The run's own config.yaml says how to rebuild everything: the policy (base model + the LoRA of the
checkpoint), the experts (started as the team file says), the adapter g_phi (weights from the
checkpoint's context_adapter.safetensors), the prompt (musketeers.data.build_prompt) and the
completion budget (training.max_completion_length). Decoding is greedy and batched (the default, and
the number the paper's tables compare with); each completion is scored with rewards.score_completion
(assistant prefill honoured, GSM8K read as the run's reward.gsm8k_extraction says). Overall and per
source dataset:
  accuracy  the share of items that earn the full score (CORRECT_SCORE): an item is correct only
            then, as Reasoning Gym's evaluation counts it
  score     the mean score, partial credit included (a few Reasoning Gym datasets give some)
Eval files written before these two names held `accuracy` (then the mean score) and `solved` (the
full-score share); `musketeers.rundir.read_eval_result` reads them as score and accuracy.

--samples k [--temperature T] [--top-p P]: Reasoning Gym's own evaluation
(training/evaluations/evaluate_model.py: 3 samples per item, T 0.6, top-p 0.9, the defaults here;
top-k off). k completions per item from the same prompts and C as greedy eval, through the same
generation function; torch is seeded from the run's seed and the batch's first item before each
batch, so the same command (same --batch-size and --limit) draws the same completions. A sample is
correct when it earns the full score (>= 1.0), as that script counts it (it sets every score below 1
to 0):
  mean@k  the mean over items of the share of an item's k samples that are correct
  pass@k  the share of items with at least one correct sample among k
  score   the mean score over all samples, partial credit included
overall and per source dataset. T = 0 decodes greedily: mean@k = pass@k = greedy accuracy.

--context other | none (methods with context tokens C): each item is given the C that g_phi makes of
the next item's expert states (the last item the first's): the same Cs, the wrong items; or no C at
all, the prompt alone (Figure 5's ablation, held out and greedy). Accuracy that holds under `other` does
not come from what C says about the item: C then acts as a learned prompt. The file name says which
(eval-<split>-context-other.json), so neither overwrites the item's own.

--baseline: the base policy without LoRA and, for context methods, an adapter freshly initialised
with the run's seed in the same order as `train()` builds it, i.e. exactly the g_phi the run started
from. Its output projection starts near zero, so the untrained policy sees the near-zero C it saw at
step one: the baseline measures the policy before any training, with the token layout unchanged.

Splits: GSM8K evaluates on its official test split, Reasoning Gym families on the held-out
validation items (the defaults). The result goes, as JSON written atomically, into the checkpoint
folder, or into the run directory for --baseline (file names: musketeers/rundir.py; a sampled eval's
name holds k, T and P, so it never overwrites the greedy one nor one of other settings).

This module owns the command: which checkpoint a path means, the eval JSON and its table. Generating
and scoring completions is musketeers/generation.py's (training's held-out evaluation shares it); this
module may import it and everything below it, and nothing imports this module but the commands.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from musketeers.data import default_split
from musketeers.generation import (CORRECT_SCORE, DEFAULT_BATCH_SIZE, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, EvalError,
                                   Evaluator, Sampling, accuracy_summary, complete_rows, sampled_summary, score_rows)
from musketeers.method_traits import METHOD_TRAITS
from musketeers.rundir import (CONFIG_FILE, baseline_eval_path, eval_path, final_or_last_checkpoint, is_checkpoint,
                               is_run_dir, read_config, write_json_atomic)


CONTEXT_SOURCES = ("own", "other", "none")
CONTEXT_NOTES = {"own": "", "other": ", each item given the C of the next item", "none": ", without C (the prompt alone)"}


# ----------------------------------------------------------------------------- paths


def resolve_target(path: str | Path, baseline: bool = False) -> tuple[Path, Path | None]:
    """(run dir, checkpoint dir) for a run dir or a checkpoint dir; the checkpoint is None only for
    a --baseline of a run without one."""
    path = Path(path)
    if is_run_dir(path):
        checkpoint = final_or_last_checkpoint(path)
        if checkpoint is None and not baseline:
            raise EvalError(f"{str(path)!r} has no final/ or checkpoint-N folder yet; --baseline evaluates the untrained policy")
        return path, checkpoint
    if is_checkpoint(path) and is_run_dir(path.parent):
        return path.parent, path
    raise EvalError(f"{str(path)!r} is neither a run directory (with {CONFIG_FILE}) nor a checkpoint folder inside one")




# ----------------------------------------------------------------------------- evaluation


def evaluate(path: str | Path, split: str | None = None, limit: int | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, baseline: bool = False, progress: bool = True,
             sampling: Sampling | None = None, context: str = "own") -> dict[str, Any]:
    """Evaluate a run or checkpoint, greedily or with `sampling`; writes and returns the result (see
    the module docstring)."""
    from musketeers.data import load_split

    if batch_size < 1 or (limit is not None and limit < 1):
        raise EvalError(f"--batch-size and --limit must be at least 1, got {batch_size} and {limit}")
    if context not in CONTEXT_SOURCES:
        raise EvalError(f"--context {context!r} is not one of {', '.join(CONTEXT_SOURCES)}")
    run_dir, checkpoint = resolve_target(path, baseline)
    cfg = read_config(run_dir)
    if context != "own" and not METHOD_TRAITS[cfg.method].context_tokens:
        raise EvalError(f"--context {context}: method {cfg.method!r} gives the policy no context tokens C "
                        f"(methods with C: {', '.join(t.name for t in METHOD_TRAITS.values() if t.context_tokens)})")
    split = split or default_split(cfg)
    all_rows = load_split(cfg.task, split)
    n = len(all_rows) if limit is None else min(limit, len(all_rows))
    if context == "other" and n < 2:
        raise EvalError("--context other gives each item the C of the next one: evaluate at least 2 items")
    start = time.perf_counter()
    rows = [all_rows[k] for k in range(n)]
    evaluator = Evaluator(cfg, checkpoint, baseline)
    if context == "other":  # item k gets the C of item k+1 (the last one the first's): the same Cs, other items
        evaluator.context_of = {r["question"]: rows[(k + 1) % n]["question"] for k, r in enumerate(rows)}
    evaluator.without_context = context == "none"
    k = 1 if sampling is None else sampling.samples
    try:
        completions = complete_rows(evaluator, rows, batch_size, progress, desc=f"eval {split}", sampling=sampling)
    finally:
        evaluator.close()
    scores = score_rows([r for r in rows for _ in range(k)], completions, cfg)
    datasets = [r["task"] for r in rows]
    result = {
        "run_dir": str(run_dir), "checkpoint": None if baseline else str(checkpoint), "baseline": baseline,
        "task": cfg.task.name, "method": cfg.method, "team": cfg.team.name, "seed": cfg.seed,
        "split": split, "limit": limit, "split_size": len(all_rows), "decoding": "greedy" if sampling is None else "sampled",
        "max_completion_length": cfg.training.max_completion_length, "context": context,
        "seconds": round(time.perf_counter() - start, 2),
        **({"gsm8k_extraction": cfg.reward.gsm8k_extraction} if cfg.task.source == "gsm8k" else {}),
    }
    if sampling is None:
        result.update(**accuracy_summary(datasets, scores),
                      items=[{"index": j, "dataset": r["task"], "score": sc, "completion": c}
                             for j, (r, sc, c) in enumerate(zip(rows, scores, completions))])
    else:
        item_scores = [scores[j * k:(j + 1) * k] for j in range(len(rows))]
        result.update(samples=k, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                      sampling_seed=cfg.seed, correct_at=CORRECT_SCORE, **sampled_summary(datasets, item_scores),
                      items=[{"index": j, "dataset": r["task"], "scores": sc, "completions": completions[j * k:(j + 1) * k]}
                             for j, (r, sc) in enumerate(zip(rows, item_scores))])
    tag = "-".join(t for t in ("" if sampling is None else sampling.tag, "" if context == "own" else f"context-{context}") if t)
    path = baseline_eval_path(run_dir, split, tag) if baseline else eval_path(checkpoint, split, tag)
    result["path"] = str(path)
    write_json_atomic(path, result)
    return result




# ----------------------------------------------------------------------------- CLI


def format_result(result: dict[str, Any]) -> str:
    """A markdown table per dataset and overall: accuracy and score (greedy), or mean@k and pass@k."""
    what = "untrained baseline" if result["baseline"] else result["checkpoint"]
    sampled = result["decoding"] == "sampled"
    decoding = (f"{result['samples']} samples per item at temperature {result['temperature']:g}, top-p {result['top_p']:g}"
                if sampled else "greedy")
    head = (f"eval of {what}: method {result['method']}, task {result['task']}, split {result['split']} "
            f"({result['n']} of {result['split_size']} items), {decoding}, {result['max_completion_length']} tokens"
            f"{CONTEXT_NOTES[result.get('context', 'own')]}")
    if sampled:
        k = result["samples"]
        columns, keys = f"mean@{k} (correct samples) | pass@{k} (items with a correct sample)", ("mean@k", "pass@k")
    else:
        columns, keys = "accuracy (full score) | score (mean, partial credit)", ("accuracy", "score")
    lines = [head, "", f"| dataset | n | {columns} |", "| --- | ---: | ---: | ---: |"]
    for name, d in [*result["per_dataset"].items(), ("**all**", result)]:
        lines.append(f"| {name} | {d['n']} | {100 * d[keys[0]]:.2f}% | {100 * d[keys[1]]:.2f}% |")
    return "\n".join(lines)


def sampling_from_args(args: argparse.Namespace) -> Sampling | None:
    if args.samples is None:
        if args.temperature is not None or args.top_p is not None:
            raise EvalError("--temperature and --top-p set sampled evaluation: give --samples K with them")
        return None
    return Sampling(args.samples, DEFAULT_TEMPERATURE if args.temperature is None else args.temperature,
                    DEFAULT_TOP_P if args.top_p is None else args.top_p)


def cmd_eval(args: argparse.Namespace) -> None:
    from musketeers.console import run_output

    with run_output():  # the phase lines of loading (policy, experts), as `musketeers train` prints them
        result = evaluate(args.path, split=args.split, limit=args.limit, batch_size=args.batch_size,
                          baseline=args.baseline, sampling=sampling_from_args(args), context=args.context)
    print(format_result(result))
    print(f"wrote {result['path']}")


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register `musketeers eval`."""
    p = subparsers.add_parser("eval", help="held-out accuracy of a run or checkpoint, overall and per dataset: greedy, "
                                           "or mean@k and pass@k of k samples (--samples)")
    p.add_argument("path", help="a run directory (evaluates final/, else its last checkpoint-N) or a checkpoint folder")
    p.add_argument("--split", choices=["validation", "test"],
                   help="default: test for gsm8k (the official test split), validation for Reasoning Gym families")
    p.add_argument("--limit", type=int, help="evaluate only the first N items")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"items per batch (default {DEFAULT_BATCH_SIZE}); sampled, each item makes K rows")
    p.add_argument("--baseline", action="store_true",
                   help="the untrained policy (no LoRA) with the run's initial adapter, evaluated the same way")
    p.add_argument("--samples", type=int, metavar="K",
                   help="sample K completions per item and report mean@K and pass@K (Reasoning Gym's recipe: 3) "
                        "instead of greedy accuracy")
    p.add_argument("--temperature", type=float, metavar="T", help=f"with --samples (default {DEFAULT_TEMPERATURE}; 0: greedy)")
    p.add_argument("--top-p", type=float, metavar="P", help=f"with --samples, in (0, 1] (default {DEFAULT_TOP_P})")
    p.add_argument("--context", choices=CONTEXT_SOURCES, default="own",
                   help="methods with context tokens: each item's own C (default), the C of the next item "
                        "(other: does the policy use what C says about its item?) or none (the prompt alone)")
    p.set_defaults(func=cmd_eval)
    return p
