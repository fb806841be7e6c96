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
full-score share); `read_eval_result` reads them as score and accuracy.

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

--baseline: the base policy without LoRA and, for context methods, an adapter freshly initialised
with the run's seed in the same order as `train()` builds it, i.e. exactly the g_phi the run started
from. Its output projection starts near zero, so the untrained policy sees the near-zero C it saw at
step one: the baseline measures the policy before any training, with the token layout unchanged.

Splits: GSM8K evaluates on its official test split, Reasoning Gym families on the held-out
validation items (the defaults). The result goes, as JSON written atomically, into the checkpoint
folder, or into the run directory for --baseline (file names: musketeers/rundir.py; a sampled eval's
name holds k, T and P, so it never overwrites the greedy one nor one of other settings).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musketeers.config import RunConfig
from musketeers.errors import MusketeersError
from musketeers.rundir import (CONFIG_FILE, baseline_eval_path, eval_path, final_or_last_checkpoint, is_checkpoint,
                               is_run_dir, read_config, sampling_tag, write_json_atomic)

if TYPE_CHECKING:  # torch is imported where it is used: registering the CLI command stays fast
    import torch

    from musketeers.context import ContextLayout

DEFAULT_BATCH_SIZE = 16
DEFAULT_TEMPERATURE = 0.6  # Reasoning Gym's evaluate_model recipe
DEFAULT_TOP_P = 0.9
CORRECT_SCORE = 1.0  # an item or sample is correct from this score on: the full score (= rewards.FULL_SCORE)


class EvalError(MusketeersError, ValueError):
    """A bad `musketeers eval` input: a path that is not a run or checkpoint, a bad option."""


@dataclass(frozen=True)
class Sampling:
    """Sampled evaluation: `samples` completions per item at `temperature` and `top_p`, top-k off."""

    samples: int
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P

    def __post_init__(self):
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise EvalError(f"--samples must be an integer of at least 1, got {self.samples}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise EvalError(f"--temperature must be a finite number of at least 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EvalError(f"--top-p must be in (0, 1], got {self.top_p}")

    @property
    def tag(self) -> str:
        return sampling_tag(self.samples, self.temperature, self.top_p)


def batch_seed(run_seed: int, first_item: int) -> int:
    """The torch seed a sampled batch starts from: one stream per (run seed, batch)."""
    return run_seed * 2**32 + first_item


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


def decoding_config(tokenizer, eos: list[int], max_new_tokens: int, sampling: Sampling | None = None):
    """The GenerationConfig of evaluation: greedy, or sampling at T and top-p with top-k off (T = 0:
    greedy). `generate` fills every field left unset from the model's own generation_config
    (Qwen2.5-Instruct ships repetition_penalty 1.05, top_k 20, top_p 0.8), so those are set here, as
    TRL sets them for the completions a run trains on."""
    from transformers import GenerationConfig

    common = dict(max_new_tokens=max_new_tokens, repetition_penalty=1.0, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=eos, bos_token_id=tokenizer.bos_token_id)
    if sampling is None or sampling.temperature == 0:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, **common)


def policy_completions(model, tokenizer, prompts: list[str], context: torch.Tensor | None, max_new_tokens: int,
                       layout: ContextLayout, cache: str = "dynamic", sampling: Sampling | None = None,
                       seed: int = 0) -> list[str]:
    """Completions (decoded, special tokens dropped, as TRL decodes them) of prompt strings, tokenized
    as TRL tokenizes them, with C [B, m, D] placed as `layout` says: one greedy completion per prompt,
    or with `sampling` k per prompt, adjacent (prompt i's are i*k .. i*k+k-1), drawn after
    torch.manual_seed(seed). Each prompt row repeats k times, as GRPO repeats it G times, so with the
    default dynamic cache the prompt with its C is prefilled once (musketeers.context.generate_with_context)."""
    import torch
    from trl.trainer.utils import pad

    from musketeers.context import generate_with_context

    k = 1 if sampling is None else sampling.samples
    draws = k if sampling is not None and sampling.temperature > 0 else 1  # greedy copies would be identical
    if draws > 1:
        prompts = [p for p in prompts for _ in range(draws)]
        context = None if context is None else context.repeat_interleave(draws, dim=0)
    device = model.get_input_embeddings().weight.device
    prompt_ids = tokenizer(text=prompts)["input_ids"]
    ids = pad([torch.tensor(p) for p in prompt_ids], padding_value=tokenizer.pad_token_id, padding_side="left").to(device)
    mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompt_ids], padding_value=0, padding_side="left").to(device)
    eos = eos_token_ids(model, tokenizer)
    config = decoding_config(tokenizer, eos, max_new_tokens, sampling)
    if sampling is not None:
        torch.manual_seed(seed)
    completion_ids = generate_with_context(model, ids, mask, context, eos, layout, cache, generation_config=config)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return [t for t in texts for _ in range(k // draws)]


def greedy_completions(model, tokenizer, prompts: list[str], context: torch.Tensor | None, max_new_tokens: int,
                       layout: ContextLayout, cache: str = "dynamic") -> list[str]:
    """One greedy completion per prompt (policy_completions without sampling)."""
    return policy_completions(model, tokenizer, prompts, context, max_new_tokens, layout, cache)


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

    def complete(self, questions: list[str], sampling: Sampling | None = None, seed: int = 0) -> list[str]:
        """Completions of the policy for a batch of questions, conditioned as in training: greedy, one
        per question, or `sampling.samples` per question, adjacent (see policy_completions)."""
        from musketeers.data import build_prompt

        cond = self.conditioner.prepare(questions, training=False)  # once per question, whatever k is
        prompts = cond.prompts or [build_prompt(q, self.tokenizer, self.cfg.task) for q in questions]
        return policy_completions(self.model, self.tokenizer, prompts, cond.context, self.cfg.training.max_completion_length,
                                  self.conditioner.layout, self.cfg.training.generation_cache, sampling, seed)

    def close(self) -> None:
        if self.conditioner.pool is not None:
            self.conditioner.pool.shutdown()


# ----------------------------------------------------------------------------- scoring


def score_rows(rows: list[dict[str, Any]], completions: list[str], cfg: RunConfig) -> list[float]:
    """Each completion's score as training scores it (the task's prefill, reward.gsm8k_extraction)."""
    from rewards import score_completion

    prefill, extraction = cfg.task.assistant_prefill, cfg.reward.gsm8k_extraction
    return [score_completion(c, r["answer"], r["task"], r["entry"], prefill=prefill, gsm8k_extraction=extraction)
            for r, c in zip(rows, completions, strict=True)]


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else float("nan")


def _stats(scores: list[float]) -> dict[str, Any]:
    """accuracy = share of items with the full score; score = mean score (module docstring)."""
    return {"n": len(scores), "accuracy": _mean([s >= CORRECT_SCORE for s in scores]), "score": _mean(scores)}


def _by_dataset(datasets: list[str], values: list) -> dict[str, list]:
    groups: dict[str, list] = defaultdict(list)
    for name, value in zip(datasets, values, strict=True):
        groups[name].append(value)
    return dict(sorted(groups.items()))


def accuracy_summary(datasets: list[str], scores: list[float]) -> dict[str, Any]:
    """Accuracy and score overall and per source dataset."""
    return {**_stats(scores), "per_dataset": {name: _stats(s) for name, s in _by_dataset(datasets, scores).items()}}


def _sampled_stats(item_scores: list[list[float]]) -> dict[str, Any]:
    """mean@k, pass@k and score of items' k sample scores (module docstring; correct: score >= CORRECT_SCORE)."""
    correct = [[s >= CORRECT_SCORE for s in scores] for scores in item_scores]
    return {"n": len(item_scores), "mean@k": _mean([_mean(c) for c in correct]), "pass@k": _mean([any(c) for c in correct]),
            "score": _mean([s for scores in item_scores for s in scores])}


def sampled_summary(datasets: list[str], item_scores: list[list[float]]) -> dict[str, Any]:
    """mean@k, pass@k and score overall and per source dataset, from each item's k sample scores."""
    return {**_sampled_stats(item_scores),
            "per_dataset": {name: _sampled_stats(s) for name, s in _by_dataset(datasets, item_scores).items()}}


def complete_rows(evaluator: Evaluator, rows: list[dict[str, Any]], batch_size: int = DEFAULT_BATCH_SIZE,
                  progress: bool = False, desc: str = "eval", sampling: Sampling | None = None) -> list[str]:
    """Completions of `rows`, `batch_size` questions at a time, in order: greedy, or `sampling.samples`
    adjacent ones per row, each batch seeded from the run's seed and its first row."""
    from tqdm import tqdm

    completions: list[str] = []
    with tqdm(total=len(rows), desc=desc, unit="item", disable=not progress) as bar:
        for s in range(0, len(rows), batch_size):
            batch = rows[s : s + batch_size]
            completions += evaluator.complete([r["question"] for r in batch], sampling, batch_seed(evaluator.cfg.seed, s))
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
        scores = score_rows(self.rows, completions, self.cfg)
        return accuracy_summary([r["task"] for r in self.rows], scores)


def evaluate(path: str | Path, split: str | None = None, limit: int | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, baseline: bool = False, progress: bool = True,
             sampling: Sampling | None = None) -> dict[str, Any]:
    """Evaluate a run or checkpoint, greedily or with `sampling`; writes and returns the result (see
    the module docstring)."""
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
        "max_completion_length": cfg.training.max_completion_length, "seconds": round(time.perf_counter() - start, 2),
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
    tag = "" if sampling is None else sampling.tag
    path = baseline_eval_path(run_dir, split, tag) if baseline else eval_path(checkpoint, split, tag)
    result["path"] = str(path)
    write_json_atomic(path, result)
    return result


# ----------------------------------------------------------------------------- CLI


def read_eval_result(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """An eval JSON with today's fields. One written before accuracy meant the full-score share holds
    `solved` (the full-score share) and `accuracy` (the mean score): they become accuracy and score,
    overall and per dataset, and `old_fields` says it was converted."""
    if result is None or "solved" not in result:
        return result

    def convert(stats: dict[str, Any]) -> dict[str, Any]:
        rest = {k: v for k, v in stats.items() if k not in ("solved", "accuracy")}
        return {**rest, "accuracy": stats["solved"], "score": stats["accuracy"]}

    per_dataset = {name: convert(d) for name, d in result.get("per_dataset", {}).items()}
    return {**convert(result), "per_dataset": per_dataset, "old_fields": True}


def format_result(result: dict[str, Any]) -> str:
    """A markdown table per dataset and overall: accuracy and score (greedy), or mean@k and pass@k."""
    what = "untrained baseline" if result["baseline"] else result["checkpoint"]
    sampled = result["decoding"] == "sampled"
    decoding = (f"{result['samples']} samples per item at temperature {result['temperature']:g}, top-p {result['top_p']:g}"
                if sampled else "greedy")
    head = (f"eval of {what}: method {result['method']}, task {result['task']}, split {result['split']} "
            f"({result['n']} of {result['split_size']} items), {decoding}, {result['max_completion_length']} tokens")
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
                          baseline=args.baseline, sampling=sampling_from_args(args))
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
    p.set_defaults(func=cmd_eval)
    return p
