"""One frozen expert: a model read through its own tokenizer, giving one pooled state per prompt.

An `ExpertWorker` runs in-process (the local backend) or inside a Ray actor (see pool.py). What it
reads is experts/prompt.py's ExpertInput: each question through the expert's own chat template with
the system prompt it is handed (folded into the first user turn where the template refuses a system
turn; templates that write a date read team.template_date; no assistant prefill: the expert reads
the question, it does not answer it), as token ids cut from the left so the end of the question
stays. The pool sends those ids (encode_ids: the ids its cache keys hash); the worker pads batches
with the tokenizer's own padding. Padding is invisible to the result: the attention mask and explicit position ids (cumsum(mask) - 1) make a prompt's state
the same alone or in a batch, padded on either side.

Of the project it imports experts' cache, config, errors, models, pooling and prompt.
"""

from __future__ import annotations

import inspect
import os
import time

import torch

from experts.cache import prompt_key
from experts.config import DEFAULT_TEMPLATE_DATE, POOLINGS, ExpertConfig
from experts.errors import MusketeersError
from experts.models import load_model, one_line
from experts.pooling import needs_all_layers, pool_hidden_states, prompt_choice
from experts.prompt import ExpertInput


class ExpertLoadError(MusketeersError, RuntimeError):
    """An expert's model could not be loaded; the message is one line naming the expert and why."""


def load_expert_model(expert: ExpertConfig):
    """(model, tokenizer) of an expert, frozen; any failure becomes one ExpertLoadError line."""
    try:
        model, tokenizer = load_model(expert.model, dtype=expert.dtype, device=expert.device,
                                      trust_remote_code=expert.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - every failure must name the expert
        raise ExpertLoadError(f"expert {expert.name!r} ({expert.model}) failed to load: {one_line(e)}") from None
    model.requires_grad_(False)
    return model.eval(), tokenizer


class ExpertWorker:
    """Holds one frozen expert and answers encode / generate / info requests."""

    def __init__(self, expert: ExpertConfig, system_prompt: str | None, pooling: str = "last_token", seed: int = 0,
                 padding_side: str = "left", batch_size: int = 16, template_date: str = DEFAULT_TEMPLATE_DATE):
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        self.expert, self.system_prompt = expert, system_prompt  # the task's system prompt text (None: none)
        self.pooling, self.seed = pooling, seed
        self.padding_side, self.batch_size = padding_side, batch_size
        start = time.perf_counter()
        self.model, self.tokenizer = load_expert_model(expert)
        self.input = ExpertInput(self.tokenizer, system_prompt, template_date, expert.max_length)  # chat format decided here
        self.load_seconds = time.perf_counter() - start
        self.encoder = self.model.base_model  # the transformer without its LM head: no logits wasted
        self.device = next(self.model.parameters()).device
        self._takes_positions = "position_ids" in inspect.signature(self.encoder.forward).parameters
        self.num_forwards = 0  # prompts run through the model by encode()

    # ------------------------------------------------------------------ tokenisation

    def prompt(self, question: str) -> str:
        """The text this expert reads for a question (its own chat template, no prefill)."""
        return self.input.text(question)

    def tokenize(self, questions: list[str], padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) [B, T] on the model's device, each prompt cut from the left
        to max_length tokens and padded on `padding_side`."""
        return self.pad(self.input.ids(questions), padding_side)

    def pad(self, ids: list[list[int]], padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) [B, T] on the model's device: rows of token ids padded on `padding_side`
        by the tokenizer's own padding (its pad token: experts.models.load_tokenizer sets one)."""
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, padding_side=padding_side, return_tensors="pt")
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    # ------------------------------------------------------------------ requests

    @torch.inference_mode()
    def _encode_batch(self, rows: list[list[int]]) -> torch.Tensor:
        ids, mask = self.pad(rows, self.padding_side)
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if self._takes_positions:  # a forward does not derive positions from the mask: padding would shift them
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        all_layers = needs_all_layers(self.pooling)
        out = self.encoder(**kwargs, output_hidden_states=all_layers)
        states = out.hidden_states if all_layers else (out.last_hidden_state,)
        # a random pooling's choice follows the ids read (their cache key), so a key always means one state
        choices = [prompt_choice(self.seed, self.expert.name, prompt_key(row).hex()) for row in rows]
        return pool_hidden_states(states, mask, self.pooling, choices).float().cpu()

    def encode(self, questions: list[str]) -> torch.Tensor:
        """One pooled state per question: float32 CPU tensor [B, d]."""
        return self.encode_ids(self.input.ids(questions))

    def encode_ids(self, ids: list[list[int]]) -> torch.Tensor:
        """One pooled state per row of token ids (as ExpertInput.ids gives them): float32 CPU tensor [B, d]."""
        if not ids:
            return torch.zeros(0, self.hidden_size)
        chunks = [ids[i:i + self.batch_size] for i in range(0, len(ids), self.batch_size)]
        states = torch.cat([self._encode_batch(chunk) for chunk in chunks])
        self.num_forwards += len(ids)
        return states

    @torch.inference_mode()
    def generate(self, questions: list[str], max_new_tokens: int) -> list[str]:
        """A greedy hint per question: the decoded new tokens, at most `max_new_tokens` tokens of this
        expert's tokenizer (the text-hints baseline)."""
        if not questions:
            return []
        ids, mask = self.tokenize(questions, "left")  # generation appends on the right
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, temperature=None, top_p=None, top_k=None,
                                  pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, ids.shape[1]:]
        return [self._clip(self.tokenizer.decode(row, skip_special_tokens=True), max_new_tokens) for row in new]

    def _clip(self, text: str, max_tokens: int) -> str:
        """Decoding then re-encoding can grow (e.g. broken UTF-8 bytes): cut until it fits."""
        for _ in range(4):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) <= max_tokens:
                return text
            text = self.tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)
        return ""

    def benchmark(self, questions: list[str], repeats: int = 3) -> dict:
        """Seconds per encode of `questions` as one batch (after a warm-up; not counted in
        num_forwards, not cached) and each prompt's length in this expert's tokens."""
        rows = self.input.ids(questions)
        self._encode_batch(rows)
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            self._encode_batch(rows)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds.append(time.perf_counter() - start)
        return {"seconds": seconds, "prompt_tokens": [len(row) for row in rows]}

    # ------------------------------------------------------------------ introspection

    @property
    def hidden_size(self) -> int:
        return self.model.config.get_text_config().hidden_size

    def info(self) -> dict:
        """What the expert is: name, architecture, size, tokenizer and how it lays out prompts, load time."""
        config = self.model.config.get_text_config()
        chat = self.input.format
        return {
            "name": self.expert.name,
            "model": self.expert.model,
            "architecture": f"{config.model_type} ({type(self.model).__name__})",
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "hidden_size": self.hidden_size,
            "num_layers": getattr(config, "num_hidden_layers", None),
            "vocab_size": len(self.tokenizer),
            "chat_template": chat.source is not None,
            "system_role": chat.system_role,  # native | folded (into the first user turn) | plain (no template)
            "template_date": chat.date if chat.reads_date else None,  # None: the template writes no date
            "chat": chat.describe(),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "device": str(self.device),
            "load_s": self.load_seconds,
            "forwards": self.num_forwards,
            "pid": os.getpid(),
        }
