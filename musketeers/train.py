"""The training recipe: a RunConfig becomes a run directory with metrics, logs and checkpoints.

    run_dir/
      config.yaml         the resolved config (what `--resume` reads back)
      metrics.jsonl       one row per optimizer step: rewards, accuracy, KL, lengths, routing, timings
      tensorboard/        the same scalars for TensorBoard
      checkpoint-N/       PEFT adapter + context_adapter.safetensors + optimizer, scheduler, RNG, step
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import TrainerCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from experts.models import load_model
from musketeers.adapters import build_adapter, count_trainable
from musketeers.conditioning import Conditioner, SentenceEncoder
from musketeers.config import ConfigError, RunConfig, load_resolved_config
from musketeers.data import build_prompt, load_split, system_prompt

CONFIG_FILE, METRICS_FILE = "config.yaml", "metrics.jsonl"


def prompt_dataset(rows, tokenizer, task):
    """Task rows plus the policy prompt TRL reads from the "prompt" column, as a datasets.Dataset
    (what TRL accepts) that holds only indices and builds each row when it is read: items stay
    lazily generated, and TRL's seeded RepeatSampler still draws them."""
    from datasets import Dataset

    def build(batch: dict[str, list]) -> dict[str, list]:
        items = [rows[k] for k in batch["index"]]
        out = {key: [item[key] for item in items] for key in ("question", "answer", "task", "entry")}
        out["prompt"] = [build_prompt(q, tokenizer, task) for q in out["question"]]
        return out

    return Dataset.from_dict({"index": list(range(len(rows)))}).with_transform(build)


class MetricsLogger(TrainerCallback):
    """Appends one JSON row per optimizer step to metrics.jsonl (flushed: nothing lost on a crash)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "reward" not in logs:
            return
        row = {"step": state.global_step, **logs}
        row["accuracy"] = logs.get("rewards/accuracy/mean")
        timed = sum(logs.get(f"time/{k}", 0.0) for k in ("experts", "generation", "logprobs"))
        if "step_time" in logs:
            row["time/update"] = max(logs["step_time"] - timed, 0.0)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def device_for_training() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_policy(cfg: RunConfig):
    """The policy model, its tokenizer and the LoRA config TRL wraps it with (TRL then takes the
    reference from the same model with LoRA disabled, instead of keeping an adapter copy)."""
    from peft import LoraConfig

    model, tokenizer = load_model(cfg.policy.model, dtype=cfg.policy.dtype, device=device_for_training(),
                                  trust_remote_code=cfg.policy.trust_remote_code)
    lora = cfg.policy.lora
    modules = {name.split(".")[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in modules]
    if missing:
        raise ConfigError(f"policy.lora.target_modules: {missing} not in {cfg.policy.model!r}; its linear layers include "
                          f"{sorted(n for n in modules if n.endswith('proj') or n.startswith('c_'))[:12]}")
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    tokenizer.padding_side = "left"
    return model, tokenizer, config


def build_conditioner(cfg: RunConfig, policy, tokenizer) -> Conditioner:
    """Expert pool, adapter g_phi and router encoder for the configured method."""
    if cfg.method == "single":
        return Conditioner(cfg, tokenizer=tokenizer)
    from experts.pool import ExpertPool

    pool = ExpertPool(cfg.team, system_prompt(cfg.task), seed=cfg.seed)
    encoder = None
    if cfg.method == "hard_routing":
        encoder = SentenceEncoder(*load_model(cfg.adapter.router_encoder, causal_lm=False, device=device_for_training()))
    a = cfg.adapter
    adapter = build_adapter(cfg.method, pool.hidden_sizes, policy.get_input_embeddings().weight.shape[1],
                            latent_dim=a.latent_dim, num_queries=a.num_queries, num_heads=a.num_heads,
                            encoder_dim=encoder.dim if encoder else None, gumbel_temperature=a.gumbel_temperature)
    return Conditioner(cfg, pool, adapter, encoder, tokenizer)


def grpo_config(cfg: RunConfig, run_dir: Path):
    from trl import GRPOConfig

    t, cuda = cfg.training, torch.cuda.is_available()
    return GRPOConfig(
        output_dir=str(run_dir), seed=cfg.seed, use_cpu=not cuda, bf16=cuda and cfg.policy.dtype == "bfloat16",
        per_device_train_batch_size=t.prompts_per_batch * t.num_generations,  # TRL counts completions
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        steps_per_generation=t.gradient_accumulation_steps,  # one generation round per optimizer step
        num_generations=t.num_generations, beta=t.beta, loss_type=t.loss_type,
        learning_rate=t.learning_rate, adam_epsilon=t.adam_epsilon, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, max_completion_length=t.max_completion_length, max_steps=t.max_steps,
        temperature=t.temperature, lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_steps,
        logging_steps=t.logging_steps, save_strategy="steps", save_steps=t.save_steps,
        report_to="none", remove_unused_columns=False, dataloader_num_workers=0,
    )


def new_run_dir(cfg: RunConfig, run_dir: Path | None = None) -> Path:
    """A new run directory holding the resolved config: `run_dir` when given (a sweep's
    deterministic name; it must not exist yet), else <output_dir>/<task>-<method>-<team>-seed<k>-<time>."""
    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        team = "none" if cfg.method == "single" else cfg.team.name
        run_dir = Path(cfg.output_dir) / f"{cfg.task.name}-{cfg.method}-{team}-seed{cfg.seed}-{stamp}"
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return run_dir


def build_trainer(cfg: RunConfig, run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    from musketeers.trainer import MusketeersGRPOTrainer
    from rewards import make_reward_functions

    set_seed(cfg.seed)
    policy, tokenizer, lora_config = build_policy(cfg)
    conditioner = build_conditioner(cfg, policy, tokenizer)
    reward_funcs, weights = make_reward_functions(cfg.reward.format_weight, prefill=cfg.task.assistant_prefill)
    args = grpo_config(cfg, run_dir)
    args.reward_weights = weights
    callbacks = [MetricsLogger(run_dir / METRICS_FILE),
                 TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run_dir / "tensorboard")))]
    trainer = MusketeersGRPOTrainer(
        model=policy, peft_config=lora_config, reward_funcs=reward_funcs, args=args, processing_class=tokenizer,
        callbacks=callbacks,
        train_dataset=prompt_dataset(load_split(cfg.task, "train"), tokenizer, cfg.task),
        conditioner=conditioner, router_lr=cfg.training.router_lr,
        no_context_reward_every=cfg.training.no_context_reward_every,
    )
    print(f"method {cfg.method}: trainable parameters {trainable_parameters(trainer)}", flush=True)
    return trainer


def trainable_parameters(trainer) -> dict[str, int]:
    """LoRA parameters of the policy and parameters of the adapter g_phi (0 for text_hints, single)."""
    adapter = trainer.conditioner.adapter
    adapter_ids = {id(p) for p in adapter.parameters()} if adapter is not None else set()
    lora = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad and id(p) not in adapter_ids)
    return {"lora": lora, "adapter": count_trainable(adapter) if adapter is not None else 0}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop rows logged after the checkpoint a resumed run restarts from."""
    rows = [r for r in read_metrics(run_dir) if r["step"] <= step]
    (run_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


def train(cfg: RunConfig | None = None, resume: str | Path | None = None, run_dir: Path | None = None) -> Path:
    """Run (or resume) a GRPO run; returns the run directory (`run_dir`: see new_run_dir)."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"--resume: {str(run_dir)!r} is not a run directory (no {CONFIG_FILE})")
        cfg = load_resolved_config(run_dir / CONFIG_FILE)
        checkpoint = get_last_checkpoint(str(run_dir))
        if checkpoint is None:
            raise ConfigError(f"--resume: {str(run_dir)!r} has no checkpoint-N folder to resume from")
        _truncate_metrics(run_dir, int(checkpoint.rsplit("-", 1)[1]))
    else:
        run_dir, checkpoint = new_run_dir(cfg, run_dir), None
    print(f"run directory: {run_dir}", flush=True)
    try:
        trainer = build_trainer(cfg, run_dir)
    except BaseException:
        if checkpoint is None:  # a new run that never started leaves nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model(str(run_dir / "final"))
        if trainer.conditioner.adapter is not None:
            trainer.save_adapter(str(run_dir / "final"))
    finally:
        if trainer.conditioner.pool is not None:
            trainer.conditioner.pool.shutdown()
    summarise(run_dir, time.perf_counter() - start)
    return run_dir


def summarise(run_dir: Path, seconds: float) -> None:
    rows = read_metrics(run_dir)
    if not rows:
        return
    k = max(1, min(5, len(rows) // 3))
    mean = lambda rs: sum(r["reward"] for r in rs) / len(rs)  # noqa: E731
    print(f"run directory: {run_dir}\nsteps: {rows[-1]['step']}, wall time: {seconds:.0f} s\n"
          f"reward at the start (mean of the first {k} steps): {mean(rows[:k]):.3f}\n"
          f"reward at the end (mean of the last {k} steps): {mean(rows[-k:]):.3f}", flush=True)
