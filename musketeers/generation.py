"""The one generation-and-scoring path that training's held-out evaluation and `musketeers eval` share.

It owns: the decoding of evaluation (greedy, or k samples at temperature T and top-p; `Sampling`),
completions of prompt strings with C placed as the run's layout says (`policy_completions`), the
evaluated system rebuilt from a run's config (`Evaluator`: policy, tokenizer, conditioner), scoring
completions as training scores them (`score_rows`), and the accuracy/score summaries (what an eval
JSON holds; their meaning: musketeers/evaluate.py). `HeldOut` is training.eval_every's view of it.
It may import config, errors, rundir, data, context, conditioning and the policy loader (musketeers.policy),
never the trainer, training recipe or commands above it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musketeers.config import RunConfig
from musketeers.data import default_split
from musketeers.errors import MusketeersError
from musketeers.rundir import sampling_tag

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

    context_of: dict[str, str] | None = None  # question -> the question whose C it is given (eval --context other)
    without_context: bool = False             # no C at all, the prompt alone (eval --context none)

    def __init__(self, cfg: RunConfig, checkpoint: Path | None, baseline: bool = False):
        from transformers import set_seed

        from musketeers.conditioning import build_conditioner
        from musketeers.policy import build_policy

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

        context, prompts = None, None  # eval --context none: the prompt alone, no expert asked
        if not self.without_context:
            cond = self.conditioner.prepare([self.context_of[q] for q in questions] if self.context_of else questions,
                                            training=False)
            context, prompts = cond.context, cond.prompts
        prompts = prompts or [build_prompt(q, self.tokenizer, self.cfg.task) for q in questions]
        return policy_completions(self.model, self.tokenizer, prompts, context, self.cfg.training.max_completion_length,
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


