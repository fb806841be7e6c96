"""`musketeers eval`: accuracy on known answers, every method end to end, the baseline, generation layout."""
import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml

from musketeers import evaluate as ev
from musketeers import generation as gen
from musketeers.config import load_run_config
from musketeers.data import load_split
from musketeers.rundir import read_eval_result, write_manifest
from rewards import reference_completion

FIXTURES = Path(__file__).parents[1] / "fixtures"
TASK = str(FIXTURES / "task_tiny.yaml")
TWO_DATASETS = ('task.datasets=[{name: chain_sum, config: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}},'
                ' {name: basic_arithmetic, config: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}]')


def fake_run(tmp_path: Path, task: str, *overrides: str) -> Path:
    """A run directory with a resolved config and an (empty) final/ checkpoint."""
    cfg = load_run_config(task, [f"output_dir={tmp_path}", *overrides])
    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (run_dir / "final" / name).write_text("{}")
    write_manifest(run_dir / "final")  # sealed, as train() leaves it
    return run_dir


class OracleEvaluator:
    """Stands in for the model: greedy, the gold answer for even-numbered items and garbage for odd
    ones; sampled (k samples), item i gets i % (k + 1) gold samples first, then garbage (items arrive
    in split order; small problem spaces repeat questions, so count, not look up)."""

    seeds: list[int] = []

    def __init__(self, cfg, checkpoint, baseline=False):
        self.cfg, self.seen = cfg, 0
        self.rows = load_split(cfg.task, "test" if cfg.task.source == "gsm8k" else "validation")
        OracleEvaluator.seeds = []

    def complete(self, questions, sampling=None, seed=0):
        out = []
        OracleEvaluator.seeds.append(seed)
        for q in questions:
            k, self.seen = self.seen, self.seen + 1
            row = self.rows[k]
            assert row["question"] == q
            gold = reference_completion(row, self.cfg.task.assistant_prefill)
            if sampling is None:
                out.append(gold if k % 2 == 0 else "<answer>garbage</answer>")
            else:
                n = sampling.samples
                out += [gold if j < k % (n + 1) else "<answer>garbage</answer>" for j in range(n)]
        return out

    def close(self):
        pass


@pytest.fixture
def oracle(monkeypatch):
    monkeypatch.setattr(ev, "Evaluator", OracleEvaluator)


def test_accuracy_on_known_answers_overall_and_per_dataset(tmp_path, oracle):
    run_dir = fake_run(tmp_path, TASK, TWO_DATASETS)
    result = ev.evaluate(run_dir, limit=7, batch_size=3, progress=False)
    assert result["split"] == "validation" and result["n"] == 7
    assert result["accuracy"] == result["score"] == pytest.approx(4 / 7)  # items 0, 2, 4, 6
    rows = load_split(load_run_config(TASK, [TWO_DATASETS]).task, "validation")
    for name, d in result["per_dataset"].items():
        mine = [k for k in range(7) if rows[k]["task"] == name]
        assert d["n"] == len(mine) and d["accuracy"] == pytest.approx(sum(k % 2 == 0 for k in mine) / len(mine))
    assert set(result["per_dataset"]) == {"chain_sum", "basic_arithmetic"}
    written = json.loads((run_dir / "final" / "eval-validation.json").read_text())
    assert written["accuracy"] == result["accuracy"] and [i["score"] for i in written["items"]] == [1.0, 0.0] * 3 + [1.0]
    assert not list((run_dir / "final").glob("*.tmp"))


def test_gsm8k_evaluates_the_official_test_split(tmp_path, oracle, gsm8k_dir):
    run_dir = fake_run(tmp_path, "gsm8k", f"task.path={gsm8k_dir}")
    result = ev.evaluate(run_dir, limit=5, progress=False)
    assert result["split"] == "test" and result["split_size"] == 1319
    assert result["accuracy"] == pytest.approx(3 / 5) and result["per_dataset"]["gsm8k"]["n"] == 5
    assert result["gsm8k_extraction"] == "strict"


def test_accuracy_is_the_full_score_share_and_score_the_mean_with_partial_credit():
    got = ev.accuracy_summary(["a", "a", "b", "b"], [1.0, 0.5, 0.0, 0.99])
    assert (got["n"], got["accuracy"], got["score"]) == (4, 0.25, pytest.approx(2.49 / 4))
    assert got["per_dataset"] == {"a": {"n": 2, "accuracy": 0.5, "score": 0.75},
                                  "b": {"n": 2, "accuracy": 0.0, "score": pytest.approx(0.495)}}


def test_scores_read_gsm8k_as_the_runs_reward_gsm8k_extraction_says():
    rows = [{"answer": "#### 72", "task": "gsm8k", "entry": ""}] * 2
    completions = ["so 48 + 24 = 72", "<answer>72</answer>"]
    assert ev.score_rows(rows, completions, load_run_config("gsm8k")) == [0.0, 1.0]
    assert ev.score_rows(rows, completions, load_run_config("gsm8k", ["reward.gsm8k_extraction=flexible"])) == [1.0, 1.0]


def test_eval_files_of_older_runs_are_read_with_todays_fields():
    old = {"n": 4, "accuracy": 0.6, "solved": 0.5, "split": "validation",
           "per_dataset": {"a": {"n": 4, "accuracy": 0.6, "solved": 0.5}}}
    assert read_eval_result(old) == {"n": 4, "accuracy": 0.5, "score": 0.6, "split": "validation",
                                        "per_dataset": {"a": {"n": 4, "accuracy": 0.5, "score": 0.6}}, "old_fields": True}
    new = {"n": 4, "accuracy": 0.5, "score": 0.6, "per_dataset": {}}
    assert read_eval_result(new) is new and read_eval_result(None) is None


def test_baseline_writes_beside_the_run_and_bad_paths_fail_in_one_line(tmp_path, oracle):
    run_dir = fake_run(tmp_path, TASK)
    result = ev.evaluate(run_dir / "final", limit=2, baseline=True, progress=False)
    assert Path(result["path"]) == run_dir / "eval-validation-baseline.json" and result["checkpoint"] is None
    with pytest.raises(ev.EvalError, match="neither a run directory"):
        ev.evaluate(tmp_path, progress=False)
    (run_dir / "final" / "adapter_model.safetensors").unlink()
    with pytest.raises(ev.EvalError, match="--baseline"):
        ev.evaluate(run_dir, progress=False)
    with pytest.raises(ev.EvalError, match="at least 1"):
        ev.evaluate(run_dir, limit=0, baseline=True, progress=False)


def test_cli_parser_prints_the_table(tmp_path, oracle, capsys):
    run_dir = fake_run(tmp_path, TASK)
    parser = argparse.ArgumentParser()
    ev.add_eval_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", str(run_dir), "--limit", "4", "--batch-size", "2"])
    args.func(args)
    out = capsys.readouterr().out
    assert "| **all** | 4 | 50.00% | 50.00% |" in out and "eval-validation.json" in out


# ----------------------------------------------------------------------------- sampled: mean@k, pass@k


def test_mean_and_pass_at_k_by_hand_partial_credit_is_not_correct():
    datasets = ["a", "a", "b", "b"]
    scores = [[1.0, 0.0, 0.0], [0.5, 0.99, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    got = ev.sampled_summary(datasets, scores)
    # correct samples per item: 1, 1, 0, 3 of 3 (0.5 and 0.99 are partial credit, not correct)
    assert got["n"] == 4
    assert got["mean@k"] == pytest.approx((1 / 3 + 1 / 3 + 0 + 1) / 4) and got["pass@k"] == pytest.approx(3 / 4)
    assert got["per_dataset"]["a"] == {"n": 2, "mean@k": pytest.approx(1 / 3), "pass@k": 1.0, "score": pytest.approx(3.49 / 6)}
    assert got["per_dataset"]["b"] == {"n": 2, "mean@k": pytest.approx(1 / 2), "pass@k": pytest.approx(1 / 2), "score": 0.5}
    assert got["score"] == pytest.approx(6.49 / 12)
    one = ev.sampled_summary(["a"], [[0.25]])  # k = 1: mean@1 = pass@1 = greedy accuracy, not the score
    assert one["mean@k"] == one["pass@k"] == 0.0 and one["score"] == 0.25


def test_sampled_eval_on_known_completions_writes_beside_the_greedy_result(tmp_path, oracle):
    run_dir = fake_run(tmp_path, TASK, TWO_DATASETS)
    greedy = ev.evaluate(run_dir, limit=8, batch_size=3, progress=False)
    result = ev.evaluate(run_dir, limit=8, batch_size=3, progress=False, sampling=ev.Sampling(3))
    assert OracleEvaluator.seeds == [gen.batch_seed(0, s) for s in (0, 3, 6)]  # one seed per batch, from the run's
    # item i has i % 4 correct samples of 3: 0, 1, 2, 3, 0, 1, 2, 3
    assert result["mean@k"] == pytest.approx((0 + 1 / 3 + 2 / 3 + 1) * 2 / 8) and result["pass@k"] == pytest.approx(6 / 8)
    rows = load_split(load_run_config(TASK, [TWO_DATASETS]).task, "validation")
    for name, d in result["per_dataset"].items():
        mine = [i for i in range(8) if rows[i]["task"] == name]
        assert d["n"] == len(mine) and d["mean@k"] == pytest.approx(sum(i % 4 / 3 for i in mine) / len(mine))
        assert d["pass@k"] == pytest.approx(sum(i % 4 > 0 for i in mine) / len(mine))
    assert set(result["per_dataset"]) == {"chain_sum", "basic_arithmetic"}
    assert result["decoding"] == "sampled" and "accuracy" not in result
    assert (result["samples"], result["temperature"], result["top_p"], result["top_k"], result["correct_at"]) == (3, 0.6, 0.9, 0, 1.0)
    assert result["items"][2]["scores"] == [1.0, 1.0, 0.0] and len(result["items"][2]["completions"]) == 3
    path = run_dir / "final" / "eval-validation-sampled-k3-t0.6-p0.9.json"
    assert Path(result["path"]) == path and json.loads(path.read_text())["pass@k"] == result["pass@k"]
    written = json.loads((run_dir / "final" / "eval-validation.json").read_text())  # the greedy result stays
    assert written["decoding"] == "greedy" and written["accuracy"] == greedy["accuracy"]
    baseline = ev.evaluate(run_dir, limit=2, baseline=True, progress=False, sampling=ev.Sampling(2, 1.0, 0.95))
    assert Path(baseline["path"]) == run_dir / "eval-validation-baseline-sampled-k2-t1-p0.95.json"


@pytest.mark.parametrize("samples,temperature,top_p,message", [
    (0, 0.6, 0.9, "--samples must be an integer of at least 1, got 0"),
    (3, -0.1, 0.9, "--temperature must be a finite number of at least 0, got -0.1"),
    (3, float("nan"), 0.9, "--temperature must be a finite number of at least 0, got nan"),
    (3, 0.6, 0.0, r"--top-p must be in \(0, 1\], got 0.0"),
    (3, 0.6, 1.5, r"--top-p must be in \(0, 1\], got 1.5"),
])
def test_bad_sampling_settings_are_refused(samples, temperature, top_p, message):
    with pytest.raises(ev.EvalError, match=f"^{message}$"):
        ev.Sampling(samples, temperature, top_p)


def test_sampled_table(tmp_path, oracle, capsys):
    run_dir = fake_run(tmp_path, TASK)
    parser = argparse.ArgumentParser()
    ev.add_eval_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", str(run_dir), "--limit", "4", "--samples", "3", "--top-p", "1"])
    args.func(args)
    out = capsys.readouterr().out
    assert "3 samples per item at temperature 0.6, top-p 1" in out and "| dataset | n | mean@3" in out
    assert "| **all** | 4 | 50.00% | 75.00% |" in out and "eval-validation-sampled-k3-t0.6-p1.json" in out


# ----------------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny trained run per method (1 step each)."""
    from musketeers.train import train

    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for method in ("perceiver", "ffn", "hard_routing", "text_hints", "single"):
        cfg = load_run_config(TASK, [f"output_dir={root}", f"method={method}", "training.max_steps=1",
                                     "training.gradient_accumulation_steps=1", "adapter.hint_max_tokens=4"])
        runs[method] = train(cfg)
    return runs


@pytest.mark.parametrize("method", ["perceiver", "ffn", "hard_routing", "text_hints", "single"])
def test_every_method_evaluates(trained, method):
    result = ev.evaluate(trained[method], limit=3, batch_size=2, progress=False)
    assert result["n"] == 3 and result["method"] == method and 0.0 <= result["accuracy"] <= 1.0
    assert Path(result["path"]) == trained[method] / "final" / "eval-validation.json"
    assert all(len(item["completion"]) > 0 for item in result["items"])
    sampled = ev.evaluate(trained[method], limit=3, batch_size=2, progress=False, sampling=ev.Sampling(2, 1.0))
    assert sampled["n"] == 3 and [len(item["scores"]) for item in sampled["items"]] == [2, 2, 2]


def test_context_other_gives_each_item_the_next_items_c_and_none_gives_none(trained, monkeypatch):
    seen = {}

    def record(model, tokenizer, prompts, context, *args, **kwargs):
        seen[len(seen)] = (prompts, None if context is None else context.clone())
        return ["<answer>1</answer>"] * len(prompts)

    monkeypatch.setattr(gen, "policy_completions", record)
    results = {c: ev.evaluate(trained["perceiver"], limit=3, batch_size=3, progress=False, context=c)
               for c in ev.CONTEXT_SOURCES}
    (own_prompts, own), (other_prompts, other), (none_prompts, none) = seen.values()
    assert own_prompts == other_prompts == none_prompts  # the items' own prompts every time
    assert torch.equal(other, own[[1, 2, 0]]) and not torch.equal(other, own) and none is None
    final = trained["perceiver"] / "final"
    assert [Path(results[c]["path"]).name for c in ev.CONTEXT_SOURCES] == [
        "eval-validation.json", "eval-validation-context-other.json", "eval-validation-context-none.json"]
    assert all(results[c]["context"] == c and (final / Path(results[c]["path"]).name).is_file() for c in ev.CONTEXT_SOURCES)
    assert "each item given the C of the next item" in ev.format_result(results["other"])
    for method in ("single", "text_hints"):
        with pytest.raises(ev.EvalError, match=f"--context other: method '{method}' gives the policy no context tokens C"):
            ev.evaluate(trained[method], limit=3, progress=False, context="other")
    with pytest.raises(ev.EvalError, match="evaluate at least 2 items"):
        ev.evaluate(trained["perceiver"], limit=1, progress=False, context="other")
    with pytest.raises(ev.EvalError, match="--context 'mine' is not one of own, other, none"):
        ev.evaluate(trained["perceiver"], limit=3, progress=False, context="mine")


def test_trained_adapter_and_lora_are_loaded_and_baseline_uses_the_initial_adapter(trained, tmp_path):
    from safetensors.torch import load_file

    from musketeers.config import load_resolved_config
    from musketeers.train import build_trainer

    run_dir = trained["perceiver"]
    cfg = load_resolved_config(run_dir / "config.yaml")
    evaluator = ev.Evaluator(cfg, run_dir / "final")
    saved = load_file(str(run_dir / "final" / "context_adapter.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in evaluator.conditioner.adapter.state_dict().items())
    assert any("lora_" in n for n, _ in evaluator.model.named_parameters())

    baseline = ev.Evaluator(cfg, None, baseline=True)
    initial = build_trainer(cfg, tmp_path).conditioner.adapter.state_dict()  # the run's g_phi before step 1
    assert all(torch.equal(v, initial[k]) for k, v in baseline.conditioner.adapter.state_dict().items())
    assert not any("lora_" in n for n, _ in baseline.model.named_parameters())


def test_greedy_generation_with_context_matches_the_trainers(tmp_path):
    """The eval helper and the trainer's generation place C identically: same greedy tokens."""
    from musketeers.train import build_trainer

    trainer = build_trainer(load_run_config(TASK, [f"output_dir={tmp_path}"]), tmp_path)
    trainer.generation_config.do_sample = False
    prompts = ["User: 1 + 2 = ?\nAssistant: ", "User: a much longer question about 7 - 3 = ?\nAssistant: "]
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    context = torch.randn(2, 4, trainer.model.get_input_embeddings().weight.shape[1])
    expected = trainer._generate_with_context(prompt_ids, context)
    tokenizer = trainer.processing_class
    got = gen.greedy_completions(trainer.model, tokenizer, prompts, context, trainer.generation_config.max_new_tokens,
                                trainer.conditioner.layout)
    assert got == tokenizer.batch_decode(expected, skip_special_tokens=True)


def test_greedy_eval_ignores_the_models_own_repetition_penalty(tmp_path):
    """generate fills unset fields from the model's generation_config (Qwen2.5-Instruct: repetition_penalty
    1.05); eval decodes as training does, without one."""
    from musketeers.train import build_trainer

    trainer = build_trainer(load_run_config(TASK, [f"output_dir={tmp_path}", "method=single"]), tmp_path)
    model, tokenizer, layout = trainer.model, trainer.processing_class, trainer.conditioner.layout
    prompts = ["User: 1 + 2 = ?\nAssistant: ", "User: a much longer question about 7 - 3 = ?\nAssistant: "]
    plain = gen.greedy_completions(model, tokenizer, prompts, None, 12, layout)
    model.generation_config.repetition_penalty = 50.0  # changes these greedy completions when it applies
    assert gen.greedy_completions(model, tokenizer, prompts, None, 12, layout) == plain


def test_sampled_eval_end_to_end_from_the_command_line(trained, capsys):
    """`musketeers eval --samples` on a tiny trained perceiver run (C repeated for each sample):
    reproducible, really sampled, and at T = 0 the greedy completions."""
    from musketeers.cli import main

    run_dir = trained["perceiver"]
    argv = ["eval", str(run_dir), "--limit", "3", "--batch-size", "2", "--samples", "4", "--temperature", "1.5"]
    main(argv)
    out = capsys.readouterr().out
    assert "4 samples per item at temperature 1.5, top-p 0.9" in out and "| **all** | 3 |" in out
    assert "] expert llama-48 ready:" in out  # the phase lines of loading, as `musketeers train` prints them
    path = run_dir / "final" / "eval-validation-sampled-k4-t1.5-p0.9.json"
    first = json.loads(path.read_text())
    assert first["n"] == 3 and 0.0 <= first["mean@k"] <= first["pass@k"] <= 1.0
    assert [len(item["completions"]) for item in first["items"]] == [4, 4, 4]
    assert any(len(set(item["completions"])) > 1 for item in first["items"])  # sampled, not greedy copies
    main(argv)
    again = json.loads(path.read_text())
    assert [i["completions"] for i in again["items"]] == [i["completions"] for i in first["items"]]  # seeded

    greedy = ev.evaluate(run_dir, limit=3, batch_size=2, progress=False)
    cold = ev.evaluate(run_dir, limit=3, batch_size=2, progress=False, sampling=ev.Sampling(2, 0.0, 0.9))
    assert [i["completions"] for i in cold["items"]] == [[i["completion"]] * 2 for i in greedy["items"]]
    assert cold["mean@k"] == cold["pass@k"] == greedy["accuracy"] and cold["score"] == greedy["score"]


def test_sampling_ignores_the_models_own_top_k_and_is_seeded(tmp_path):
    """Qwen2.5-Instruct's generation_config says top_k 20, top_p 0.8: sampled eval uses only its own settings."""
    from musketeers.train import build_trainer

    trainer = build_trainer(load_run_config(TASK, [f"output_dir={tmp_path}", "method=single"]), tmp_path)
    model, tokenizer, layout = trainer.model, trainer.processing_class, trainer.conditioner.layout
    model.generation_config.top_k = 1  # would make every sample the greedy one
    prompts = ["User: 1 + 2 = ?\nAssistant: ", "User: a much longer question about 7 - 3 = ?\nAssistant: "]
    sampling = ev.Sampling(4, 1.5, 1.0)
    out = gen.policy_completions(model, tokenizer, prompts, None, 8, layout, sampling=sampling, seed=7)
    assert len(out) == 8 and len(set(out[:4])) > 1 and len(set(out[4:])) > 1
    assert gen.policy_completions(model, tokenizer, prompts, None, 8, layout, sampling=sampling, seed=7) == out
    assert gen.policy_completions(model, tokenizer, prompts, None, 8, layout, sampling=sampling, seed=8) != out
