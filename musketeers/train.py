"""The training recipe: a RunConfig becomes a run directory with metrics, logs and checkpoints
(what it holds and how it is named: musketeers/rundir.py).

It may import everything below it in musketeers/layers.py (the trainer, conditioning, the policy loader,
generation's HeldOut, tracking, curves); sweep and the CLI call train().
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed

from musketeers.adapters import count_trainable
from musketeers.conditioning import build_conditioner, start_experts
from musketeers.config import ConfigError, RunConfig
from musketeers.console import StepPrinter, run_output
from musketeers.curves import plot_run_curves
from musketeers.data import build_prompt, load_split
from musketeers.interruptions import DiskFull, PreemptionCallback, disk_full, is_disk_full, sealed_checkpoint
from musketeers.method_traits import METHOD_TRAITS
from musketeers.policy import build_policy
from musketeers.rundir import (CONFIG_FILE, FINAL_DIR, append_metrics, checkpoint_step, checkpoints_after, is_run_dir,
                               new_run_dir, read_config, read_metrics, resume_checkpoint, truncate_metrics)

log = logging.getLogger("musketeers.train")  # phase lines: printed while musketeers.console.run_output is open


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
    """Appends one row per optimizer step to the run's metrics, and one per held-out evaluation (its
    eval_* keys written eval/*, as TensorBoard and wandb show them)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            append_metrics(self.run_dir, self._step_row(state.global_step, logs))
        elif logs and "eval_accuracy" in logs:
            evals = {f"eval/{k.removeprefix('eval_')}": v for k, v in logs.items() if k.startswith("eval_")}
            append_metrics(self.run_dir, {"step": state.global_step, **evals})

    @staticmethod
    def _step_row(step: int, logs: dict) -> dict:
        row = {"step": step, **logs}  # accuracy: the full-score share the score reward logs (rewards/functions.py)
        timed = sum(logs.get(f"time/{k}", 0.0) for k in ("experts", "generation", "logprobs"))
        if "step_time" in logs:
            row["time/update"] = max(logs["step_time"] - timed, 0.0)
        return row


# Activations the loss pass keeps for backward, per token and layer, in elements of the compute dtype:
# an estimate for dense decoder layers (attention ~10h, gated MLP ~3f with f its inner size), fitted
# to an H100 run at paper shapes (Qwen2.5-3B: about 19 GB for 32 rows of ~180 tokens, 36 layers).
ACTIVATION_ELEMENTS = lambda h, f: 10 * h + 3 * f  # noqa: E731
MEMORY_MARGIN = 0.8  # activations may fill at most this share of the memory still free


def loss_pass_activation_bytes(model_config, tokens: int, dtype_bytes: int) -> int:
    """Estimated activation memory of one loss micro-batch of `tokens` tokens without checkpointing."""
    h = model_config.hidden_size
    f = getattr(model_config, "intermediate_size", None) or getattr(model_config, "n_inner", None) or 4 * h
    return tokens * model_config.num_hidden_layers * ACTIVATION_ELEMENTS(h, f) * dtype_bytes


def free_memory_bytes(device: torch.device) -> int:
    """Memory still free where the policy trains (the experts and the policy are loaded by now)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def use_activation_checkpointing(cfg: RunConfig, policy, tokenizer, dataset) -> bool:
    """training.activation_checkpointing: always, never, or auto: on only when the loss pass's activations
    would not fit in MEMORY_MARGIN of the free memory (it re-runs every forward in backward, ~30% more
    compute, which buys nothing when memory is not short). The longest of the first 64 prompts of
    `dataset` (a "prompt" column) sizes the loss pass."""
    t = cfg.training
    if t.activation_checkpointing != "auto":
        return t.activation_checkpointing == "always"
    prompt_tokens = max(len(tokenizer(p)["input_ids"]) for p in dataset[: min(64, len(dataset))]["prompt"])
    context = cfg.adapter.num_queries if METHOD_TRAITS[cfg.method].context_tokens else 0
    tokens = t.prompts_per_batch * t.num_generations * (prompt_tokens + context + t.max_completion_length)
    weights = policy.get_input_embeddings().weight
    needed = loss_pass_activation_bytes(policy.config, tokens, weights.element_size())
    return needed > MEMORY_MARGIN * free_memory_bytes(weights.device)


def grpo_config(cfg: RunConfig, run_dir: Path, activation_checkpointing: bool):
    from trl import GRPOConfig

    t, cuda = cfg.training, torch.cuda.is_available()
    return GRPOConfig(
        gradient_checkpointing=activation_checkpointing,
        output_dir=str(run_dir), seed=cfg.seed, use_cpu=not cuda, bf16=cuda and cfg.policy.dtype == "bfloat16",
        per_device_train_batch_size=t.prompts_per_batch * t.num_generations,  # TRL counts completions
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        steps_per_generation=t.gradient_accumulation_steps,  # one generation round per optimizer step
        num_generations=t.num_generations, beta=t.beta, loss_type=t.loss_type,
        learning_rate=t.learning_rate, adam_epsilon=t.adam_epsilon, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, max_completion_length=t.max_completion_length, max_steps=t.max_steps,
        temperature=t.temperature, lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_steps,
        logging_steps=t.logging_steps, save_strategy="steps", save_steps=t.save_steps,
        # held-out accuracy every eval_every steps (and at the last step): MusketeersGRPOTrainer.evaluate
        eval_strategy="steps" if t.eval_every else "no", eval_steps=t.eval_every or None,
        per_device_eval_batch_size=t.prompts_per_batch * t.num_generations,  # TRL checks it against the group size
        disable_tqdm=True,  # musketeers.console.StepPrinter prints a line per step instead of TRL's bar and dicts
        # training.report_to's trackers are added by build_trainer (musketeers.tracking: they write into the run
        # directory and record the resolved config), so transformers adds none of its own
        report_to="none", run_name=run_dir.name,
        remove_unused_columns=False, dataloader_num_workers=0,
    )


def build_trainer(cfg: RunConfig, run_dir: Path):
    from transformers.trainer_callback import PrinterCallback

    from musketeers.generation import HeldOut
    from musketeers.tracking import tracker_callbacks
    from musketeers.trainer import MusketeersGRPOTrainer
    from rewards import make_reward_functions

    set_seed(cfg.seed)
    pool = start_experts(cfg)  # Ray experts load (and convert) in their actors while the policy loads here
    try:
        policy, tokenizer, lora_config = build_policy(cfg)
        embeddings = policy.get_input_embeddings().weight
        conditioner = build_conditioner(cfg, embeddings.shape[1], tokenizer, embeddings.device, pool)
    except BaseException:
        if pool is not None:
            pool.shutdown()
        raise
    reward = cfg.reward
    reward_funcs, weights = make_reward_functions(reward.use_accuracy, [(s.name, s.scaling, s.options()) for s in reward.secondary],
                                                  prefill=cfg.task.assistant_prefill, gsm8k_extraction=reward.gsm8k_extraction)
    dataset = prompt_dataset(load_split(cfg.task, "train"), tokenizer, cfg.task)
    held_out = HeldOut(cfg) if cfg.training.eval_every else None
    checkpointing = use_activation_checkpointing(cfg, policy, tokenizer, dataset)
    args = grpo_config(cfg, run_dir, checkpointing)
    args.reward_weights = weights
    callbacks = [MetricsLogger(run_dir), StepPrinter(len(held_out.rows) if held_out else 0, held_out.split if held_out else ""),
                 *tracker_callbacks(cfg, run_dir)]
    trainer = MusketeersGRPOTrainer(
        model=policy, peft_config=lora_config, reward_funcs=reward_funcs, args=args, processing_class=tokenizer,
        callbacks=callbacks, train_dataset=dataset,
        # Trainer wants an eval set once eval_strategy is on; our evaluate() reads held_out's rows
        eval_dataset=prompt_dataset(held_out.rows, tokenizer, cfg.task) if held_out else None, held_out=held_out,
        conditioner=conditioner, router_lr=cfg.training.router_lr, out_proj_lr_scale=cfg.training.out_proj_lr_scale,
        no_context_reward_every=cfg.training.no_context_reward_every, generation_cache=cfg.training.generation_cache,
    )
    trainer.remove_callback(PrinterCallback)  # TRL's raw dict per step (disable_tqdm swapped the progress bar for it)
    counts = trainable_parameters(trainer)
    log.info("method %s: trainable parameters: LoRA %s, adapter g_phi %s; activation checkpointing %s "
             "(training.activation_checkpointing=%s)", cfg.method, f"{counts['lora']:,}", f"{counts['adapter']:,}",
             "on" if checkpointing else "off", cfg.training.activation_checkpointing)
    return trainer


def trainable_parameters(trainer) -> dict[str, int]:
    """LoRA parameters of the policy and parameters of the adapter g_phi (0 for text_hints, single)."""
    adapter = trainer.conditioner.adapter
    adapter_ids = {id(p) for p in adapter.parameters()} if adapter is not None else set()
    lora = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad and id(p) not in adapter_ids)
    return {"lora": lora, "adapter": count_trainable(adapter) if adapter is not None else 0}


def train(cfg: RunConfig | None = None, resume: str | Path | None = None, run_dir: Path | None = None) -> Path:
    """Run (or resume) a GRPO run; returns the run directory (`run_dir`: see musketeers.rundir.new_run_dir).
    Prints a line per phase and per step (musketeers.console), then a summary."""
    with run_output():
        return _train(cfg, resume, run_dir)


def _train(cfg: RunConfig | None, resume: str | Path | None, run_dir: Path | None) -> Path:
    if resume is not None:
        run_dir = Path(resume)
        if not is_run_dir(run_dir):
            raise ConfigError(f"--resume: {str(run_dir)!r} is not a run directory (no {CONFIG_FILE})")
        cfg = read_config(run_dir)
        checkpoint = resume_checkpoint(run_dir)  # files checked against their manifest; damaged ones skipped
        if checkpoint is None:
            raise ConfigError(f"--resume: {str(run_dir)!r} has no complete checkpoint-N folder to resume from")
        truncate_metrics(run_dir, checkpoint_step(checkpoint))
        for partial in checkpoints_after(run_dir, checkpoint_step(checkpoint)):  # a save the kill interrupted
            shutil.rmtree(partial)
    else:
        run_dir, checkpoint = new_run_dir(cfg, run_dir), None
    print(f"run directory: {run_dir}", flush=True)
    stop = PreemptionCallback()  # SIGTERM / SIGINT: save the step in flight, then stop (musketeers.interruptions)
    try:
        with stop.handling_signals():
            trainer, seconds = _fit(cfg, run_dir, checkpoint, stop)
    except DiskFull:
        raise
    except Exception as error:  # a metrics row or an expert-state shard that found the disk full
        if is_disk_full(error):
            raise disk_full(error, run_dir) from error
        raise
    log.info("trained to step %d in %.1f s; saved %s", trainer.state.global_step, seconds, run_dir / FINAL_DIR)
    curves = plot_run_curves(run_dir)
    summarise(run_dir, seconds)
    if curves is not None:
        print(f"curves: {curves}", flush=True)
    return run_dir


def _fit(cfg: RunConfig, run_dir: Path, checkpoint: Path | None, stop: PreemptionCallback):
    """Build the trainer, train from `checkpoint` (None: from scratch) and save final/; (trainer, seconds)."""
    try:
        trainer = build_trainer(cfg, run_dir)
    except BaseException:
        if checkpoint is None:  # a new run that never started leaves nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    trainer.add_callback(stop)
    log.info("training: %s", describe_training(cfg, checkpoint))
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if stop.stopped_early(trainer.state):
            raise stop.preempted(run_dir, trainer.state)
        with sealed_checkpoint(run_dir / FINAL_DIR, run_dir):
            trainer.save_model(str(run_dir / FINAL_DIR))
            if trainer.conditioner.adapter is not None:
                trainer.save_adapter(str(run_dir / FINAL_DIR))
    finally:
        if trainer.conditioner.pool is not None:
            trainer.conditioner.pool.shutdown()
    return trainer, time.perf_counter() - start


def describe_training(cfg: RunConfig, checkpoint: Path | None) -> str:
    """What the run is about to do, in one line."""
    t = cfg.training
    text = (f"{t.max_steps} steps of {t.prompts_per_batch * t.gradient_accumulation_steps} prompts x {t.num_generations} "
            f"completions, up to {t.max_completion_length} tokens each")
    if checkpoint is not None:
        text += f", resuming after step {checkpoint_step(checkpoint)}"
    if t.eval_every:
        text += f"; held-out accuracy every {t.eval_every} step{'s' if t.eval_every > 1 else ''} and at the end"
    return text


def summarise(run_dir: Path, seconds: float) -> None:
    rows = read_metrics(run_dir)
    steps = [r for r in rows if "reward" in r]
    if not steps:
        return
    k = max(1, min(5, len(steps) // 3))
    mean = lambda rs: sum(r["reward"] for r in rs) / len(rs)  # noqa: E731
    lines = [f"run directory: {run_dir}", f"steps: {steps[-1]['step']}, wall time: {seconds:.0f} s",
             f"reward at the start (mean of the first {k} steps): {mean(steps[:k]):.3f}",
             f"reward at the end (mean of the last {k} steps): {mean(steps[-k:]):.3f}"]
    evals = [r for r in rows if "eval/accuracy" in r]
    if evals:
        lines.append("held-out accuracy (greedy): " + ", ".join(f"{r['eval/accuracy']:.3f} at step {r['step']}" for r in evals))
    print("\n".join(lines), flush=True)
