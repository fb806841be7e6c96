"""`musketeers eval`: greedy held-out accuracy of a trained (or untrained) policy, for every method.

    musketeers eval runs/<run>                  # final/ (or the last checkpoint-N) of a run
    musketeers eval runs/<run>/checkpoint-200   # one checkpoint
    musketeers eval runs/<run> --baseline       # the untrained policy, evaluated the same way

The run's own config.yaml says how to rebuild everything: the policy (base model + the LoRA of the
checkpoint), the experts (started as the team file says), the adapter g_phi (weights from the
checkpoint's context_adapter.safetensors), the prompt (musketeers.data.build_prompt) and the
completion budget (training.max_completion_length). Decoding is greedy and batched; each completion
is scored with rewards.score_completion (assistant prefill honoured), and accuracy is the mean score
(Reasoning Gym gives partial credit on a few datasets), overall and per source dataset.

--baseline: the base policy without LoRA and, for context methods, an adapter freshly initialised
with the run's seed in the same order as `train()` builds it, i.e. exactly the g_phi the run started
from. Its output projection starts near zero, so the untrained policy sees the near-zero C it saw at
step one: the baseline measures the policy before any training, with the token layout unchanged.

Splits: GSM8K evaluates on its official test split, Reasoning Gym families on the held-out
validation items (the defaults). The result goes, as JSON written atomically, into the checkpoint
folder, or into the run directory for --baseline (file names: musketeers/rundir.py).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musketeers.config import RunConfig
from musketeers.errors import MusketeersError
from musketeers.rundir import (CONFIG_FILE, baseline_eval_path, eval_path, final_or_last_checkpoint, is_checkpoint,
                               is_run_dir, read_config, write_json_atomic)

if TYPE_CHECKING:  # torch is imported where it is used: registering the CLI command stays fast
    import torch

    from musketeers.context import ContextLayout

DEFAULT_BATCH_SIZE = 16


class EvalError(MusketeersError, ValueError):
    """A bad `musketeers eval` input: a path that is not a run or checkpoint, a bad option."""


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


def default_split(cfg: RunConfig) -> str:
    """GSM8K: the official test split; Reasoning Gym: the held-out validation items."""
    return "test" if cfg.task.source == "gsm8k" else "validation"


# ----------------------------------------------------------------------------- generation


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every EOS id the model declares plus the tokenizer's, as TRL's GRPOTrainer collects them."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    return ids if tokenizer.eos_token_id in ids else [tokenizer.eos_token_id, *ids]


def greedy_completions(model, tokenizer, prompts: list[str], context: torch.Tensor | None, max_new_tokens: int,
                       layout: ContextLayout, cache: str = "dynamic") -> list[str]:
    """Greedy completions (decoded, special tokens dropped, as TRL decodes them) of prompt strings,
    tokenized as TRL tokenizes them, with C placed as `layout` says."""
    import torch
    from transformers import GenerationConfig
    from trl.trainer.utils import pad

    from musketeers.context import generate_with_context

    device = model.get_input_embeddings().weight.device
    prompt_ids = tokenizer(text=prompts)["input_ids"]
    ids = pad([torch.tensor(p) for p in prompt_ids], padding_value=tokenizer.pad_token_id, padding_side="left").to(device)
    mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompt_ids], padding_value=0, padding_side="left").to(device)
    eos = eos_token_ids(model, tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=eos, bos_token_id=tokenizer.bos_token_id)
    completion_ids = generate_with_context(model, ids, mask, context, eos, layout, cache, generation_config=config)
    return tokenizer.batch_decode(completion_ids, skip_special_tokens=True)


# ----------------------------------------------------------------------------- the evaluated system


class Evaluator:
    """Policy, tokenizer and conditioner of a run, rebuilt for evaluation (call close() after)."""

    def __init__(self, cfg: RunConfig, checkpoint: Path | None, baseline: bool = False):
        from transformers import set_seed

        from musketeers.conditioning import build_conditioner
        from musketeers.train import build_policy

        self.cfg = cfg
        set_seed(cfg.seed)  # same order as train(): the adapter gets the run's initial weights
        policy, self.tokenizer, _ = build_policy(cfg)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        embeddings = policy.get_input_embeddings().weight
        self.conditioner = build_conditioner(cfg, embeddings.shape[1], self.tokenizer, embeddings.device)
        try:
            self.model = (policy if baseline else self._load_trained(policy, checkpoint)).eval()
            self._to_device()
        except BaseException:
            self.close()  # the experts are running by now
            raise

    @classmethod
    def of(cls, cfg: RunConfig, model, tokenizer, conditioner) -> Evaluator:
        """An Evaluator of parts that exist already (training's policy and conditioner): nothing is loaded; the
        caller puts the model in eval mode and owns the experts (do not close() it)."""
        evaluator = cls.__new__(cls)
        evaluator.cfg, evaluator.model, evaluator.tokenizer, evaluator.conditioner = cfg, model, tokenizer, conditioner
        return evaluator

    def _load_trained(self, policy, checkpoint: Path):
        from peft import PeftModel
        from safetensors.torch import load_file

        from musketeers.rundir import ADAPTER_FILE

        policy = PeftModel.from_pretrained(policy, str(checkpoint))
        adapter = self.conditioner.adapter
        if adapter is not None:
            path = checkpoint / ADAPTER_FILE
            if not path.is_file():
                raise EvalError(f"{str(checkpoint)!r} has no {ADAPTER_FILE} for method {self.cfg.method!r}")
            adapter.load_state_dict(load_file(str(path)))
        return policy

    def _to_device(self) -> None:
        device = self.model.get_input_embeddings().weight.device
        for module in (self.conditioner.adapter, self.conditioner.encoder):
            if module is not None:
                module.to(device).eval()

    def complete(self, questions: list[str]) -> list[str]:
        """Greedy completions of the policy for a batch of questions, conditioned as in training."""
        from musketeers.data import build_prompt

        cond = self.conditioner.prepare(questions, training=False)
        prompts = cond.prompts or [build_prompt(q, self.tokenizer, self.cfg.task) for q in questions]
        return greedy_completions(self.model, self.tokenizer, prompts, cond.context, self.cfg.training.max_completion_length,
                                  self.conditioner.layout, self.cfg.training.generation_cache)

    def close(self) -> None:
        if self.conditioner.pool is not None:
            self.conditioner.pool.shutdown()


# ----------------------------------------------------------------------------- scoring


def score_rows(rows: list[dict[str, Any]], completions: list[str], prefill: str) -> list[float]:
    from rewards import score_completion

    return [score_completion(c, r["answer"], r["task"], r["entry"], prefill=prefill) for r, c in zip(rows, completions, strict=True)]


def _stats(scores: list[float]) -> dict[str, Any]:
    """accuracy = mean score (Reasoning Gym gives partial credit on some datasets); solved = share
    of items with full credit."""
    n = len(scores)
    return {"n": n, "accuracy": sum(scores) / n if n else float("nan"),
            "solved": sum(s >= 1.0 for s in scores) / n if n else float("nan")}


def accuracy_summary(datasets: list[str], scores: list[float]) -> dict[str, Any]:
    """Accuracy and solved share overall and per source dataset."""
    groups: dict[str, list[float]] = defaultdict(list)
    for name, score in zip(datasets, scores, strict=True):
        groups[name].append(score)
    return {**_stats(scores), "per_dataset": {name: _stats(s) for name, s in sorted(groups.items())}}


def complete_rows(evaluator: Evaluator, rows: list[dict[str, Any]], batch_size: int = DEFAULT_BATCH_SIZE,
                  progress: bool = False, desc: str = "eval") -> list[str]:
    """Greedy completions of `rows`, `batch_size` questions at a time, in order."""
    from tqdm import tqdm

    completions: list[str] = []
    with tqdm(total=len(rows), desc=desc, unit="item", disable=not progress) as bar:
        for s in range(0, len(rows), batch_size):
            batch = rows[s : s + batch_size]
            completions += evaluator.complete([r["question"] for r in batch])
            bar.update(len(batch))
    return completions


class HeldOut:
    """training.eval_every: the first training.eval_size items of the eval split, scored during training
    exactly as `musketeers eval --limit eval_size` scores a checkpoint (same rows, batches and greedy path)."""

    def __init__(self, cfg: RunConfig):
        from musketeers.data import load_split

        self.cfg, self.split = cfg, default_split(cfg)
        rows = load_split(cfg.task, self.split)
        self.rows = [rows[k] for k in range(min(cfg.training.eval_size, len(rows)))]

    def accuracy(self, model, tokenizer, conditioner) -> dict[str, Any]:
        """Accuracy overall and per dataset (accuracy_summary) of the policy as it is now, in eval mode."""
        completions = complete_rows(Evaluator.of(self.cfg, model, tokenizer, conditioner), self.rows)
        scores = score_rows(self.rows, completions, self.cfg.task.assistant_prefill)
        return accuracy_summary([r["task"] for r in self.rows], scores)


def evaluate(path: str | Path, split: str | None = None, limit: int | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, baseline: bool = False, progress: bool = True) -> dict[str, Any]:
    """Evaluate a run or checkpoint; writes and returns the result (see the module docstring)."""
    from musketeers.data import load_split

    if batch_size < 1 or (limit is not None and limit < 1):
        raise EvalError(f"--batch-size and --limit must be at least 1, got {batch_size} and {limit}")
    run_dir, checkpoint = resolve_target(path, baseline)
    cfg = read_config(run_dir)
    split = split or default_split(cfg)
    all_rows = load_split(cfg.task, split)
    n = len(all_rows) if limit is None else min(limit, len(all_rows))
    start = time.perf_counter()
    rows = [all_rows[k] for k in range(n)]
    evaluator = Evaluator(cfg, checkpoint, baseline)
    try:
        completions = complete_rows(evaluator, rows, batch_size, progress, desc=f"eval {split}")
    finally:
        evaluator.close()
    scores = score_rows(rows, completions, cfg.task.assistant_prefill)
    result = {
        "run_dir": str(run_dir), "checkpoint": None if baseline else str(checkpoint), "baseline": baseline,
        "task": cfg.task.name, "method": cfg.method, "team": cfg.team.name, "seed": cfg.seed,
        "split": split, "limit": limit, "split_size": len(all_rows), "decoding": "greedy",
        "max_completion_length": cfg.training.max_completion_length, "seconds": round(time.perf_counter() - start, 2),
        **accuracy_summary([r["task"] for r in rows], scores),
        "items": [{"index": k, "dataset": r["task"], "score": sc, "completion": c}
                  for k, (r, sc, c) in enumerate(zip(rows, scores, completions))],
    }
    path = baseline_eval_path(run_dir, split) if baseline else eval_path(checkpoint, split)
    result["path"] = str(path)
    write_json_atomic(path, result)
    return result


# ----------------------------------------------------------------------------- CLI


def format_result(result: dict[str, Any]) -> str:
    """A markdown table of accuracy per dataset and overall."""
    what = "untrained baseline" if result["baseline"] else result["checkpoint"]
    head = (f"eval of {what}: method {result['method']}, task {result['task']}, split {result['split']} "
            f"({result['n']} of {result['split_size']} items), greedy, {result['max_completion_length']} tokens")
    lines = [head, "", "| dataset | n | accuracy (mean score) | solved (full score) |", "| --- | ---: | ---: | ---: |"]
    for name, d in [*result["per_dataset"].items(), ("**all**", result)]:
        lines.append(f"| {name} | {d['n']} | {100 * d['accuracy']:.2f}% | {100 * d['solved']:.2f}% |")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> None:
    result = evaluate(args.path, split=args.split, limit=args.limit, batch_size=args.batch_size, baseline=args.baseline)
    print(format_result(result))
    print(f"wrote {result['path']}")


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register `musketeers eval`."""
    p = subparsers.add_parser("eval", help="greedy held-out accuracy of a run or checkpoint (overall and per dataset)")
    p.add_argument("path", help="a run directory (evaluates final/, else its last checkpoint-N) or a checkpoint folder")
    p.add_argument("--split", choices=["validation", "test"],
                   help="default: test for gsm8k (the official test split), validation for Reasoning Gym families")
    p.add_argument("--limit", type=int, help="evaluate only the first N items")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"prompts per batch (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--baseline", action="store_true",
                   help="the untrained policy (no LoRA) with the run's initial adapter, evaluated the same way")
    p.set_defaults(func=cmd_eval)
    return p
