"""What a run prints: the per-step and per-evaluation lines, phase lines with elapsed time, silenced deprecations."""
import io
import logging
import re
import warnings

from musketeers.console import eval_line, run_output, step_line

# what TRL logs for one optimizer step (a subset), as the callbacks receive it
STEP_LOGS = {"loss": 0.0012, "grad_norm": 0.5, "learning_rate": 3e-4, "accuracy": 0.125, "rewards/score/mean": 0.15,
             "rewards/cosine/mean": 0.1, "reward": 0.1875,
             "reward_std": 0.2, "kl": 0.001234, "entropy": 5.5391, "routing/entropy": 1.0972, "step_time": 12.345,
             "routing/utilisation/a": 0.5, "epoch": 0.1}


def test_step_line_is_one_compact_line_with_the_key_numbers():
    assert step_line(STEP_LOGS, 3, 30) == \
        "step  3/30  reward 0.188  accuracy 0.125  score 0.150  KL 0.00123  entropy 5.539  routing H 1.097  12.3 s/step"
    single = {k: v for k, v in STEP_LOGS.items() if not k.startswith("routing/")} | {"step_time": 0.0604, "kl": 0.0}
    assert step_line(single, 12, 500) == "step  12/500  reward 0.188  accuracy 0.125  score 0.150  KL 0  entropy 5.539  0.06 s/step"
    assert step_line({"reward": 0.5, "kl": None}, 1, 1) == "step 1/1  reward 0.500"  # what TRL did not log is left out


def test_eval_line_names_the_items_and_each_dataset_when_there_are_several():
    logs = {"eval_accuracy": 0.25, "eval_accuracy/basic_arithmetic": 0.2, "eval_accuracy/chain_sum": 0.3, "eval_score": 0.375,
            "eval_runtime": 4.21}
    assert eval_line(logs, 10, 64, "validation") == ("eval at step 10: accuracy 0.250 (basic_arithmetic 0.200, chain_sum 0.300), "
                                                     "score 0.375, greedy, first 64 validation items, 4.2 s")
    one = {"eval_accuracy": 0.5, "eval_accuracy/gsm8k": 0.5}
    assert eval_line(one, 3, 8, "test") == "eval at step 3: accuracy 0.500, greedy, first 8 test items"


def test_run_output_prints_phase_lines_and_silences_only_the_named_deprecations():
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with run_output(out):
            logging.getLogger("experts.pool").info("expert %s ready", "a")
            logging.getLogger("musketeers.train").info("step 1/2")
            logging.getLogger("transformers.utils.generic").warning("`past_key_values`/`cache_params` are deprecated. Use `cache` instead.")
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` instead.",
                          FutureWarning)
            warnings.warn("`past_key_values` is deprecated and will be removed in version 6.0.0 for `LlamaForCausalLM.generate`. "
                          "Use `cache` instead.", FutureWarning)
            warnings.warn("`something_else` is deprecated", FutureWarning)  # not a known one: still shown
        logging.getLogger("musketeers.train").info("after the run")  # no longer printed
    lines = out.getvalue().splitlines()
    assert [re.sub(r"^\[ +\d+\.\d s\] ", "", line) for line in lines] == ["expert a ready", "step 1/2"]
    assert all(re.match(r"^\[ +0\.\d s\] ", line) for line in lines)
    assert [str(w.message) for w in caught] == ["`something_else` is deprecated"]
    assert not logging.getLogger("musketeers").handlers and not logging.getLogger("experts").handlers
