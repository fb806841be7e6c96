"""Task data: cached splits, disjointness by construction, GSM8K loading, the one prompt builder."""
import json

import pytest

from musketeers.config import ConfigError, load_run_config
from musketeers.data import build_prompt, disjointness_report, load_split, question_key


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "cache"))


def small_task(family, train=120, validation=60, *extra):
    return load_run_config(family, [f"task.train_size={train}", f"task.validation_size={validation}", *extra]).task


def test_reasoning_gym_seeds_overlap_so_a_second_seed_is_not_a_held_out_set():
    """Reasoning Gym derives item idx of seed s from Random(s + idx): seed s+1 is seed s shifted by one."""
    import reasoning_gym

    a = reasoning_gym.create_dataset("chain_sum", seed=5, size=10)
    b = reasoning_gym.create_dataset("chain_sum", seed=6, size=10)
    assert [a[i + 1]["question"] for i in range(5)] == [b[i]["question"] for i in range(5)]


@pytest.mark.parametrize("family,train,validation", [("arithmetic", 300, 100), ("algorithmic", 300, 100), ("logic", 120, 40)])
def test_families_are_disjoint_on_small_sizes(family, train, validation):
    report = disjointness_report(small_task(family, train, validation))
    assert report["shared_questions"] == 0 and report["disjoint"]
    assert (report["train"], report["validation"]) == (train, validation)


def test_small_problem_space_collisions_are_excluded_from_training():
    """Two one-digit terms: few distinct questions, so naive splits would share many."""
    task = small_task("arithmetic", 150, 40, "task.datasets=[{name: chain_sum, config: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}]")
    train, validation = load_split(task, "train"), load_split(task, "validation")
    held = {question_key(r["question"]) for r in validation}
    assert train.relocated > 0  # positions whose first candidate was a validation question: the probe path ran
    assert all(question_key(train[k]["question"]) not in held for k in range(len(train)))
    assert len({r["question"] for r in train}) < len(train)  # training may repeat a question, never a held-out one


def test_rows_are_deterministic_and_carry_reward_columns():
    task = small_task("algorithmic")
    train = load_split(task, "train")
    assert len(train) == 120
    row = train[7]
    assert set(row) == {"question", "answer", "task", "entry"}
    entry = json.loads(row["entry"])
    assert entry["question"] == row["question"] and entry["metadata"]["source_dataset"] == row["task"]
    assert load_split(task, "train")[7] == row
    with pytest.raises(IndexError):
        train[120]


def test_gsm8k_local_path(gsm8k_dir):
    task = load_run_config("gsm8k", [f"task.path={gsm8k_dir}"]).task
    train, test = load_split(task, "train"), load_split(task, "test")
    assert (len(train), len(test)) == (7473, 1319)
    assert train[0]["task"] == "gsm8k" and train[0]["answer"].endswith("#### 72")
    assert load_split(task, "validation") == test  # GSM8K's held-out set is the official test split
    report = disjointness_report(task)
    assert report["shared_questions"] == 0 and report["test"] == 1319


def hub_unreachable(monkeypatch):
    """datasets.load_dataset as it fails without the hub (the message of datasets 4 offline); no network."""
    import datasets

    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


def test_gsm8k_without_a_path_or_the_hub_fails_in_one_line_naming_task_path(monkeypatch):
    hub_unreachable(monkeypatch)
    with pytest.raises(ConfigError) as info:
        load_split(load_run_config("gsm8k").task, "test")
    message = str(info.value)
    assert "\n" not in message and message.startswith("task.path: ")
    assert "openai/gsm8k" in message and "LocalEntryNotFoundError" in message and "task.path=data/gsm8k" in message


def test_bad_splits_and_paths(tmp_path):
    with pytest.raises(ConfigError, match="task 'arithmetic' has no test split"):
        load_split(small_task("arithmetic"), "test")
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        load_split(small_task("arithmetic"), "dev")
    task = load_run_config("gsm8k", [f"task.path={tmp_path}"]).task
    with pytest.raises(ConfigError, match="no test.jsonl in"):
        load_split(task, "test")


class PlainTokenizer:
    chat_template = None


class ChatTokenizer:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_prompt_builder_uses_chat_template_or_plain_layout():
    from reasoning_gym.utils import SYSTEM_PROMPTS

    task = small_task("arithmetic")
    assert build_prompt("2+2?", ChatTokenizer(), task) == f"<system>{SYSTEM_PROMPTS['DeepSeekZero']}<user>2+2?<assistant>"
    plain = build_prompt("2+2?", PlainTokenizer(), task)
    assert plain.startswith(SYSTEM_PROMPTS["DeepSeekZero"].rstrip()) and plain.endswith("User: 2+2?\nAssistant: ")
    task = small_task("arithmetic", 10, 10, "task.system_prompt_text=Answer only.", "task.assistant_prefill=<answer>")
    assert build_prompt("2+2?", ChatTokenizer(), task) == "<system>Answer only.<user>2+2?<assistant><answer>"
    task = small_task("arithmetic", 10, 10, "task.system_prompt=none")
    assert build_prompt("2+2?", PlainTokenizer(), task) == "User: 2+2?\nAssistant: "


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_expert_hints_are_a_block_before_the_question_in_the_user_turn():
    """Output-level collaboration: the "[Expert Hints]" block prefixes the question inside the user turn
    of the rendered chat template; the system prompt and the assistant prefill stay where they were."""
    from experts.synthetic import synthetic_tokenizer

    tokenizer = synthetic_tokenizer("bytes")
    tokenizer.chat_template = CHATML
    task = small_task("arithmetic", 10, 10, "task.system_prompt_text=Answer only.", "task.assistant_prefill=<answer>")
    hints = [("math", "try 4"), ("coder", "print(2+2)\n4")]
    assert build_prompt("2+2?", tokenizer, task, hints) == (
        "<|im_start|>system\nAnswer only.<|im_end|>\n"
        "<|im_start|>user\n[Expert Hints]\nmath: try 4\ncoder: print(2+2)\n4\n\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<answer>")
    assert build_prompt("2+2?", tokenizer, task) == (
        "<|im_start|>system\nAnswer only.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<answer>")
    plain = build_prompt("2+2?", PlainTokenizer(), task, hints)
    assert plain.endswith("User: [Expert Hints]\nmath: try 4\ncoder: print(2+2)\n4\n\n2+2?\nAssistant: <answer>")
