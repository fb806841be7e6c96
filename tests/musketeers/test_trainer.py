"""GRPO training on tiny random models: context layout, reference pass, gradients, resume, methods."""
import inspect
from pathlib import Path

import pytest
import torch

from musketeers import train as train_module
from musketeers.config import CONTEXT_POSITIONS, load_run_config
from musketeers.methods import RowTensors
from musketeers.rundir import read_metrics
from musketeers.train import build_trainer, train
from musketeers.trainer import CONDITIONING_KEY

FIXTURES = Path(__file__).parents[1] / "fixtures"
TASK = str(FIXTURES / "task_tiny.yaml")


def tiny_config(tmp_path, *overrides):
    return load_run_config(TASK, [f"output_dir={tmp_path}", *overrides])


def digit_reward(prompts, completions, log_metric=None, **kwargs):
    """A dense test reward (random tiny models never answer correctly): share of distinct characters;
    logs `accuracy` as the score reward does (rewards/functions.py)."""
    scores = [len(set(text)) / (len(text) + 1) for text in completions]
    if log_metric is not None:
        log_metric("accuracy", sum(s >= 1.0 for s in scores) / len(scores))
    return scores


digit_reward.__name__ = "score"


@pytest.fixture
def dense_reward(monkeypatch):
    monkeypatch.setattr("rewards.make_reward_functions", lambda *a, **k: ([digit_reward], [1.0]))


def first_batch(trainer):
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    return batch


def test_overridden_trl_methods_keep_their_signatures():
    """Fails loudly when a TRL upgrade changes what MusketeersGRPOTrainer overrides."""
    from trl import GRPOTrainer

    expected = {
        "_generate_and_score_completions": ["self", "inputs"],
        "_generate_single_turn": ["self", "prompt_ids", "images", "multimodal_fields", "num_generations", "has_tool_images"],
        "_get_per_token_logps_and_entropies": ["self", "model", "input_ids", "attention_mask", "logits_to_keep",
                                               "batch_size", "compute_entropy", "compute_aux_loss", "pixel_values",
                                               "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                                               "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids",
                                               "image_position_ids"],
        "_compute_loss": ["self", "model", "inputs"],
        "_tokenize_prompts": ["self", "prompts"],
        "_save_checkpoint": ["self", "model", "trial"],
        "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],
        "create_optimizer": ["self", "model"],
        "evaluate": ["self", "eval_dataset", "ignore_keys", "metric_key_prefix"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(GRPOTrainer, name)).parameters) == params, name


def one_round(trainer):
    """TRL's own round (generate once, shuffle, split), stepped through as training does: yields (the round's
    batch, a micro-batch, its decoded prompts) for each buffered micro-batch."""
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    for _ in range(trainer.args.steps_per_generation):
        micro = trainer._prepare_inputs(batch)
        trainer._step += 1
        yield batch, micro, trainer.processing_class.batch_decode(micro["prompt_ids"], skip_special_tokens=True)


def test_trl_carries_the_stored_conditioning_through_its_shuffle_and_split(tmp_path, dense_reward):
    """Behaviour behind the overrides: TRL's own _prepare_inputs (generate, shuffle, split into
    micro-batches) hands the loss pass, for every row, the C that row was generated with, and the
    first loss of an untrained policy logs a KL of ~0 against the reference."""
    trainer = build_trainer(tiny_config(tmp_path), tmp_path)
    trainer.model.train()
    generated = {}
    prepare = trainer.conditioner.prepare

    def record(questions, training):
        cond = prepare(questions, training)
        for q, c in zip(questions, cond.context):
            generated.setdefault(q, c.clone())
        return cond

    trainer.conditioner.prepare = record
    rows_seen = 0
    for batch, micro, prompts in one_round(trainer):
        rebuilt = trainer.conditioner.context(RowTensors.collate(micro[CONDITIONING_KEY]), training=True)
        for prompt, c in zip(prompts, rebuilt):
            (question,) = [q for q in generated if q in prompt]
            assert torch.allclose(c, generated[question], atol=1e-6)
            rows_seen += 1
        trainer.compute_loss(trainer.model, micro).backward()
    assert rows_seen == len(batch) == trainer.num_generations * len(generated)  # every row, each prompt G times
    assert max(trainer._metrics["train"]["kl"]) < 1e-7


@pytest.mark.parametrize("position", CONTEXT_POSITIONS)
def test_reference_sees_zeros_where_c_sits_and_kl_is_zero_at_step_0(tmp_path, monkeypatch, position):
    trainer = build_trainer(tiny_config(tmp_path, f"adapter.context_position={position}"), tmp_path)
    seen = []
    import musketeers.trainer as trainer_module

    original = trainer_module.insert_context

    def spy(embeds, mask, context, slot):
        seen.append((trainer.round_state.reference, context.detach().clone()))
        return original(embeds, mask, context, slot)

    import musketeers.context as context_module

    monkeypatch.setattr(trainer_module, "insert_context", spy)  # log-prob passes
    monkeypatch.setattr(context_module, "insert_context", spy)  # generation
    output = trainer._generate_and_score_completions(first_batch(trainer))
    reference = [c for is_ref, c in seen if is_ref]
    policy = [c for is_ref, c in seen if not is_ref]
    assert reference and all(torch.count_nonzero(c) == 0 for c in reference)
    assert policy and all(torch.count_nonzero(c) > 0 for c in policy)  # generation saw the real C

    # step 0: LoRA B = 0, so with C = 0 the policy's per-token log-probs are the reference's; the
    # adapter's near-zero C (RMSNorm magnifies tiny vectors) moves them by < 1e-3, a KL below 1e-7
    ids = torch.cat([output["prompt_ids"], output["completion_ids"]], 1)
    mask = torch.cat([output["prompt_mask"], output["completion_mask"]], 1)
    valid = output["completion_mask"].bool()
    context = trainer.conditioner.context(output[CONDITIONING_KEY], training=True).detach()
    for c, tolerance in ((torch.zeros_like(context), 1e-6), (context, 1e-3)):
        with torch.no_grad(), trainer._context_as(c):
            logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, output["completion_ids"].shape[1])
        delta = output["ref_per_token_logps"][valid] - logps[valid]
        assert delta.abs().max() < tolerance
    kl = (torch.exp(delta) - delta - 1).mean()  # TRL's k3 estimator
    assert kl < 1e-7 and max(trainer._metrics["train"]["kl"], default=0.0) < 1e-7


def test_reference_none_sees_the_plain_prompt(tmp_path):
    """training.reference_context=none: the reference log-probs are the base policy's on the prompt
    alone, no context tokens (eq. 4 read literally)."""
    trainer = build_trainer(tiny_config(tmp_path, "training.reference_context=none"), tmp_path)
    output = trainer._generate_and_score_completions(first_batch(trainer))
    ids = torch.cat([output["prompt_ids"], output["completion_ids"]], 1)
    mask = torch.cat([output["prompt_mask"], output["completion_mask"]], 1)
    with torch.no_grad(), trainer._context_as(None):
        plain, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, output["completion_ids"].shape[1])
    valid = output["completion_mask"].bool()
    assert torch.allclose(output["ref_per_token_logps"][valid], plain[valid], atol=1e-6)


@pytest.mark.parametrize("position", CONTEXT_POSITIONS)
def test_generation_and_logprob_passes_share_the_layout(tmp_path, position):
    """Tokens sampled from the prompt with C get, in the log-prob pass, the log-probs they were sampled with."""
    trainer = build_trainer(tiny_config(tmp_path, "training.temperature=1.0", f"adapter.context_position={position}"), tmp_path)
    prompts = ["User: 1 + 2 = ?\nAssistant: ", "User: a much longer question about 7 - 3 = ?\nAssistant: "]
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    context = torch.randn(2, 4, trainer.model.get_input_embeddings().weight.shape[1])
    torch.manual_seed(0)
    from musketeers.context import insert_context
    from trl.trainer.utils import pad

    model = trainer.model
    ids = pad([torch.tensor(p) for p in prompt_ids], padding_value=trainer._tokenizer.pad_token_id, padding_side="left")
    mask = (pad([torch.ones(len(p), dtype=torch.long) for p in prompt_ids], padding_value=0, padding_side="left"))
    embeds, full_mask, _ = insert_context(model.get_input_embeddings()(ids), mask, context, trainer.conditioner.layout.slot(mask))
    with torch.no_grad():
        out = model.generate(inputs_embeds=embeds, attention_mask=full_mask, max_new_tokens=5, do_sample=True,
                             min_new_tokens=5, output_logits=True, return_dict_in_generate=True)
        sampled = torch.stack([torch.log_softmax(s, -1) for s in out.logits], 1).gather(-1, out.sequences.unsqueeze(-1)).squeeze(-1)
        with trainer._context_as(context):
            logps, _, _ = trainer._get_per_token_logps_and_entropies(
                model, torch.cat([ids, out.sequences], 1), torch.cat([mask, torch.ones_like(out.sequences)], 1), 5)
    assert torch.allclose(logps, sampled, atol=1e-4)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("policy, targets", [
    ("random:llama:hidden_size=64", "[q_proj, v_proj]"), ("random:gpt2:hidden_size=64", "[c_attn, c_proj]"),
    ("random:gemma3_text:hidden_size=64,sliding_window=4", "[q_proj, v_proj]")])
def test_the_loss_pass_scores_sampled_tokens_as_the_sampling_pass_did(tmp_path, policy, targets, cache):
    """Exactness of sampling: the trainer's own generation (shared prefill, C after the first token,
    left padding, G copies) samples from exactly the distribution its loss pass later computes, so the
    importance ratio starts at 1; LoRA is made non-zero so the adapted weights take part."""
    from transformers import LogitsProcessor, LogitsProcessorList

    cfg = tiny_config(tmp_path, f"policy.model={policy}", f"policy.lora.target_modules={targets}", "training.temperature=0.7",
                      f"training.generation_cache={cache}")
    trainer = build_trainer(cfg, tmp_path)
    torch.manual_seed(0)
    for name, p in trainer.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.2)
    trainer.model.train()  # TRL samples and scores in train mode; LoRA dropout is 0 (policy.lora.dropout)

    class Record(LogitsProcessor):  # runs before generate's temperature warper, which TRL sets to 0.7
        steps = []

        def __call__(self, input_ids, scores):
            self.steps.append(torch.log_softmax(scores / trainer.temperature, -1))
            return scores

    questions = ["1 + 2 = ?", "a much longer question about 7 - 3 = ?", "9 - 9?"]
    prompts = [f"User: {q}\nAssistant: " for q in questions for _ in range(2)]  # G = 2 copies each
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    context = torch.randn(3, 4, trainer.model.get_input_embeddings().weight.shape[1]).repeat_interleave(2, 0)
    with torch.no_grad():  # no min_new_tokens: it would mask EOS out of the sampling distribution
        rows = trainer._generate_with_context(prompt_ids, context, logits_processor=LogitsProcessorList([Record()]), max_new_tokens=5)
        k = max(map(len, rows))
        completions = torch.tensor([r + [trainer._tokenizer.pad_token_id] * (k - len(r)) for r in rows])
        valid = torch.tensor([[1] * len(r) + [0] * (k - len(r)) for r in rows])
        sampled = torch.stack(Record.steps[:k], 1).gather(-1, completions.unsqueeze(-1)).squeeze(-1)
        from trl.trainer.utils import pad

        ids = pad([torch.tensor(p) for p in prompt_ids], padding_value=trainer._tokenizer.pad_token_id, padding_side="left")
        mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompt_ids], padding_value=0, padding_side="left")
        with trainer._context_as(context):
            logps, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, torch.cat([ids, completions], 1), torch.cat([mask, valid], 1), k)
    logps, sampled = logps[valid.bool()], sampled[valid.bool()]
    assert torch.allclose(logps, sampled, atol=1e-5), (logps - sampled).abs().max()


def test_logprob_pass_scores_only_completions_and_equals_full_logits(tmp_path, monkeypatch):
    """The log-prob pass feeds only completion positions to the LM head; its log-probs and entropies equal
    TRL's own pass (no C) and a plain full-logits forward (with C), padding and micro-batches included."""
    from trl import GRPOTrainer

    from musketeers.context import insert_context

    trainer = build_trainer(tiny_config(tmp_path, "training.temperature=0.7"), tmp_path)
    model, vocab = trainer.model, trainer.model.get_input_embeddings().weight.shape[0]
    torch.manual_seed(0)
    ids = torch.randint(3, vocab, (4, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = mask[1, :1] = 0  # left pads
    mask[2, -2:] = mask[3, -1:] = 0  # completions cut at EOS
    import trl.trainer.utils as trl_utils

    head, scored = trl_utils._ChunkedLogProbFunction, []

    class CountingHead(head):
        @classmethod
        def apply(cls, hidden, *args):
            scored.append(hidden.shape[0])
            return head.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", CountingHead)
    with torch.no_grad():
        ours = trainer._get_per_token_logps_and_entropies(model, ids, mask, 4, batch_size=3, compute_entropy=True)
        assert scored == [3 * 4, 1 * 4]  # micro-batches of 3 and 1 rows, 4 completion positions each
        trl = GRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, 4, batch_size=3, compute_entropy=True)
    valid = mask[:, -4:].bool()
    for a, b in zip(ours[:2], trl[:2]):
        assert a.shape == (4, 4) and torch.allclose(a[valid], b[valid], atol=1e-5)

    context = torch.randn(4, 3, model.get_input_embeddings().weight.shape[1])
    embeds, full_mask, positions = insert_context(model.get_input_embeddings()(ids), mask, context,
                                                  trainer.conditioner.layout.slot(mask[:, :-4]))
    with torch.no_grad(), trainer._context_as(context):
        logps, entropy, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, 4, compute_entropy=True)
        logits = model(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions).logits[:, -5:-1] / 0.7
    expected = torch.log_softmax(logits, -1).gather(-1, ids[:, -4:, None]).squeeze(-1)
    expected_entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(logps[valid], expected[valid], atol=1e-5)
    assert torch.allclose(entropy[valid], expected_entropy[valid], atol=1e-5)


def test_gradients_reach_lora_and_adapter_with_router_lr(tmp_path, dense_reward):
    trainer = build_trainer(tiny_config(tmp_path, "training.router_lr=3e-3", "training.learning_rate=1e-4"), tmp_path)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop
    inputs = trainer._prepare_inputs(first_batch(trainer))
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    adapter = trainer.conditioner.adapter
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    lora = [p for n, p in trainer.model.named_parameters() if "lora_" in n]
    assert lora and any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    optimizer = trainer.create_optimizer()
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert lrs == [1e-4, 3e-3]
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {id(p) for p in adapter.parameters()}


def test_out_proj_lr_scale_puts_w_out_in_its_own_group(tmp_path, dense_reward):
    cfg = tiny_config(tmp_path, "training.router_lr=3e-3", "training.learning_rate=1e-4", "training.out_proj_lr_scale=0.0625")
    trainer = build_trainer(cfg, tmp_path)
    adapter = trainer.conditioner.adapter
    groups = trainer.create_optimizer().param_groups
    assert [g["lr"] for g in groups] == [1e-4, 3e-3, 3e-3 * 0.0625]
    assert {id(p) for p in groups[2]["params"]} == {id(adapter.out_proj.weight), id(adapter.out_proj.bias)}
    assert {id(p) for g in groups[1:] for p in g["params"]} == {id(p) for p in adapter.parameters()}


class StopAfter:
    """Simulates a killed run: raises once step k is done (its checkpoint written)."""

    def __init__(self, k):
        self.k = k

    def __call__(self, trainer):
        from transformers import TrainerCallback

        k = self.k

        class Stop(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == k:
                    raise KeyboardInterrupt

        trainer.add_callback(Stop())
        return trainer


def deterministic(row):
    """Metrics that must not depend on the interruption: all but wall times and expert-cache
    counters (the in-memory cache starts empty in the resumed process; team.cache_dir keeps it)."""
    return {k: v for k, v in row.items() if not k.startswith(("time/", "experts/")) and k not in ("step_time", "eval/runtime")}


def test_resume_gives_exactly_the_uninterrupted_metrics(tmp_path, dense_reward, monkeypatch):
    cfg = ["training.max_steps=4", "training.save_steps=2", "training.gradient_accumulation_steps=1",
           "training.eval_every=2", "training.eval_size=4"]  # held-out accuracy rows resume too
    straight = train(tiny_config(tmp_path / "a", *cfg))

    original = train_module.build_trainer
    monkeypatch.setattr(train_module, "build_trainer", lambda *a: StopAfter(2)(original(*a)))
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "b", *cfg))
    interrupted = next((tmp_path / "b").iterdir())
    assert [r["step"] for r in read_metrics(interrupted)] == [1, 2, 2]  # step 2 and its evaluation
    monkeypatch.setattr(train_module, "build_trainer", original)
    train(resume=interrupted)

    a, b = read_metrics(straight), read_metrics(interrupted)
    assert [(r["step"], "eval/accuracy" in r) for r in b] == [(1, False), (2, False), (2, True), (3, False), (4, False), (4, True)]
    assert [deterministic(r) for r in a] == [deterministic(r) for r in b]
    assert all(r["reward_std"] > 0 for r in a if "reward" in r)  # the runs really learned something


@pytest.mark.parametrize("method", ["perceiver", "ffn", "hard_routing", "text_hints", "single"])
def test_every_method_trains_two_steps(tmp_path, dense_reward, method):
    run_dir = train(tiny_config(tmp_path, f"method={method}", "adapter.hint_max_tokens=8"))
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoint-2").is_dir()
    assert any((run_dir / "tensorboard").iterdir()) and (run_dir / "curves.png").stat().st_size > 10_000
    if method in ("perceiver", "ffn", "hard_routing"):  # g_phi's share of the joint pre-clip norm
        assert all(0 < r["grad_norm/adapter"] <= r["grad_norm"] * (1 + 1e-5) for r in rows)
    else:
        assert not any("grad_norm/adapter" in r for r in rows)
    if method == "perceiver":
        assert {"routing/entropy", "routing/head_entropy", "routing/utilisation/llama-48", "time/experts",
                "time/generation"} <= set(rows[0])
        assert (run_dir / "checkpoint-2" / "context_adapter.safetensors").is_file()
        assert all(r["routing/head_entropy"] <= r["routing/entropy"] + 1e-9 for r in rows)  # H is concave
    if method == "hard_routing":
        freqs = [rows[0][f"routing/frequency/{n}"] for n in ("llama-48", "gpt2-64", "qwen2-80")]
        assert abs(sum(freqs) - 1) < 1e-6
    if method == "single":
        assert "time/experts" in rows[0] and not any(k.startswith("routing/") for k in rows[0])


def test_a_run_prints_phase_lines_and_one_line_per_step_without_raw_dicts_or_deprecations(tmp_path, dense_reward, capsys):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_dir = train(tiny_config(tmp_path))
    out, err = capsys.readouterr()
    steps = [line for line in out.splitlines() if "] step " in line]
    rows = read_metrics(run_dir)
    assert [line.split("] ", 1)[1].split("  reward")[0] for line in steps] == ["step 1/2", "step 2/2"]
    assert f"reward {rows[0]['reward']:.3f}  accuracy {rows[0]['accuracy']:.3f}" in steps[0]
    for phase in ("] loaded policy random:llama:hidden_size=64: llama", "] expert llama-48 ready: llama", "] expert qwen2-80 ready",
                  "] method perceiver: trainable parameters: LoRA 3,584, adapter g_phi 12,480", "] training: 2 steps of 4 prompts x 2",
                  "] trained to step 2 in ", f"curves: {run_dir / 'curves.png'}"):
        assert phase in out, phase
    assert "{'loss'" not in out + err and "it/s]" not in err  # neither TRL's dicts nor its progress bar
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))], [str(w.message) for w in caught]
    assert (run_dir / "curves.png").is_file()


TWO_DATASETS = ('task.datasets=[{name: chain_sum, config: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}},'
                ' {name: basic_arithmetic, config: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}]')


def test_held_out_accuracy_during_training_is_musketeers_eval_of_that_steps_checkpoint(tmp_path, dense_reward, monkeypatch):
    """training.eval_every=k: eval/accuracy (overall and per dataset) at step k is exactly what `musketeers eval
    --limit eval_size` gives for checkpoint-k, and evaluating leaves training's own numbers unchanged."""
    from musketeers.evaluate import evaluate

    # tiny random models never answer right: both paths score completions with the same stand-in, the full score
    # for an even number of distinct characters, else dense partial credit
    monkeypatch.setattr("rewards.score_completion",
                        lambda completion, *a, **k: 1.0 if len(set(completion)) % 2 == 0 else digit_reward(None, [completion])[0])
    common = ["training.max_steps=3", "training.gradient_accumulation_steps=1", "training.learning_rate=0.05", TWO_DATASETS]
    run_dir = train(tiny_config(tmp_path / "eval", "training.eval_every=2", "training.eval_size=6", *common))
    rows = read_metrics(run_dir)
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [2, 3]  # every 2 steps, and at the last one
    for row in evals:
        result = evaluate(run_dir / f"checkpoint-{row['step']}", limit=6, progress=False)
        assert result["n"] == 6 and row["eval/accuracy"] == result["accuracy"] and row["eval/score"] == result["score"] > 0
        assert {k: v for k, v in row.items() if k.startswith("eval/accuracy/")} == \
            {f"eval/accuracy/{name}": d["accuracy"] for name, d in result["per_dataset"].items()}
        assert len(result["per_dataset"]) == 2
    assert evals[0]["eval/score"] != evals[1]["eval/score"]  # a large lr: checkpoints 2 and 3 differ, so the steps match
    plain = read_metrics(train(tiny_config(tmp_path / "plain", *common)))
    assert [deterministic(r) for r in plain] == [deterministic(r) for r in rows if "reward" in r]


@pytest.mark.parametrize("reference", ["zeros", "none"])
def test_reward_without_context_samples_the_trained_policy_from_the_prompt_alone(tmp_path, monkeypatch, reference):
    """Figure 5's "without C" is pi_theta(y | x): no context slots (not the KL reference's zeros), LoRA on,
    the same prompts as the round's sampling with C."""
    from peft.tuners.lora import LoraLayer

    import musketeers.trainer as trainer_module

    trainer = build_trainer(tiny_config(tmp_path, f"training.reference_context={reference}", "training.no_context_reward_every=1"), tmp_path)
    calls, original = [], trainer_module.generate_with_context

    def spy(model, ids, mask, context, *args, **kwargs):
        lora_on = [not m.disable_adapters for m in model.modules() if isinstance(m, LoraLayer)]
        calls.append((ids.clone(), context, lora_on))
        return original(model, ids, mask, context, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "generate_with_context", spy)
    trainer._generate_and_score_completions(first_batch(trainer))
    (with_c, _, lora_with_c), (plain, without_c, lora_plain) = calls  # the round's sampling, then the no-C reward
    assert with_c is not None and without_c is None
    assert torch.equal(plain, with_c)  # same prompt tokens: C is only ever inserted as embeddings
    assert lora_plain and all(lora_plain) and all(lora_with_c)
    assert len(trainer._metrics["train"]["reward_without_context"]) == 1


def test_hard_routing_gives_each_group_one_expert_at_generation_and_in_the_loss(tmp_path, dense_reward):
    """Through TRL's own round (generation, shuffle, micro-batches): every completion of a prompt is
    generated with one expert, and the loss pass rebuilds C with that same expert for each row."""
    trainer = build_trainer(tiny_config(tmp_path, "method=hard_routing"), tmp_path)
    trainer.model.train()
    routed, prepare = {}, trainer.conditioner.prepare

    def record(questions, training):
        cond = prepare(questions, training)
        for q, expert in zip(questions, cond.stored.choice.tolist()):
            routed.setdefault(q, set()).add(expert)
        return cond

    trainer.conditioner.prepare = record
    rows_seen = 0
    for batch, micro, prompts in one_round(trainer):
        stored = RowTensors.collate(micro[CONDITIONING_KEY])
        out = trainer.conditioner.method.adapter_output(trainer.conditioner.adapter, stored, training=True)
        for prompt, expert in zip(prompts, out.selection.argmax(-1).tolist()):
            (question,) = [q for q in routed if q in prompt]
            assert routed[question] == {expert}
            rows_seen += 1
    assert rows_seen == len(batch) == trainer.num_generations * len(routed)


def test_reward_without_context_is_logged_every_k_steps(tmp_path, dense_reward):
    run_dir = train(tiny_config(tmp_path, "training.no_context_reward_every=2", "training.max_steps=3"))
    rows = read_metrics(run_dir)
    assert ["reward_without_context" in r for r in rows] == [True, False, True]  # global steps 0 and 2
    assert all(0.0 <= r["reward_without_context"] <= 1.0 for r in rows if "reward_without_context" in r)


def test_train_cli_errors(tmp_path, capsys):
    from musketeers.cli import main

    for argv, message in [
        (["train", "--resume", str(tmp_path)], f"--resume: '{tmp_path}' is not a run directory (no config.yaml)"),
        (["train", "logic", "--resume", str(tmp_path)], "--resume continues a run with its own config: give no task or overrides with it"),
        (["train", "logic", "method=nope"], "command line: method: 'nope' is not valid; valid: perceiver, ffn, hard_routing, text_hints, single"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and capsys.readouterr().err.strip() == f"musketeers: error: {message}"
    assert not any(tmp_path.iterdir())  # nothing written for a bad input


def test_a_run_that_cannot_start_leaves_no_run_directory(tmp_path):
    from musketeers.errors import MusketeersError

    with pytest.raises(MusketeersError, match="cannot load model 'someone/not-cached'"):
        train(tiny_config(tmp_path, "policy.model=someone/not-cached"))
    assert list(tmp_path.iterdir()) == []


def test_activation_checkpointing_is_decided_from_model_batch_and_memory(tmp_path, monkeypatch):
    from transformers import Qwen2Config

    from musketeers import train as recipe

    # Qwen2.5-3B shapes, 32 rows of ~180 tokens, bf16: the H100 run held about 19 GB of activations
    # without checkpointing (25.5 GB peak, 6.2 GB of weights); the estimate may err high, not low
    qwen3b = Qwen2Config(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36)
    estimate = recipe.loss_pass_activation_bytes(qwen3b, tokens=32 * 180, dtype_bytes=2)
    assert 19e9 <= estimate <= 25e9

    free = {"bytes": 10**12}
    monkeypatch.setattr(recipe, "free_memory_bytes", lambda device: free["bytes"])
    assert not build_trainer(tiny_config(tmp_path / "a"), tmp_path / "a").args.gradient_checkpointing  # fits: off
    free["bytes"] = 1000
    assert build_trainer(tiny_config(tmp_path / "b"), tmp_path / "b").args.gradient_checkpointing  # does not fit: on
    forced = build_trainer(tiny_config(tmp_path / "c", "training.activation_checkpointing=never"), tmp_path / "c")
    assert not forced.args.gradient_checkpointing
    free["bytes"] = 10**12
    forced = build_trainer(tiny_config(tmp_path / "d", "training.activation_checkpointing=always"), tmp_path / "d")
    assert forced.args.gradient_checkpointing


def test_after_experts_precompute_a_run_loads_no_expert_and_trains_the_same(tmp_path, dense_reward, monkeypatch):
    """`musketeers experts precompute` fills team.cache_dir with every training and evaluation state; a
    run that finds them all loads no expert model and logs what a run computing them itself logs."""
    import experts.pool
    from musketeers.conditioning import precompute_states
    from musketeers.data import load_split

    computed = read_metrics(train(tiny_config(tmp_path / "a")))
    cache = f"team.cache_dir={tmp_path / 'states'}"
    cfg = tiny_config(tmp_path / "p", cache)
    stats = precompute_states(cfg, batch_size=16, progress=False)
    distinct = {row["question"] for split in ("train", "validation") for row in load_split(cfg.task, split)}
    assert stats["models_loaded"] == 3
    assert all(stats[name]["cached"] == len(distinct) for name in ("llama-48", "gpt2-64", "qwen2-80"))
    loads = []
    original = experts.pool.ExpertWorker.__init__
    monkeypatch.setattr(experts.pool.ExpertWorker, "__init__", lambda self, *a, **k: loads.append(a) or original(self, *a, **k))
    cached = read_metrics(train(tiny_config(tmp_path / "b", cache)))
    assert loads == []
    for a, b in zip(computed, cached, strict=True):
        assert b["experts/forwards"] == 0
        for key in ("reward", "kl", "loss", "routing/entropy"):
            assert a[key] == b[key], (key, a[key], b[key])
