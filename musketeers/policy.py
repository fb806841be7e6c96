"""The policy loader: the base model and tokenizer a run trains (policy.model, policy.dtype), checked
against policy.lora.target_modules, and the LoRA config TRL wraps it with.

Training (musketeers/train.py) and evaluation (musketeers/generation.py's Evaluator) load the policy
through this one function. It may import config and experts/, nothing else of musketeers.
"""

from __future__ import annotations

import logging
import time

from experts.models import load_model
from experts.prompt import chat_format
from musketeers.config import ConfigError, RunConfig

log = logging.getLogger("musketeers.train")  # phase lines: printed while musketeers.console.run_output is open


def build_policy(cfg: RunConfig):
    """The policy model, its tokenizer and the LoRA config TRL wraps it with (TRL then takes the
    reference from the same model with LoRA disabled, instead of keeping an adapter copy)."""
    from peft import LoraConfig
    from trl.trainer.utils import disable_dropout_in_model

    start = time.perf_counter()
    model, tokenizer = load_model(cfg.policy.model, dtype=cfg.policy.dtype, device="auto",
                                  trust_remote_code=cfg.policy.trust_remote_code)
    chat = chat_format(tokenizer, cfg.team.template_date)  # decided once: what build_prompt renders
    weights = model.get_input_embeddings().weight
    log.info("loaded policy %s: %s, %.1fM parameters, %s on %s, %s, in %.1f s", cfg.policy.model, model.config.model_type,
             model.num_parameters() / 1e6, str(weights.dtype).removeprefix("torch."), weights.device, chat.describe(),
             time.perf_counter() - start)
    lora = cfg.policy.lora
    modules = {name.split(".")[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in modules]
    if missing:
        raise ConfigError(f"policy.lora.target_modules: {missing} not in {cfg.policy.model!r}; its linear layers include "
                          f"{sorted(n for n in modules if n.endswith('proj') or n.startswith('c_'))[:12]}")
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    # TRL samples and scores in train mode: the base model's own dropout (GPT-2 has 0.1) would make the
    # sampling pass and the loss pass different networks; LoRA's stays policy.lora.dropout (0, the paper's)
    disable_dropout_in_model(model)
    tokenizer.padding_side = "left"
    return model, tokenizer, config
