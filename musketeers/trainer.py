"""GRPO on TRL's GRPOTrainer, with the policy conditioned on expert context tokens.

TRL runs the GRPO iteration (sampling groups, rewards, group-normalised advantages, the clipped
objective with the KL term). We override only what the context tokens touch:

  1. _generate_and_score_completions  experts -> adapter -> C (no grad) before TRL's step, once per
                                      distinct prompt of the round, shared by its G completions; the
                                      method's stored tensors ride in TRL's batch dict (one typed
                                      object under CONDITIONING_KEY) so the loss pass rebuilds C
  2. _generate_single_turn            generate from the prompt with C placed as conditioner.layout
                                      says, one prefill per distinct prompt (all methods)
  3. _get_per_token_logps_and_entropies  every log-prob pass sees the same layout plus the completion;
                                      the reference pass (TRL hands it `ref_model`, a ReferencePolicy:
                                      the policy with LoRA disabled) sees what the layout's reference
                                      says (zeros where C sits, or no C); only completion positions
                                      reach the LM head (all methods)
  4. _compute_loss                    C recomputed from the stored states, so g_phi gets gradients
                                      (hard routing: the expert each completion was sampled with)
  5. create_optimizer                 the adapter is its own parameter group with router_lr (its W_out
                                      a third one with training.out_proj_lr_scale);
     _clip_grad_norm                  logs g_phi's share of the pre-clip gradient norm (grad_norm/adapter)
  6. _save_checkpoint / _load_from_checkpoint  the adapter's safetensors travel with checkpoints, and a
                                      manifest written last seals each one (musketeers.interruptions)
  7. evaluate                         training.eval_every: greedy held-out accuracy (musketeers.generation's
                                      path), not TRL's sampled evaluation

With method "single" the passes are TRL's but faster (2, 3): the other overrides fall through.
training.no_context_reward_every (Figure 5) also samples the trained policy (LoRA on) from the prompt
alone, pi_theta(y | x), whatever training.reference_context gives the KL reference.
Everything the trainer keeps beyond TRL's own state is one `RoundState` (self.round_state).

It may import conditioning, context, interruptions, methods, rundir and generation (a type only);
train.py builds it.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import pad

from musketeers.conditioning import Conditioner
from musketeers.context import generate_with_context, insert_context
from musketeers.interruptions import sealed_checkpoint
from musketeers.methods import RowTensors
from musketeers.rundir import ADAPTER_FILE, checkpoint_dir

if TYPE_CHECKING:
    from musketeers.generation import HeldOut

CONDITIONING_KEY = "conditioning"  # TRL batch-dict entry holding the method's stored RowTensors


@dataclass
class RoundState:
    """What the trainer keeps beyond TRL's state, for the generation round in progress.

    context    C that generation and the log-prob passes see now (None: the plain prompt); the
               loss pass sets it to C rebuilt with gradients, the reference pass to its reference
    reference  True while the reference log-probs are computed (LoRA disabled)
    timings    seconds per phase of this round: experts, generation, logprobs
    pool_totals  the expert pool's forward and cache-hit counters at the end of the last round
    """

    context: torch.Tensor | None = None
    reference: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    pool_totals: dict[str, int] = field(default_factory=dict)


class ReferencePolicy:
    """TRL's `ref_model` slot: TRL passes it to the log-prob pass for the KL reference, which then runs
    the policy itself with LoRA disabled (so no second copy of the weights exists)."""


@contextmanager
def last_hidden_states_only(model, n: int):
    """While open, the backbone of `model` (a causal LM, PEFT-wrapped or not) returns only its last n
    hidden states, so TRL's fused LM head scores those positions alone."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model

    def keep_last(_module, _args, output):
        output.last_hidden_state = output.last_hidden_state[:, -n:]
        return output

    handle = causal_lm.base_model.register_forward_hook(keep_last)
    try:
        yield
    finally:
        handle.remove()


class MusketeersGRPOTrainer(GRPOTrainer):
    def __init__(self, *args, conditioner: Conditioner, router_lr: float, out_proj_lr_scale: float = 1.0,
                 no_context_reward_every: int = 0,
                 generation_cache: str = "dynamic", held_out: HeldOut | None = None, **kwargs):
        # create_optimizer may run inside __init__
        self.conditioner, self.router_lr, self.out_proj_lr_scale = conditioner, router_lr, out_proj_lr_scale
        self.held_out = held_out
        super().__init__(*args, **kwargs)
        self.no_context_reward_every, self.generation_cache = no_context_reward_every, generation_cache
        self.round_state = RoundState()
        if not hasattr(self.accelerator.unwrap_model(self.model), "disable_adapter") or "ref" in self.model.peft_config:
            raise ValueError("pass the base policy with peft_config: the reference is the policy with LoRA disabled")
        if self.beta != 0.0:
            self.ref_model = ReferencePolicy()
        if conditioner.uses_context:
            if self.use_vllm:
                raise ValueError("context tokens are injected as embeddings; use_vllm is not supported with them")
            # g_phi lives inside the policy module, so device moves and gradient clipping cover it
            self.model.add_module("context_adapter", conditioner.adapter)
            conditioner.adapter.to(self.accelerator.device)
            if conditioner.encoder is not None:
                conditioner.encoder.to(self.accelerator.device)

    # ------------------------------------------------------------------------- 1. experts -> C

    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        cond = self.conditioner.prepare([x["question"] for x in inputs], training=mode == "train")
        if cond.prompts is not None:  # text hints rewrite the prompt
            inputs = [{**x, "prompt": p} for x, p in zip(inputs, cond.prompts)]
        self.round_state.timings = {"experts": self.conditioner.timings.get("experts", 0.0), "generation": 0.0, "logprobs": 0.0}
        with self._context_as(cond.context):
            output = super()._generate_and_score_completions(inputs)
            if mode == "train" and self._no_context_reward_due():
                self._metrics[mode]["reward_without_context"].append(self._reward_without_context(inputs))
        if cond.stored is not None:
            output[CONDITIONING_KEY] = cond.stored
        for key, value in {**cond.metrics, **self._pool_metrics()}.items():
            self._metrics[mode][key].append(value)
        for key, value in self.round_state.timings.items():
            self._metrics[mode][f"time/{key}"].append(value)
        return output

    @contextmanager
    def _context_as(self, context: torch.Tensor | None):
        previous, self.round_state.context = self.round_state.context, context
        try:
            yield
        finally:
            self.round_state.context = previous

    @contextmanager
    def _reference_policy(self):
        """The KL reference: the policy with LoRA disabled, conditioned as the layout's reference says."""
        context = self.round_state.context
        reference_context = None if context is None else self.conditioner.layout.reference_context(context)
        self.round_state.reference = True
        try:
            with self.accelerator.unwrap_model(self.model).disable_adapter(), self._context_as(reference_context):
                yield
        finally:
            self.round_state.reference = False

    def _pool_metrics(self) -> dict[str, float]:
        """Expert forwards and cache hits of this generation round (the pool counts since its start)."""
        pool = self.conditioner.pool
        if pool is None:
            return {}
        totals = {"experts/forwards": 0, "experts/cache_hits": 0}
        for per_expert in pool.stats.values():
            totals["experts/forwards"] += per_expert.get("forwards", 0)
            totals["experts/cache_hits"] += per_expert.get("hits", 0)
        previous = self.round_state.pool_totals or {k: 0 for k in totals}
        self.round_state.pool_totals = totals
        # expert models this run has loaded so far (0 all along when every state was on disk)
        return {**{k: float(v - previous[k]) for k, v in totals.items()}, "experts/models_loaded": float(pool.loads)}

    # ------------------------------------------------------------------------- 2. generation

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        start = time.perf_counter()
        if self.use_vllm or self.use_transformers_continuous_batching or images is not None or multimodal_fields:
            if self.round_state.context is not None:
                raise ValueError("context tokens support plain HF generation of text prompts only")
            result = super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        else:  # every method: one prefill per distinct prompt, not per completion
            result = self._generate_with_context(prompt_ids, self.round_state.context), None
        self._add_time("generation", start)
        return result

    def _generate_with_context(self, prompt_ids: list[list[int]], context: torch.Tensor | None, **generate_kwargs) -> list[list[int]]:
        """Sample completions from the prompt with C in it (the plain prompt without C); each ends at its first EOS (kept)."""
        device = self.accelerator.device
        ids = pad([torch.tensor(p) for p in prompt_ids], padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
        mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompt_ids], padding_value=0, padding_side="left").to(device)
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                         generation_kwargs=self.generation_kwargs,
                                         gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs) as model:
            return generate_with_context(model, ids, mask, context, self.eos_token_ids, self.conditioner.layout,
                                         self.generation_cache, generation_config=self.generation_config, **generate_kwargs)

    # ------------------------------------------------------------------------- 3. log-probs

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **kwargs):
        start = time.perf_counter()
        reference = model is self.ref_model
        with self._reference_policy() if reference else nullcontext():
            model = self.model if reference else model
            if compute_aux_loss or any(v is not None for v in kwargs.values()):  # MoE / multimodal: TRL's own pass
                if self.round_state.context is not None:
                    raise ValueError("context tokens support text-only, dense policies")
                result = super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **kwargs)
            else:
                result = self._completion_logps(model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy)
        if not torch.is_grad_enabled():
            self._add_time("logprobs", start)
        return result

    def _completion_logps(self, model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy):
        """Log-probs (and entropies) of the last `logits_to_keep` tokens of [prompt with C][completion].

        TRL's fused LM head, as in its own pass; only the completion's hidden states reach it (TRL
        projects every position where Triton is missing, e.g. on CPU, 3-4x the head's work here).
        """
        context, layout = self.round_state.context, self.conditioner.layout
        if context is not None:
            if context.shape[0] != input_ids.shape[0]:
                raise RuntimeError(f"context has {context.shape[0]} rows, the log-prob batch {input_ids.shape[0]}")
            slots = layout.slot(attention_mask[:, :-logits_to_keep])
        unwrapped = self.accelerator.unwrap_model(model)
        batch_size = batch_size or input_ids.shape[0]
        logps, entropies = [], []
        for s in range(0, input_ids.shape[0], batch_size):
            ids, mask = input_ids[s : s + batch_size], attention_mask[s : s + batch_size]
            # the head's shift drops the first label: logits_to_keep + 1 hidden states score the completion
            labels = ids[:, -logits_to_keep - 1 :].masked_fill(mask[:, -logits_to_keep - 1 :] == 0, -100)
            if context is None:
                inputs = {"input_ids": ids, "attention_mask": mask}
            else:
                embeds, full_mask, positions = insert_context(unwrapped.get_input_embeddings()(ids), mask,
                                                              context[s : s + batch_size], slots[s : s + batch_size])
                inputs = {"inputs_embeds": embeds, "attention_mask": full_mask, "position_ids": positions}
            with self.accelerator.autocast(), last_hidden_states_only(unwrapped, logits_to_keep + 1):
                out = model(**inputs, labels=labels, fused_lm_head=True)
            logps.append(out.log_probs)
            if compute_entropy:
                entropies.append(out.entropy)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    def _add_time(self, key: str, start: float) -> None:
        if key in self.round_state.timings:
            self.round_state.timings[key] += time.perf_counter() - start

    # ------------------------------------------------------------------------- 4. loss

    def _compute_loss(self, model, inputs):
        if not self.conditioner.uses_context:
            return super()._compute_loss(model, inputs)
        stored = RowTensors.collate(inputs[CONDITIONING_KEY])
        with self._context_as(self.conditioner.context(stored, training=model.training)):
            return super()._compute_loss(model, inputs)

    # ------------------------------------------------------------------------- Figure 5 ablation

    def _no_context_reward_due(self) -> bool:
        k = self.no_context_reward_every
        return k > 0 and self.conditioner.uses_context and self.state.global_step % k == 0

    def _reward_without_context(self, inputs) -> float:
        """Mean accuracy of completions the trained policy (LoRA on) samples from the prompt alone, no
        context slots at all: pi_theta(y | x) against the run's pi_theta(y | [x || C]) (Figure 5),
        whatever training.reference_context gives the KL reference; logged, not trained on."""
        prompts = [x["prompt"] for x in inputs]
        prompt_ids, _, _ = self._tokenize_prompts(prompts)
        completion_ids = self._generate_with_context(prompt_ids, None)
        completions = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        columns = {k: [x[k] for x in inputs] for k in inputs[0] if k not in ("prompt", "completion")}
        rewards = self.reward_funcs[0](prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        return float(sum(rewards) / len(rewards))

    # ------------------------------------------------------------------------- 5. optimizer

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            adapter = self.conditioner.adapter
            adapter_ids = {id(p) for p in adapter.parameters()} if adapter is not None else set()
            policy = [p for p in self.model.parameters() if p.requires_grad and id(p) not in adapter_ids]
            groups = [{"params": policy, "lr": self.args.learning_rate, "weight_decay": self.args.weight_decay}]
            if adapter is not None:
                out = {id(p) for p in adapter.out_proj.parameters()} if self.out_proj_lr_scale != 1.0 else set()
                groups.append({"params": [p for p in adapter.parameters() if p.requires_grad and id(p) not in out],
                               "lr": self.router_lr, "weight_decay": self.args.weight_decay})
                if out:  # training.out_proj_lr_scale: W_out and b_out in a third group
                    groups.append({"params": [p for p in adapter.out_proj.parameters() if p.requires_grad],
                                   "lr": self.router_lr * self.out_proj_lr_scale, "weight_decay": self.args.weight_decay})
            self.optimizer = torch.optim.AdamW(groups, betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon)
        return self.optimizer

    def _clip_grad_norm(self, model):
        # Trainer clips every trainable parameter together, g_phi included; the logged grad_norm is their
        # joint pre-clip norm, which g_phi's W_out can dominate 8-800x (docs/signal.md), so log its share
        adapter = self.conditioner.adapter
        grads = [p.grad for p in adapter.parameters() if p.grad is not None] if adapter is not None else []
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            self._metrics["train"]["grad_norm/adapter"].append(norm.item())
        return super()._clip_grad_norm(model)

    # ------------------------------------------------------------------------- 6. checkpoints

    def _save_checkpoint(self, model, trial):
        # g_phi, then TRL's files; the manifest written after them all marks the checkpoint complete, and a
        # full disk on the way removes the half-written folder (musketeers.interruptions.sealed_checkpoint)
        run_dir = Path(self._get_output_dir(trial=trial))
        folder = checkpoint_dir(run_dir, self.state.global_step)
        with sealed_checkpoint(folder, run_dir) if self.args.should_save else nullcontext():
            if self.conditioner.adapter is not None and self.args.should_save:
                folder.mkdir(parents=True, exist_ok=True)
                self.save_adapter(str(folder))
            super()._save_checkpoint(model, trial)

    def save_adapter(self, folder: str) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.conditioner.adapter.state_dict().items()}
        save_file(state, os.path.join(folder, ADAPTER_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.conditioner.adapter is not None:
            state = load_file(os.path.join(resume_from_checkpoint, ADAPTER_FILE), device=str(self.accelerator.device))
            self.conditioner.adapter.load_state_dict(state)

    # ------------------------------------------------------------------------- 7. held-out evaluation

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """Greedy accuracy of the policy as it is now on the held-out rows (`held_out`), what `musketeers eval
        --limit eval_size` gives for this step's checkpoint; logged as eval_accuracy (eval/accuracy in
        TensorBoard, wandb and metrics.jsonl), overall and per dataset, and its mean score as eval_score. Greedy decoding draws no random
        numbers, so training goes on exactly as without it."""
        if self.held_out is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        start = time.perf_counter()
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                         gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs) as model:
            was_training = model.training
            model.eval()
            try:
                summary = self.held_out.accuracy(model, self.processing_class, self.conditioner)
            finally:
                model.train(was_training)
        self._pool_metrics()  # the evaluation's expert forwards are not the next step's
        metrics = {f"{metric_key_prefix}_accuracy": summary["accuracy"], f"{metric_key_prefix}_score": summary["score"],
                   **{f"{metric_key_prefix}_accuracy/{name}": d["accuracy"] for name, d in summary["per_dataset"].items()},
                   f"{metric_key_prefix}_runtime": time.perf_counter() - start}
        Trainer.log(self, metrics)  # not TRL's log, which would move its pending training metrics into this row
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
