"""Tests of the rewards package: extraction, GSM8K normalisation and strict/flexible reading, Reasoning Gym
gold answers, answer guards, Reasoning Gym's secondary rewards (cosine, format, length) pinned against
their formulas, the recipe's combination, the TRL call form and a fuzz of every reward function."""

import decimal
import json
import pickle
import time
from pathlib import Path

import pytest
import reasoning_gym
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards import (
    SECONDARY_REWARDS,
    cosine_score,
    decode_entry,
    format_reward,
    gold_number,
    has_think_answer_format,
    length_score,
    make_reward_functions,
    normalize_number,
    predicted_number,
    reference_completion,
    score_completion,
    score_gsm8k,
    score_reward,
)
from rewards.answer_guard import is_safe_answer

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("arithmetic", "algorithmic", "logic")
ITEMS_PER_DATASET = {"zebra_puzzles": 2, "intermediate_integration": 3}  # slow generators


def family_datasets() -> list[tuple[str, dict]]:
    """(name, config) of every dataset of the three Reasoning Gym task configs."""
    specs = []
    for family in FAMILIES:
        task = yaml.safe_load((REPO / "configs/tasks" / f"{family}.yaml").read_text())["task"]
        specs += [(spec["name"], spec.get("config") or {}) for spec in task["datasets"]]
    return specs


def rg_row(item: dict) -> dict:
    """A data-module row for a Reasoning Gym item (the columns the rewards read)."""
    answer = "" if item["answer"] is None else str(item["answer"])
    task = item["metadata"]["source_dataset"]
    return {"answer": answer, "task": task, "entry": json.dumps(item, default=str)}


def rg_item(name: str, seed: int = 0, **config) -> tuple[dict, str]:
    """One Reasoning Gym item and its gold answer (propositional_logic: its example answer)."""
    item = reasoning_gym.create_dataset(name, seed=seed, size=1, **config)[0]
    gold = item["answer"] if item["answer"] is not None else item["metadata"]["example_answer"]
    return item, gold


def rg_score(completion: str, item: dict, prefill: str = "") -> float:
    row = rg_row(item)
    return score_completion(completion, row["answer"], row["task"], row["entry"], prefill)


def call(reward, completions, answer, task, entry, **kwargs) -> list[float]:
    """Call a reward function the way TRL does: prompts, completions and one list per column."""
    n = len(completions)
    return reward(prompts=["q"] * n, completions=completions, answer=[answer] * n, task=[task] * n,
                  entry=[entry] * n, **kwargs)  # fmt: skip


# --- answer extraction -------------------------------------------------------------------------


def test_last_answer_tag_is_scored():
    item, gold = rg_item("chain_sum")
    wrong = str(int(gold) + 1)
    assert rg_score(f"<answer>{wrong}</answer> no, <answer>{gold}</answer>", item) == 1.0
    assert rg_score(f"<answer>{gold}</answer> no, <answer>{wrong}</answer>", item) == 0.0
    assert score_gsm8k("<answer>18</answer> or <answer>19</answer>", "19") == 1.0


def test_missing_answer_tag_scores_zero():
    item, gold = rg_item("chain_sum")
    assert rg_score(gold, item) == 0.0
    assert rg_score(f"<answer>{gold}", item) == 0.0  # cut off before </answer>


def test_conversational_completions():
    item, gold = rg_item("chain_sum")
    row = rg_row(item)
    conversation = [
        {"role": "assistant", "content": "thinking"},
        {"role": "assistant", "content": f"<answer>{gold}</answer>"},
    ]
    assert call(score_reward, [conversation, []], row["answer"], row["task"], row["entry"]) == [1.0, 0.0]


def test_prefill_is_prepended():
    item, gold = rg_item("chain_sum")
    assert rg_score(f"{gold}</answer>", item, prefill="<answer>") == 1.0
    assert rg_score(f"{gold}</answer>", item) == 0.0
    (reward,), _ = make_reward_functions(prefill="<answer>")
    assert call(reward, ["18</answer>"], "#### 18", "gsm8k", "") == [1.0]


def test_entry_may_be_a_dict():
    item, gold = rg_item("chain_sum")
    assert score_completion(f"<answer>{gold}</answer>", gold, "chain_sum", item) == 1.0


BAD_ENTRIES = [
    "", "{not json", "[]", None, json.dumps({"question": "q"}), json.dumps({"metadata": {}}),
    json.dumps({"answer": "1", "metadata": {"source_dataset": "no_such_dataset"}}),
]  # fmt: skip


@pytest.mark.parametrize("entry", BAD_ENTRIES)
def test_bad_rows_score_zero(entry):
    assert score_completion("<answer>1</answer>", "1", "chain_sum", entry) == 0.0
    assert score_completion("<answer>1</answer>", None, "gsm8k", entry) == 0.0


def test_decode_entry():
    assert decode_entry("{not json") is None
    assert decode_entry(json.dumps({"metadata": {"source_dataset": "ab"}})) == {"metadata": {"source_dataset": "ab"}}


# --- GSM8K -------------------------------------------------------------------------------------

NORMALISATION = [
    ("1000", "1000"), ("1,000", "1000"), ("1 000", "1000"), ("$18.00", "18"), ("18.", "18"),
    ("2.50", "2.5"), ("-3", "-3"), ("-$3", "-3"), ("+4", "4"), ("0.5", "0.5"), (".5", "0.5"),
    ("0.50", "0.5"), ("007", "7"), ("-0.0", "0"), ("€5", "5"), ("£1,234.50", "1234.5"),
    (" 42 ", "42"), ("10", "10"), ("100", "100"), ("1.000", "1"),
    ("1/2", None), ("50%", None), ("1e3", None), ("18 dollars", None), ("", None), (".", None),
    ("1.2.3", None), ("--3", None), ("١٨", None), ("NaN", None), ("Infinity", None),
]  # fmt: skip


@pytest.mark.parametrize(("text", "canonical"), NORMALISATION)
def test_normalize_number(text, canonical):
    assert normalize_number(text) == canonical


def test_normalisation_compares_exact_decimals():
    assert normalize_number("0.1") != normalize_number("0.10000000000000001")
    assert normalize_number("12345678901234567890.5") == "12345678901234567890.5"
    assert score_gsm8k("<answer>10</answer>", "100") == 0.0
    assert score_gsm8k("<answer>$1,000.00</answer>", "#### 1000") == 1.0
    assert score_gsm8k("<answer>.5</answer>", "#### 0.5") == 1.0


def test_normalisation_ignores_the_decimal_context():
    # Generating decimal_arithmetic items sets the global decimal precision (to 6 by default).
    with decimal.localcontext(prec=3):
        assert normalize_number("12,345.6780") == "12345.678"
        assert score_gsm8k("<answer>12345.678</answer>", "#### 12345.679") == 0.0


PREDICTIONS = [  # (completion, strict prediction, flexible prediction)
    ("She makes 9 * 2 = $18 every day.", None, "18"), ("3 apples and 4 pears", None, "4"), ("15-3=12", None, "12"),
    ("it costs -5 dollars", None, "-5"), ("total: 1,234.5 dollars.", None, "1234.5"), ("x2 and y3", None, None),
    ("<answer>18</answer> then 19", "18", "19"), ("<answer>$1,000</answer>", "1000", "1000"),
    ("<answer>18 dollars</answer> 18", None, "18"), ("<answer>18 dollars</answer>", None, "18"),
    ("<answer>18", None, "18"), ("no numbers", None, None),
]  # fmt: skip


@pytest.mark.parametrize(("completion", "strict", "flexible"), PREDICTIONS)
def test_predicted_number(completion, strict, flexible):
    assert predicted_number(completion) == predicted_number(completion, "strict") == strict
    assert predicted_number(completion, "flexible") == flexible


def test_gsm8k_strict_scores_a_reply_cut_off_before_its_tag_0_flexible_reads_its_last_number():
    cut_off = "Natalia sold 48 clips in April and 48 / 2 = 24 in May, so 48 + 24 = 72"
    assert score_completion(cut_off, "#### 72", "gsm8k", "") == 0.0  # strict is the default
    assert score_completion(cut_off, "#### 72", "gsm8k", "", gsm8k_extraction="strict") == 0.0
    assert score_completion(cut_off, "#### 72", "gsm8k", "", gsm8k_extraction="flexible") == 1.0
    (strict,), _ = make_reward_functions()
    (flexible,), _ = make_reward_functions(gsm8k_extraction="flexible")
    assert call(strict, [cut_off], "#### 72", "gsm8k", "") == [0.0] and call(flexible, [cut_off], "#### 72", "gsm8k", "") == [1.0]
    # a prefilled "<answer>" makes the reply a tag: strict reads the whole completion as the answer
    assert score_completion("72", "#### 72", "gsm8k", "", "<answer>") == 1.0
    assert score_completion("72 clips", "#### 72", "gsm8k", "", "<answer>") == 0.0
    assert score_completion("72 clips", "#### 72", "gsm8k", "", "<answer>", "flexible") == 1.0
    with pytest.raises(ValueError, match="strict, flexible"):
        make_reward_functions(gsm8k_extraction="lenient")


def test_gold_number_takes_text_after_hashes_or_a_bare_number():
    assert gold_number("She sells 9 eggs.\n#### 18") == "18"
    assert gold_number("#### 1,000") == "1000"
    assert gold_number("18") == "18"
    assert gold_number("no number here") is None


def test_every_gsm8k_test_gold_scores_one(gsm8k_dir):
    lines = (gsm8k_dir / "test.jsonl").read_text().splitlines()
    assert len(lines) == 1319
    for line in lines:
        solution = json.loads(line)["answer"]
        number = solution.rpartition("####")[2].strip()
        assert score_completion(f"<answer>{number}</answer>", solution, "gsm8k", "") == 1.0, solution
        assert score_completion(f"<answer>{number}</answer>", number, "gsm8k", "") == 1.0, number
        assert score_completion(solution, solution, "gsm8k", "", gsm8k_extraction="flexible") == 1.0, solution  # its last number
        assert score_completion(solution, solution, "gsm8k", "") == 0.0, solution  # strict: no <answer> tag
        row = {"answer": solution, "task": "gsm8k", "entry": ""}
        assert score_completion(reference_completion(row, "<answer>"), solution, "gsm8k", "", "<answer>") == 1.0


# --- Reasoning Gym -----------------------------------------------------------------------------


def test_family_configs_list_the_26_datasets():
    assert len(family_datasets()) == 26


@pytest.mark.parametrize(("name", "config"), family_datasets(), ids=[name for name, _ in family_datasets()])
def test_gold_answers_score_one(name, config):
    for item in reasoning_gym.create_dataset(name, seed=7, size=ITEMS_PER_DATASET.get(name, 5), **config):
        gold = item["answer"] if item["answer"] is not None else item["metadata"]["example_answer"]
        assert rg_score(f"<think>...</think>\n<answer>{gold}</answer>", item) == 1.0, (name, gold)
        row = rg_row(item)
        assert rg_score(reference_completion(row, "<answer>"), item, prefill="<answer>") == 1.0, (name, gold)


# --- answer guards (score functions that eval the answer) --------------------------------------

HOSTILE = [
    "__import__('os')._exit(3)", "exit()", "input()", "9**9**9", "((9**99)**99)**99",
    "sin('__import__(\"os\")._exit(4)')", "[].__class__", "f'{1:>999999999}'",
    "2**" + "9" * 400, "2**(1/1" + "0" * 400 + ")**99999", "2**(99*99*99*99)", "(2**99)**(99*99)", "(x+1)**1000",
]  # fmt: skip


@pytest.mark.parametrize("name", ["binary_matrix", "intermediate_integration", "polynomial_multiplication"])
def test_hostile_answers_are_not_run(name, tmp_path):
    item, _ = rg_item(name)
    marker = tmp_path / "ran"
    for answer in [*HOSTILE, f"open({str(marker)!r}, 'w')"]:
        start = time.perf_counter()
        assert rg_score(f"<answer>{answer}</answer>", item) == 0.0
        assert time.perf_counter() - start < 2.0
        assert not is_safe_answer(name, answer)
    assert not marker.exists()


def test_guards_keep_partial_credit_and_equivalent_answers():
    item, gold = rg_item("binary_matrix", min_n=2, max_n=3)
    as_list = str([[int(x) for x in row.split()] for row in gold.splitlines()])
    assert rg_score(f"<answer>{as_list}</answer>", item) == pytest.approx(0.1)  # RG's credit for a list
    item, gold = rg_item("polynomial_multiplication")
    assert rg_score(f"<answer>{gold.replace(' ', '')}</answer>", item) == 1.0
    assert is_safe_answer("intermediate_integration", "-2*x**(3/2)/3 + exp(x)*sin(x) + C")
    assert is_safe_answer("polynomial_multiplication", "x**(1/1" + "0" * 400 + ")")  # a tiny exponent
    assert is_safe_answer("chain_sum", "__import__('os')")  # chain_sum never evals its answer


def test_sympy_guard_refuses_float_literals_with_huge_exponents():
    """A fuzzed completion once stalled polynomial_multiplication's parse_expr in a 16-million-digit rational."""
    item, _ = rg_item("polynomial_multiplication")
    for answer in ["-1588-Infinity-5.3322769085987224e+16248811-15", "x*1e400", "2e999999j", "1E-99999999", " 1e-3_000"]:
        start = time.perf_counter()
        assert not is_safe_answer("polynomial_multiplication", answer)
        assert rg_score(f"<answer>{answer}</answer>", item) == 0.0 and time.perf_counter() - start < 2.0
    assert is_safe_answer("polynomial_multiplication", "-9.478662616412181e+288*x + 1e308 - 2.5E-7 + 0x1e999")


# --- Reasoning Gym's secondary rewards --------------------------------------------------------

FORMATS = [
    ("<think>a</think><answer>b</answer>", True),
    ("<think>\nstep\n</think>\n<answer> 42 </answer>\n", True),
    ("  <think></think> <answer></answer>", True),
    ("<think>a</think><answer>b</answer> more", True),  # Reasoning Gym checks the start only
    ("<think>a</think>\n<answer>b</answer><|im_end|>", True),
    ("<think>a</think></think><answer>b</answer>", True),  # a stray closing tag is not counted
    ("<think>a<answer>x</answer></think><answer>b</answer>", False),  # two answer blocks
    ("<think>a<answer>x</think><answer>b</answer>", False),  # "<answer>" inside the think block
    ("<think>a</think><answer>b<think>c</answer>", False),  # "<think>" inside the answer block
    ("<answer>b</answer>", False),
    ("<think>a</think>", False),
    ("<think>a</think><answer>b", False),
    ("text <think>a</think><answer>b</answer>", False),
    ("<think>a</think> x <answer>b</answer>", False),
    ("<think>a</think><answer>b</answer><answer>c</answer>", False),
    ("<think>a<think>b</think><answer>c</answer>", False),
    ("<answer>b</answer><think>a</think>", False),
    ("<think>a</think><answer>b</answer><think>c</think>", False),
]


@pytest.mark.parametrize(("text", "expected"), FORMATS)
def test_format(text, expected):
    assert has_think_answer_format(text) is expected


def test_format_reads_prefill_and_completion_and_preappend_thinking_token_opens_the_think_block():
    completions = ["a</think><answer>b</answer>"]
    assert format_reward(prompts=["q"], completions=completions, prefill="<think>") == [1.0]
    assert format_reward(prompts=["q"], completions=completions) == [0.0]
    assert format_reward(prompts=["q"], completions=completions, preappend_thinking_token=True) == [1.0]
    assert format_reward(prompts=["q"], completions=completions, prefill="<think>", preappend_thinking_token=True) == [0.0]
    assert format_reward(prompts=["q"], completions=["<think>a</think><answer>b</answer>"], prefill="<answer>") == [0.0]


def test_cosine_and_length_terms_follow_reasoning_gyms_formulas():
    # cosine: correct 0.95 + 0.025 (1 + cos(pi L / 1000)), wrong 0.7 - 0.35 (1 + cos(pi L / 1000)); L not clamped
    assert cosine_score(0, True) == 1.0 and cosine_score(0, False) == 0.0
    assert cosine_score(500, True) == pytest.approx(0.975, abs=1e-15) and cosine_score(500, False) == pytest.approx(0.35, abs=1e-15)
    assert cosine_score(1000, True) == 0.95 and cosine_score(1000, False) == pytest.approx(0.7, abs=1e-15)
    assert cosine_score(250, False) == pytest.approx(0.7 - 0.35 * (1 + 2**-0.5), abs=1e-15)  # 0.10251262658470839
    assert cosine_score(2000, True) == 1.0 and cosine_score(2000, False) == pytest.approx(0.0, abs=1e-15)
    # length: (max_score - score) * p when not full, -p when full, p = min(L / max_output_length, 1)
    assert length_score(512, 0.0) == 0.5 and length_score(512, 0.25) == 0.375 and length_score(512, 1.0) == -0.5
    assert length_score(4096, 0.0) == 1.0 and length_score(4096, 1.0) == -1.0 and length_score(0, 1.0) == 0.0
    assert length_score(50, 0.5, max_score=0.5, max_output_length=100) == -0.5  # within 1e-6 of max_score: full
    assert length_score(50, 0.5 - 2e-6, max_score=0.5, max_output_length=100) == pytest.approx(1e-6)


GSM8K_ROW = {"answer": "Natalia sold 48 clips.\n#### 72", "task": "gsm8k", "entry": ""}
PINNED = [  # (hand-written completion, its length; score, cosine, format, length terms; total with 0.3 cosine + 0.2 format)
    ("<think>" + "a" * 466 + "</think><answer>72</answer>", 500, 1.0, 0.975, 1.0, -0.48828125, 1.4925),
    ("<think>" + "b" * 966 + "</think><answer>71</answer>", 1000, 0.0, 0.7, 1.0, 0.9765625, 0.41),
    ("c" * 250, 250, 0.0, 0.10251262658470839, 0.0, 0.244140625, 0.030753787975412516),
    ("<answer>72</answer>", 19, 1.0, 0.9999554766319553, 0.0, -0.0185546875, 1.2999866429895865),
    ("<think>" + "d" * 1966 + "</think><answer>72</answer>", 2000, 1.0, 1.0, 1.0, -1.0, 1.5),
]  # fmt: skip


def test_each_term_and_their_sum_on_hand_written_completions():
    secondary = [("cosine", 0.3, {}), ("format", 0.2, {"preappend_thinking_token": False}), ("length", 0.5, {})]
    functions, weights = make_reward_functions(True, secondary)
    assert [f.__name__ for f in functions] == ["score", "cosine", "format", "length"] and weights == [1.0, 0.3, 0.2, 0.5]
    completions = [c for c, *_ in PINNED]
    assert [len(c) for c in completions] == [p[1] for p in PINNED]
    terms = [call(f, completions, GSM8K_ROW["answer"], "gsm8k", "") for f in functions]
    for k, (_, _, *expected, _) in enumerate(PINNED):
        assert [t[k] for t in terms] == pytest.approx(expected, abs=1e-15), k
    recipe, recipe_weights = make_reward_functions(True, secondary[:2])  # the paper tasks' recipe: score + 0.3 cosine + 0.2 format
    totals = [sum(w * v for w, v in zip(recipe_weights, values)) for values in zip(*(call(f, completions, GSM8K_ROW["answer"],
                                                                                           "gsm8k", "") for f in recipe))]
    assert totals == pytest.approx([p[-1] for p in PINNED], abs=1e-15)


def test_without_use_accuracy_the_score_is_computed_but_weighted_0():
    functions, weights = make_reward_functions(False, [("format", 0.2, {})])
    assert [f.__name__ for f in functions] == ["score", "format"] and weights == [0.0, 0.2]


def test_prefill_is_read_by_score_and_format_but_not_counted_by_cosine_and_length():
    functions, _ = make_reward_functions(True, [("cosine", 0.3, {}), ("format", 0.2, {}), ("length", 1.0, {})], prefill="<think>")
    completion = "a" * 466 + "</think><answer>72</answer>"  # 493 characters generated after the prefill
    values = [call(f, [completion], GSM8K_ROW["answer"], "gsm8k", "")[0] for f in functions]
    assert values == pytest.approx([1.0, cosine_score(493, True), 1.0, -493 / 1024], abs=1e-15)


def test_score_logs_accuracy_the_share_of_completions_with_the_full_score():
    logged = []
    item, gold = rg_item("chain_sum")
    row = rg_row(item)
    completions = [f"<answer>{gold}</answer>", "<answer>-1</answer>", "no tag", f"<answer>{gold}</answer>"]
    scores = call(score_reward, completions, row["answer"], row["task"], row["entry"], log_metric=lambda *a: logged.append(a))
    assert scores == [1.0, 0.0, 0.0, 1.0] and logged == [("accuracy", 0.5)]


# --- factory and TRL call form -----------------------------------------------------------------


def test_factory_defaults_to_the_score_only_and_refuses_unknown_names_and_options():
    functions, weights = make_reward_functions()
    assert [f.__name__ for f in functions] == ["score"] and weights == [1.0]
    assert sorted(SECONDARY_REWARDS) == ["cosine", "format", "length"]
    with pytest.raises(ValueError, match="unknown secondary reward 'cosin'; valid: cosine, format, length"):
        make_reward_functions(secondary=[("cosin", 0.3, {})])
    with pytest.raises(ValueError, match="'cosine' has no option 'max_len'; its options: none"):
        make_reward_functions(secondary=[("cosine", 0.3, {"max_len": 10})])


def test_called_as_trl_calls_it():
    from trl.trainer.utils import get_callable_name

    item, gold = rg_item("chain_sum")
    functions, _ = make_reward_functions(secondary=[("cosine", 0.3, {}), ("format", 0.2, {}), ("length", 0.1, {})])
    assert [get_callable_name(f) for f in functions] == ["score", "cosine", "format", "length"]
    row = rg_row(item)
    columns = {"answer": [row["answer"], "#### 7"], "task": [row["task"], "gsm8k"], "entry": [row["entry"], ""]}
    extras = {"completion_ids": [[1], [2]], "trainer_state": None, "log_extra": None, "log_metric": lambda *a: None}
    completions = [f"<think>x</think><answer>{gold}</answer>", "so 7"]
    assert functions[0](prompts=["a", "b"], completions=completions, **columns, **extras) == [1.0, 0.0]
    assert functions[2](prompts=["a", "b"], completions=completions, **columns, **extras) == [1.0, 0.0]
    for function in functions:
        assert pickle.loads(pickle.dumps(function))(prompts=["a", "b"], completions=completions, **columns, **extras) == \
            function(prompts=["a", "b"], completions=completions, **columns, **extras)


# --- fuzz: no reward function raises, each returns a float in its range ------------------------

FRAGMENTS = st.sampled_from([
    "<answer>", "</answer>", "<think>", "</think>", "####", "$", ",", ".", "-", " ", "\n", "(",
    "1,000", "18.00", "é", "٣", "∞", "NaN", "1e309", "x**2", "[[1,0]]", "None", "\x00",
    "**", "*", "/", "9", "x", ")", "sin(", "'", "__import__", ".__class__",
])  # fmt: skip
NUMBERS = st.one_of(st.integers().map(str), st.floats().map(str), st.decimals().map(str))
PIECES = st.lists(st.one_of(FRAGMENTS, NUMBERS, st.text(max_size=8)), max_size=12).map("".join)
TEXTS = st.one_of(st.text(), PIECES, st.integers(0, 3000).map(lambda n: "a" * n))
COMPLETIONS = st.one_of(TEXTS, TEXTS.map(lambda text: [{"role": "assistant", "content": text}]))
FUZZ_DATASETS = ["chain_sum", "binary_matrix", "polynomial_multiplication", "propositional_logic", "jugs"]
FUZZ_ROWS = {
    "gsm8k": GSM8K_ROW,
    **{name: rg_row(rg_item(name)[0]) for name in FUZZ_DATASETS},
}
RANGES = {"score": (0.0, 1.0), "cosine": (0.0, 1.0), "format": (0.0, 1.0), "length": (-1.0, 1.0)}


@pytest.mark.parametrize("row_name", FUZZ_ROWS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(completion=COMPLETIONS, prefill=st.sampled_from(["", "<answer>", "<think>"]),
       extraction=st.sampled_from(["strict", "flexible"]), preappend=st.booleans())
def test_rewards_never_raise(row_name, completion, prefill, extraction, preappend):
    row = FUZZ_ROWS[row_name]
    secondary = [("cosine", 0.3, {}), ("format", 0.2, {"preappend_thinking_token": preappend}), ("length", 0.2, {})]
    functions, _ = make_reward_functions(True, secondary, prefill=prefill, gsm8k_extraction=extraction)
    for reward in functions:
        (value,) = call(reward, [completion], row["answer"], row["task"], row["entry"], log_metric=lambda *a: None)
        low, high = RANGES[reward.__name__]
        assert isinstance(value, float) and low <= value <= high, reward.__name__


def test_prefilled_answer_tag_makes_the_reply_the_answer():
    from rewards.functions import reply_text

    assert reply_text("7", "<answer>") == "<answer>7</answer>"
    assert reply_text("7</answer> done", "<answer>") == "<answer>7</answer> done"
    assert reply_text("7", "") == "7" and reply_text("7", "Sure: ") == "Sure: 7"
    row = {"answer": "10", "task": "gsm8k", "entry": ""}
    assert score_completion("10", row["answer"], "gsm8k", "", prefill="<answer>") == 1.0
