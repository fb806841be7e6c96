"""The command line: config show, data show/check, and one-line errors with exit code 2."""
from pathlib import Path

import pytest
import yaml

from musketeers.cli import main


def run(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        main(list(argv))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return info.value.code or 0, out, err


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "cache"))


def test_config_show_prints_resolved_yaml(capsys):
    code, out, _ = run(capsys, "config", "show", "logic", "team=naive", "seed=2", "training.max_steps=7")
    cfg = yaml.safe_load(out)
    assert code == 0 and cfg["seed"] == 2 and cfg["training"]["max_steps"] == 7
    assert cfg["team"]["name"] == "naive" and len(cfg["team"]["experts"]) == 4


def test_data_show_prints_prompt_gold_and_reward(capsys, gsm8k_dir):
    code, out, _ = run(capsys, "data", "show", "gsm8k", "--split", "test", "-n", "2",
                       f"task.path={gsm8k_dir}", "policy.model=random:llama")
    assert code == 0 and out.count("--- reward of the gold answer: 1.000") == 2
    assert "Janet" in out and "User: " in out  # random tokenizers have no chat template: plain layout
    code, out, _ = run(capsys, "data", "show", "arithmetic", "-n", "1", "task.train_size=5", "task.validation_size=5",
                       "policy.model=random:llama")
    assert code == 0 and "reward of the gold answer: 1.000" in out


def test_data_show_without_the_policy_tokenizer_shows_the_plain_prompt(capsys):
    """The default policy is a hub id, which HF_HUB_OFFLINE (conftest) keeps from loading."""
    code, out, err = run(capsys, "data", "show", "arithmetic", "-n", "1", "task.train_size=5", "task.validation_size=5")
    assert code == 0 and "reward of the gold answer: 1.000" in out
    assert "\nUser: " in out and "\nAssistant: " in out  # experts.prompt.chat_prompt's layout without a template
    [note] = [line for line in err.splitlines() if line.startswith("musketeers:")]  # besides the generation progress bar
    assert note.startswith("musketeers: note: cannot load model 'Qwen/Qwen2.5-3B-Instruct'") and "plain layout" in note


def test_data_check_small(capsys):
    code, out, _ = run(capsys, "data", "check", "algorithmic", "task.train_size=50", "task.validation_size=20")
    assert code == 0 and '"shared_questions": 0' in out


@pytest.mark.parametrize("argv,message", [
    (["config", "show", "arithmetc"], "musketeers: error: unknown task 'arithmetc'; did you mean 'arithmetic'?"),
    (["config", "show", "logic", "team=nave"], "musketeers: error: unknown team 'nave'; did you mean 'naive'?"),
    (["config", "show", "logic", "trainng.beta=1"], "musketeers: error: command line: trainng: unknown key; did you mean 'training'?"),
    (["data", "show", "logic", "-n", "0"], "musketeers: error: -n must be at least 1, got 0"),
    (["data", "show", "logic", "--split", "test", "policy.model=random:llama"],
     "musketeers: error: task 'logic' has no test split; Reasoning Gym families use: train, validation"),
    (["eval", "runs/x", "--samples", "0"], "musketeers: error: --samples must be an integer of at least 1, got 0"),
    (["eval", "runs/x", "--samples", "3", "--temperature", "-1"],
     "musketeers: error: --temperature must be a finite number of at least 0, got -1.0"),
    (["eval", "runs/x", "--samples", "3", "--top-p", "0"], "musketeers: error: --top-p must be in (0, 1], got 0.0"),
    (["eval", "runs/x", "--top-p", "0.9"],
     "musketeers: error: --temperature and --top-p set sampled evaluation: give --samples K with them"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and err.strip() == message


def test_data_check_gsm8k_offline_is_one_line_naming_task_path(capsys, monkeypatch):
    import datasets

    def offline(*args, **kwargs):  # what load_dataset raises without the hub, without touching the network
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    code, out, err = run(capsys, "data", "check", "gsm8k")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("musketeers: error: task.path: ") and "task.path=DIR" in err


def test_stray_arguments_are_rejected(capsys):
    code, _, err = run(capsys, "config", "show", "logic", "--frobnicate")
    assert code == 2 and "unrecognized arguments: --frobnicate" in err


def test_experts_precompute_needs_a_cache_dir_and_fills_it(capsys, tmp_path):
    task = str(Path(__file__).parents[1] / "fixtures" / "task_tiny.yaml")
    code, _, err = run(capsys, "experts", "precompute", task)
    assert code == 2 and err.strip() == ("musketeers: error: team.cache_dir: experts precompute fills the team's disk "
                                         "cache; set team.cache_dir=DIR")
    code, out, _ = run(capsys, "experts", "precompute", task, f"team.cache_dir={tmp_path}", "--batch-size", "32")
    stats = yaml.safe_load(out)
    assert code == 0 and stats["models_loaded"] == 3 and stats["llama-48"]["forwards"] == stats["llama-48"]["cached"] > 0
    code, out, _ = run(capsys, "experts", "precompute", task, f"team.cache_dir={tmp_path}")
    assert code == 0 and yaml.safe_load(out)["models_loaded"] == 0  # everything on disk: no expert loads


def test_train_without_a_task_takes_overrides_for_the_demo(monkeypatch):
    import musketeers.train

    seen = []
    monkeypatch.setattr(musketeers.train, "train", lambda cfg: seen.append(cfg))
    main(["train", "training.max_steps=3", "seed=2"])
    assert seen[0].task.name == "demo" and seen[0].training.max_steps == 3 and seen[0].seed == 2
