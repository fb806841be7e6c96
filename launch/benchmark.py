"""Step-time benchmark: where an optimizer step's wall time goes, side by side with plain TRL.

    python launch/benchmark.py --steps 6 --configs a,b,c,d            # CPU, SmolLM2 policy
    python launch/benchmark.py --paper-scale --device cuda --configs a,b,d   # paper shapes, random bf16

Configurations (same policy, batch, seed, GRPOConfig, synthetic prompts and dense synthetic reward):
  a  trl.GRPOTrainer as shipped: one model, LoRA via peft_config
  b  MusketeersGRPOTrainer, method single
  c  MusketeersGRPOTrainer, method perceiver, the embedded team (configs/teams/embedded.yaml)
  d  MusketeersGRPOTrainer, method perceiver, three random experts

All configurations live in one process and take turns one optimizer step at a time (a, b, c, d,
a, b, ...): each runs the unmodified `trainer.train()` in its own thread, and a callback hands the
turn on at every step end, so every configuration sees the same machine load. One JSON object per
configuration is printed (medians over the steps after the warm-up step), then one with the ratios.
Step time splits into experts (pool.encode), adapter (g_phi forwards), generation, log-probs (the
no-grad passes: reference / old policy) and update (everything else: loss forward, backward,
optimizer, rewards, logging). With --sequential (default for --paper-scale) the configurations run
one after another, each freed before the next, so peak GPU memory is per configuration.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from functools import wraps
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELS = {"a": "trl", "b": "single", "c": "perceiver-embedded", "d": "perceiver-random"}
BUCKETS = ("experts", "adapter", "generation", "logprobs")
SYSTEM_PROMPT = "Answer with the final answer only."
TINY_TEAM = REPO / "tests" / "fixtures" / "team_tiny.yaml"
# Paper shapes (random weights): the policy is Qwen2.5-3B-shaped, the experts the default team's.
PAPER_POLICY = ("random:qwen2:hidden_size=2048,intermediate_size=11008,num_hidden_layers=36,num_attention_heads=16,"
                "num_key_value_heads=2,tokenizer=gpt2")
PAPER_EXPERTS = {
    "qwen2.5-math-1.5b": "random:qwen2:hidden_size=1536,intermediate_size=8960,num_hidden_layers=28,"
                         "num_attention_heads=12,num_key_value_heads=2,tokenizer=gpt2,seed=1",
    "qwen2.5-coder-7b": "random:qwen2:hidden_size=3584,intermediate_size=18944,num_hidden_layers=28,"
                        "num_attention_heads=28,num_key_value_heads=4,tokenizer=gpt2,seed=2",
    "llama-3.2-3b": "random:llama:hidden_size=3072,intermediate_size=8192,num_hidden_layers=28,"
                    "num_attention_heads=24,num_key_value_heads=8,tokenizer=gpt2,seed=3",
}


def parse_args(argv=None) -> argparse.Namespace:
    from musketeers.config import CONTEXT_POSITIONS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default="embedded:smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per configuration (the first is warm-up)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per optimizer step")
    p.add_argument("--unique-prompts", type=int, default=None, help="size of the prompt set (default 2 x --prompts)")
    p.add_argument("--generations", type=int, default=4, help="completions per prompt (GRPO group size)")
    p.add_argument("--max-tokens", type=int, default=12, help="new tokens per completion (forced: min = max)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--configs", default="a,b,c,d")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    p.add_argument("--expert-backend", default="local", choices=("local", "ray"))
    p.add_argument("--generation-cache", default="dynamic", choices=("dynamic", "static"),
                   help="training.generation_cache: dynamic (one prefill per distinct prompt) or static (compiled decoding on CUDA)")
    p.add_argument("--context-position", default=None, choices=CONTEXT_POSITIONS,
                   help="adapter.context_position (default: the config's)")
    p.add_argument("--sequential", action="store_true", help="run configurations one after another")
    p.add_argument("--alternate", action="store_true", help="with --paper-scale: take turns (all models loaded at once)")
    p.add_argument("--gradient-checkpointing", choices=("recipe", "on", "off"), default="recipe",
                   help="recipe: as a run decides it (training.activation_checkpointing: auto, from the model, batch and memory)")
    p.add_argument("--paper-scale", action="store_true",
                   help="Qwen2.5-3B-shaped policy, the default team's shapes as experts, 32 prompts x 8 x 128 tokens, bf16")
    args = p.parse_args(argv)
    if args.paper_scale:
        args.policy, args.dtype, args.sequential = PAPER_POLICY, "bfloat16", not args.alternate
        args.prompts, args.grad_accum, args.generations, args.max_tokens = 32, 8, 8, 128
        args.device = "cuda" if torch.cuda.is_available() else args.device
    if args.prompts % args.grad_accum:
        p.error("--prompts must be a multiple of --grad-accum")
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in LABELS]
    if unknown:
        p.error(f"--configs: unknown {unknown}; valid: {', '.join(LABELS)}")
    return args


# ----------------------------------------------------------------------------- configs and data


def questions(n: int, seed: int = 0) -> list[str]:
    """A fixed set of n distinct one-digit sums (the benchmark revisits them, so caches hit)."""
    rng = random.Random(seed)
    pairs = rng.sample([(x, y) for x in range(10) for y in range(10)], n) if n <= 100 else \
        [(rng.randrange(1000), k) for k in range(n)]
    return [f"What is {x} + {y}?" for x, y in pairs]


def dense_reward(prompts, completions, **kwargs):
    """Synthetic dense reward (random models never answer right): share of distinct characters."""
    return [len(set(text)) / (len(text) + 1) for text in completions]


dense_reward.__name__ = "accuracy"


def team_config(key: str, args):
    """The expert team of configuration c or d (None for a and b)."""
    import yaml

    from experts.config import ExpertConfig, TeamConfig
    from musketeers.config import _build, resolve_config_file

    if key in ("a", "b"):
        return TeamConfig(name="none")
    device = "cpu" if args.device == "cpu" else args.device
    if args.paper_scale:
        experts = [ExpertConfig(name=n, model=m, dtype="bfloat16", device=device) for n, m in PAPER_EXPERTS.items()]
        return TeamConfig(name="default-shapes", backend="local", experts=experts)
    path = resolve_config_file("embedded", "teams") if key == "c" else TINY_TEAM
    team = _build(TeamConfig, yaml.safe_load(path.read_text())["team"], "team", str(path))
    team.backend = args.expert_backend
    for e in team.experts:
        e.device, e.dtype = device, args.dtype
    return team


def run_config(key: str, args):
    """A RunConfig built directly (no task file: no Reasoning Gym needed), paper adapter defaults."""
    from musketeers.config import AdapterConfig, PolicyConfig, RunConfig, TaskConfig, TrainingConfig

    task = TaskConfig(name="synthetic", system_prompt_text=SYSTEM_PROMPT, assistant_prefill="<answer>")
    training = TrainingConfig(num_generations=args.generations, prompts_per_batch=args.prompts // args.grad_accum,
                              gradient_accumulation_steps=args.grad_accum, max_completion_length=args.max_tokens,
                              max_steps=args.steps, save_steps=10**9, generation_cache=args.generation_cache)
    adapter = AdapterConfig(**({"context_position": args.context_position} if args.context_position else {}))
    return RunConfig(method="single" if key in ("a", "b") else "perceiver", team=team_config(key, args), task=task,
                     policy=PolicyConfig(model=args.policy, dtype=args.dtype), training=training, adapter=adapter)


def prompt_set(args, tokenizer, task):
    from datasets import Dataset

    from musketeers.data import build_prompt

    qs = questions(args.unique_prompts or 2 * args.prompts)
    return Dataset.from_dict({"prompt": [build_prompt(q, tokenizer, task) for q in qs], "question": qs,
                              "answer": ["0"] * len(qs)})


def build_trainer(key: str, args, out_dir: Path):
    """Configuration `key`'s trainer: plain TRL for a, MusketeersGRPOTrainer otherwise."""
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOTrainer

    from musketeers import train as recipe
    from musketeers.conditioning import build_conditioner
    from musketeers.trainer import MusketeersGRPOTrainer

    cfg = run_config(key, args)
    set_seed(cfg.seed)
    with torch.device(args.device):  # random weights are initialised on the device directly
        policy, tokenizer, lora = recipe.build_policy(cfg)
        conditioner = build_conditioner(cfg, policy.get_input_embeddings().weight.shape[1], tokenizer, args.device) if key != "a" else None
    dataset = prompt_set(args, tokenizer, cfg.task)
    if args.gradient_checkpointing == "recipe":  # as train() decides it (training.activation_checkpointing: auto)
        checkpointing = recipe.use_activation_checkpointing(cfg, policy, tokenizer, dataset)
    else:
        checkpointing = args.gradient_checkpointing == "on"
    grpo = recipe.grpo_config(cfg, out_dir / key, checkpointing)
    grpo.generation_kwargs = {"min_new_tokens": args.max_tokens}  # every completion has exactly max_tokens
    grpo.disable_tqdm = True
    common = dict(model=policy, peft_config=lora, reward_funcs=[dense_reward], args=grpo, processing_class=tokenizer,
                  train_dataset=dataset)
    if key == "a":
        trainer = GRPOTrainer(**common)
    else:
        trainer = MusketeersGRPOTrainer(**common, conditioner=conditioner, router_lr=cfg.training.router_lr,
                                        generation_cache=cfg.training.generation_cache)
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    return trainer


# ----------------------------------------------------------------------------- timing


class StepProbe:
    """Per-step timers wrapped around one trainer's parts; the same wrappers for every configuration."""

    def __init__(self, trainer, cuda: bool):
        self.trainer, self.cuda = trainer, cuda
        self.times = dict.fromkeys(BUCKETS, 0.0)
        self.rows: list[dict] = []
        self._wrap(trainer, "_generate_single_turn", "generation")
        self._wrap(trainer, "_get_per_token_logps_and_entropies", "logprobs", no_grad_only=True)
        self._count_sequence_tokens(trainer)
        conditioner = getattr(trainer, "conditioner", None)
        if conditioner is not None and conditioner.pool is not None:
            self._wrap(conditioner.pool, "encode", "experts")
        if conditioner is not None and conditioner.adapter is not None:
            self._hook(conditioner.adapter)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _wrap(self, obj, name: str, bucket: str, no_grad_only: bool = False) -> None:
        inner = getattr(obj, name)

        @wraps(inner)
        def timed(*a, **k):
            counted = not (no_grad_only and torch.is_grad_enabled())
            self._sync()
            start = time.perf_counter()
            result = inner(*a, **k)
            if counted:
                self._sync()
                self.times[bucket] += time.perf_counter() - start
            return result

        setattr(obj, name, timed)

    def _count_sequence_tokens(self, trainer) -> None:
        """Width of the log-prob passes' rows: padded prompt + context tokens + completion."""
        self.sequence_tokens = 0
        inner = trainer._get_per_token_logps_and_entropies

        @wraps(inner)
        def counted(model, input_ids, *a, **k):
            state = getattr(trainer, "round_state", None)  # plain TRL (config a) has none
            context = state.context if state is not None else None
            self.sequence_tokens = input_ids.shape[1] + (context.shape[1] if context is not None else 0)
            return inner(model, input_ids, *a, **k)

        trainer._get_per_token_logps_and_entropies = counted

    def _hook(self, module) -> None:
        starts = []

        def before(*_):
            self._sync()
            starts.append(time.perf_counter())

        def after(*_):
            self._sync()
            self.times["adapter"] += time.perf_counter() - starts.pop()

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def start(self) -> None:
        self._sync()
        self.times = dict.fromkeys(BUCKETS, 0.0)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        """Close the step: its wall time, buckets, tokens and the trainer's expert counters."""
        self._sync()
        step = time.perf_counter() - self._t0
        metrics = self.trainer._metrics["train"]
        last = lambda k: metrics[k][-1] if metrics.get(k) else 0.0  # noqa: E731
        row = {"step": step, **self.times}
        row["update"] = max(step - sum(self.times.values()), 0.0)
        row["tokens"] = last("completions/mean_length") * self.trainer.args.generation_batch_size
        row["sequence_tokens"] = self.sequence_tokens
        row["expert_forwards"], row["cache_hits"] = last("experts/forwards"), last("experts/cache_hits")
        row["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else rss_mb()
        self.rows.append(row)


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Turns:
    """Round-robin turns between trainer threads, handed on at each optimizer step end."""

    def __init__(self, keys: list[str]):
        self.order, self.done, self.turn = list(keys), set(), keys[0]
        self.cond = threading.Condition()

    def wait(self, key: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == key)

    def pass_on(self, key: str, finished: bool = False) -> None:
        with self.cond:
            if finished:
                self.done.add(key)
            live = [k for k in self.order if k not in self.done]
            if live:
                i = self.order.index(key)
                self.turn = next(k for k in self.order[i + 1:] + self.order[: i + 1] if k not in self.done)
            self.cond.notify_all()


def turn_callback(key: str, probe: StepProbe, turns: Turns | None):
    from transformers import TrainerCallback

    class Turn(TrainerCallback):
        def on_train_begin(self, *a, **k):
            if turns:
                turns.wait(key)
            probe.start()

        def on_step_end(self, *a, **k):
            probe.stop()
            if turns:
                turns.pass_on(key)
                turns.wait(key)
            probe.start()

    return Turn()


# ----------------------------------------------------------------------------- runs and report


def summary(key: str, args, trainer, probe: StepProbe) -> dict:
    rows = probe.rows[1:] or probe.rows  # drop the warm-up step
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    out = {"config": key, "label": LABELS[key], "steps_measured": len(rows), "step_s": med("step")}
    out.update({f"{b}_s": med(b) for b in (*BUCKETS, "update")})
    out["generated_tokens_per_s"] = med("tokens") / max(med("generation"), 1e-9)
    out["sequence_tokens"] = med("sequence_tokens")  # of a log-prob pass row: prompt (+ C) + completion
    out["peak_gpu_mb" if args.device != "cpu" else "rss_mb"] = max(r["peak_mb"] for r in probe.rows)
    out["expert_forwards_per_step"] = [r["expert_forwards"] for r in probe.rows]
    out["cache_hits_per_step"] = [r["cache_hits"] for r in probe.rows]
    out["step_s_all"] = [round(r["step"], 3) for r in probe.rows]
    out["experts_s_all"] = [round(r["experts"], 4) for r in probe.rows]  # new prompts vs revisits
    pool = getattr(getattr(trainer, "conditioner", None), "pool", None)
    out["experts"] = pool.names if pool is not None else []
    return out


def train_one(key: str, trainer, probe, turns, errors) -> None:
    trainer.add_callback(turn_callback(key, probe, turns))
    try:
        trainer.train()
    except BaseException as e:  # noqa: BLE001 - reported after the other threads finish
        errors[key] = e
    finally:
        if turns:
            turns.pass_on(key, finished=True)


def run_alternating(args, out_dir: Path) -> dict:
    trainers = {k: build_trainer(k, args, out_dir) for k in args.configs}
    probes = {k: StepProbe(t, args.device != "cpu") for k, t in trainers.items()}
    turns, errors = Turns(args.configs), {}
    threads = [threading.Thread(target=train_one, args=(k, trainers[k], probes[k], turns, errors)) for k in args.configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise next(iter(errors.values()))
    results = {k: summary(k, args, trainers[k], probes[k]) for k in args.configs}
    for t in trainers.values():
        shutdown(t)
    return results


def run_sequential(args, out_dir: Path) -> dict:
    results = {}
    for key in args.configs:
        trainer = build_trainer(key, args, out_dir)
        probe = StepProbe(trainer, args.device != "cpu")
        errors = {}
        train_one(key, trainer, probe, None, errors)
        if errors:
            raise errors[key]
        results[key] = summary(key, args, trainer, probe)
        print(json.dumps(results[key]), flush=True)
        shutdown(trainer)
        del trainer, probe
        gc.collect()
        if args.device != "cpu":
            torch.cuda.empty_cache()
    return results


def shutdown(trainer) -> None:
    pool = getattr(getattr(trainer, "conditioner", None), "pool", None)
    if pool is not None:
        pool.shutdown()


def ratios(results: dict) -> dict:
    """Step-time ratios: of the medians, and the median of per-round ratios (configurations that take
    turns share each round's machine load, so the paired ratio cancels load drift)."""
    pairs = [(f"{x}/{y}", x, y) for x, y in (("b", "a"), ("c", "b"), ("d", "b")) if x in results and y in results]
    out = {"of_medians": {n: round(results[x]["step_s"] / results[y]["step_s"], 4) for n, x, y in pairs}}
    paired = {}
    for name, x, y in pairs:
        xs, ys = results[x]["step_s_all"][1:], results[y]["step_s_all"][1:]
        if xs and len(xs) == len(ys):
            paired[name] = round(statistics.median(p / q for p, q in zip(xs, ys)), 4)
    out["paired_median"] = paired
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="musketeers-bench-") as tmp:
        results = (run_sequential if args.sequential else run_alternating)(args, Path(tmp))
    if not args.sequential:
        for r in results.values():
            print(json.dumps(r), flush=True)
    machine = torch.cuda.get_device_name() if args.device != "cpu" else f"cpu x{os.cpu_count()}, torch threads {args.threads}"
    print(json.dumps({"ratios_step_time": ratios(results), "machine": machine, "torch": torch.__version__,
                      "policy": args.policy, "dtype": args.dtype, "prompts": args.prompts,
                      "generations": args.generations, "max_tokens": args.max_tokens, "grad_accum": args.grad_accum,
                      "expert_backend": "local" if args.paper_scale else args.expert_backend,
                      "gradient_checkpointing": args.gradient_checkpointing}), flush=True)


if __name__ == "__main__":
    main()
