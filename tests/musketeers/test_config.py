"""The config loader: composition, defaults from the paper, and one-line errors for bad input."""

from pathlib import Path

import pytest

from musketeers.config import CONFIG_DIR, ConfigError, load_run_config, trackers

def test_paper_defaults_are_explicit():
    cfg = load_run_config("arithmetic")
    t = cfg.training
    assert (t.num_generations, t.beta, t.loss_type) == (8, 0.04, "grpo")
    assert (t.learning_rate, t.router_lr, t.adam_epsilon, t.weight_decay, t.max_grad_norm) == (1e-4, 1e-4, 1e-6, 0.01, 1.0)
    assert (t.prompts_per_batch, t.gradient_accumulation_steps, t.max_completion_length, t.max_steps) == (4, 8, 128, 500)
    assert cfg.policy.lora.rank == 8 and cfg.policy.model == "Qwen/Qwen2.5-3B-Instruct"
    assert (cfg.adapter.latent_dim, cfg.adapter.num_queries, cfg.adapter.num_heads) == (512, 8, 8)
    assert cfg.method == "perceiver" and cfg.team.name == "default"
    assert (cfg.task.train_size, cfg.task.validation_size, cfg.task.system_prompt) == (16000, 4000, "DeepSeekZero")
    assert cfg.task.curriculum.enabled is False
    assert load_run_config("gsm8k").training.max_steps == 233
    assert all(load_run_config(task).training.eval_every == 0 for task in ("arithmetic", "algorithmic", "logic", "gsm8k"))
    assert (load_run_config("demo").training.eval_every, load_run_config("demo").training.eval_size) == (10, 64)


RG_RECIPE = [("cosine", 0.3, {}), ("format", 0.2, {"preappend_thinking_token": False})]


def reward_recipe(cfg) -> tuple[bool, list, str]:
    r = cfg.reward
    return r.use_accuracy, [(s.name, s.scaling, s.options()) for s in r.secondary], r.gsm8k_extraction


def test_paper_tasks_use_reasoning_gyms_reward_recipe_base_and_demo_the_score_alone():
    for task in ("arithmetic", "algorithmic", "logic", "gsm8k"):
        assert reward_recipe(load_run_config(task)) == (True, RG_RECIPE, "strict"), task
    assert reward_recipe(load_run_config("demo")) == (True, [], "strict")
    tiny = str(Path(__file__).parents[1] / "fixtures" / "task_tiny.yaml")  # no reward section: base.yaml's
    assert reward_recipe(load_run_config(tiny)) == (True, [], "strict")
    override = load_run_config("arithmetic", ["reward.secondary=[{name: length, scaling: 0.2, max_output_length: 2048}]",
                                              "reward.gsm8k_extraction=flexible"])
    assert reward_recipe(override) == (True, [("length", 0.2, {"max_output_length": 2048})], "flexible")


def test_a_config_yaml_written_before_reward_secondary_is_read(tmp_path):
    import yaml

    from musketeers.config import load_resolved_config

    data = load_run_config("arithmetic").to_dict()
    for weight, secondary in ((0.0, []), (0.25, [("format", 0.25, {})])):
        data["reward"] = {"format_weight": weight}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
        assert reward_recipe(load_resolved_config(tmp_path / "config.yaml")) == (True, secondary, "strict")


@pytest.mark.parametrize("family,names", [
    ("arithmetic", ["complex_arithmetic", "intermediate_integration", "polynomial_equations", "polynomial_multiplication",
                    "simple_geometry", "bitwise_arithmetic", "chain_sum", "decimal_arithmetic", "decimal_chain_sum"]),
    ("algorithmic", ["ab", "base_conversion", "binary_alternation", "binary_matrix", "caesar_cipher", "cryptarithm",
                     "isomorphic_strings", "jugs", "rotate_matrix", "string_manipulation"]),
    ("logic", ["aiw", "circuit_logic", "knights_knaves", "propositional_logic", "self_reference", "syllogism", "zebra_puzzles"]),
])
def test_task_families_match_the_paper(family, names):
    task = load_run_config(family).task
    assert [d.name for d in task.datasets] == names
    configs = {d.name: d.config for d in task.datasets}
    if family == "algorithmic":
        assert configs["binary_alternation"] == {"p_solvable": 0.9}
        assert configs["binary_matrix"] == {"min_n": 2, "max_n": 6}
        assert configs["caesar_cipher"] == {"max_words": 10}
        assert configs["isomorphic_strings"] == {"max_string_length": 8}
        assert configs["jugs"] == {"difficulty": 6}
        assert configs["rotate_matrix"] == {"min_n": 2, "max_n": 6}
        assert configs["string_manipulation"] == {"max_string_length": 15, "max_num_rules": 6}
    else:
        assert all(c == {} for c in configs.values())


@pytest.mark.parametrize("team,n", [("default", 3), ("generalist", 5), ("naive", 4), ("llm", 3), ("embedded", 3)])
def test_every_team_resolves(team, n):
    cfg = load_run_config("arithmetic", [f"team={team}"])
    assert cfg.team.name == team and len(cfg.team.experts) == n


def test_overrides_compose_and_coerce():
    cfg = load_run_config("logic", ["team=naive", "method=hard_routing", "seed=3", "training.learning_rate=1e-5",
                                    "team.pooling=first_token", "policy.lora.target_modules=[q_proj, v_proj]"])
    assert (cfg.team.name, cfg.method, cfg.seed, cfg.training.learning_rate) == ("naive", "hard_routing", 3, 1e-5)
    assert cfg.team.pooling == "first_token" and cfg.policy.lora.target_modules == ["q_proj", "v_proj"]


def test_task_and_team_by_path(tmp_path):
    task = tmp_path / "mine.yaml"
    task.write_text("task:\n  name: mine\n  datasets:\n    - {name: chain_sum, config: {max_terms: 2}}\n")
    cfg = load_run_config(str(task), [f"team={CONFIG_DIR / 'teams' / 'embedded.yaml'}"])
    assert cfg.task.name == "mine" and cfg.team.name == "embedded"
    assert cfg.adapter.router_encoder == "embedded:minilm-l6-v2"  # team files may set other sections


def test_team_file_wins_over_base_and_cli_wins_over_team():
    cfg = load_run_config("arithmetic", ["team=embedded", "adapter.router_encoder=random:llama"])
    assert cfg.adapter.router_encoder == "random:llama"


def _error(task, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_run_config(task, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


BAD = [
    ("arithmetc", [], "unknown task 'arithmetc'; did you mean 'arithmetic'?"),
    ("arithmetic", ["team=nave"], "unknown team 'nave'; did you mean 'naive'?"),
    ("arithmetic", ["method=percever"], "command line: method: 'percever' is not valid; did you mean 'perceiver'?"),
    ("arithmetic", ["training.learning_rte=1e-4"], "command line: training.learning_rte: unknown key; did you mean 'training.learning_rate'?"),
    ("arithmetic", ["training.max_steps=abc"], "command line: training.max_steps: expected an integer, got 'abc'"),
    ("arithmetic", ["training.beta=-1"], "command line: training.beta: must not be negative, got -1.0"),
    ("arithmetic", ["task.datasets=[{name: chain_summ}]"], "command line: task.datasets[0].name: unknown Reasoning Gym dataset 'chain_summ'; did you mean 'chain_sum'?"),
    ("arithmetic", ["task.datasets=[{name: jugs, config: {difficulty2: 3}}]"], "command line: task.datasets[0].config: jugs has no option 'difficulty2'; did you mean 'difficulty'?"),
    ("arithmetic", ["adapter.latent_dim=100"], "command line: adapter.latent_dim: must be a multiple of 2 x num_heads (16), got 100"),
    ("arithmetic", ["team.pooling=last"], "command line: team.pooling: 'last' is not valid; did you mean 'last_token'?"),
    ("arithmetic", ["task.system_prompt=DeepSeekZer0"], "command line: task.system_prompt: unknown prompt 'DeepSeekZer0'; did you mean 'DeepSeekZero'?"),
    ("arithmetic", ["training.num_generations=1"], "command line: training.num_generations: GRPO needs groups of at least 2 completions"),
    ("arithmetic", ["foo"], "command line: 'foo': overrides are written key=value, e.g. training.max_steps=10"),
    ("arithmetic", ["policy.lora.rank=true"], "command line: policy.lora.rank: expected an integer, got True"),
    ("arithmetic", ["task.curriculum.enabled=true"], "command line: task.curriculum.enabled: curricula are not supported; the paper trains without one (set false)"),
    ("arithmetic", ["training.lr_scheduler_type=cosin"], "command line: training.lr_scheduler_type: unknown scheduler 'cosin'; did you mean 'cosine'?"),
    ("arithmetic", ["training.warmup_steps=20"], "command line: training.warmup_steps: 20 is ignored by lr_scheduler_type 'constant'; "
     "for a warmup then a constant rate set training.lr_scheduler_type=constant_with_warmup"),
    ("arithmetic", ["policy.dtype=fp32"], "command line: policy.dtype: 'fp32' is not valid; did you mean 'float32'?"),
    ("arithmetic", ["policy.dtype=int8"], "command line: policy.dtype: 'int8' is not valid; valid: float32, bfloat16, float16, auto"),
    ("arithmetic", ["training.eval_every=-1"], "command line: training.eval_every: must not be negative, got -1"),
    ("arithmetic", ["training.out_proj_lr_scale=0"], "command line: training.out_proj_lr_scale: must be positive, got 0.0"),
    ("arithmetic", ["training.eval_every=5", "training.eval_size=0"], "command line: training.eval_size: must be at least 1, got 0"),
    ("arithmetic", ["training.eval_every=5", "training.eval_size=100", "task.validation_size=50"],
     "command line: training.eval_size: reads the first eval_size validation items, but task.validation_size is 50"),
    ("arithmetic", ["training.report_to=wandbb"],
     "command line: training.report_to: unknown tracker 'wandbb'; valid: tensorboard, wandb, none (several comma-separated, e.g. tensorboard,wandb)"),
    ("arithmetic", ["training.report_to=none,tensorboard"],
     "command line: training.report_to: 'none' cannot be combined with a tracker, got 'none,tensorboard'"),
    ("arithmetic", ["reward.secondary=[{name: cosin}]"],
     "command line: reward.secondary[0].name: unknown secondary reward 'cosin'; valid: cosine, format, length"),
    ("arithmetic", ["reward.secondary=[{name: cosine, preappend_thinking_token: true}]"],
     "command line: reward.secondary[0].preappend_thinking_token: cosine has no such option; its options: none"),
    ("arithmetic", ["reward.secondary=[{name: format, max_output_length: 10}]"],
     "command line: reward.secondary[0].max_output_length: format has no such option; its options: preappend_thinking_token"),
    ("arithmetic", ["reward.secondary=[{name: length, max_output_length: 0}]"],
     "command line: reward.secondary[0].max_output_length: must be at least 1, got 0"),
    ("arithmetic", ["reward.secondary=[{name: length, max_score: 2}]"],
     "command line: reward.secondary[0].max_score: must be in (0, 1] (scores are), got 2.0"),
    ("arithmetic", ["reward.secondary=[{name: cosine, scaling: .inf}]"],
     "command line: reward.secondary[0].scaling: must be a finite number, got inf"),
    ("arithmetic", ["reward.secondary=[{name: cosine}, {name: cosine, scaling: 0.1}]"],
     "command line: reward.secondary[1].name: 'cosine' is listed twice; give each secondary reward once"),
    ("arithmetic", ["reward.secondary=[{scaling: 0.3}]"], "command line: reward.secondary[0]: missing required key 'name'"),
    ("arithmetic", ["reward.secondary=[{name: cosine, scaling_factor: 0.3}]"],
     "command line: reward.secondary[0].scaling_factor: unknown key; did you mean 'reward.secondary[0].scaling'?"),
    ("arithmetic", ["reward.use_accuracy=false", "reward.secondary=[]"],
     "command line: reward.use_accuracy: false with no reward.secondary leaves nothing to train on"),
    ("arithmetic", ["reward.gsm8k_extraction=last"],
     "command line: reward.gsm8k_extraction: 'last' is not valid; valid: strict, flexible"),
    ("arithmetic", ["task.assistant_prefill=<think>", "reward.secondary=[{name: format, preappend_thinking_token: true}]"],
     "command line: reward.secondary[0].preappend_thinking_token: task.assistant_prefill already opens with <think>, which the "
     "format check reads; prepending another would fail every reply (set false)"),
]


@pytest.mark.parametrize("task,overrides,expected", BAD)
def test_bad_config_messages(task, overrides, expected):
    assert _error(task, overrides) == expected


def test_report_to_wandb_without_wandb_installed_says_how_to_install_it(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    assert _error("arithmetic", ["training.report_to=tensorboard,wandb"]) == \
        "command line: training.report_to: wandb is not installed: pip install 'musketeers[wandb]' (or wandb)"
    assert trackers("tensorboard, wandb") == ["tensorboard", "wandb"] and trackers("none") == []


def test_errors_name_the_file(tmp_path):
    task = tmp_path / "bad.yaml"
    task.write_text("task:\n  name: bad\n  datasets: [{name: chain_sum}]\ntraining:\n  max_step: 3\n")
    assert _error(str(task)) == f"{task}: training.max_step: unknown key; did you mean 'training.max_steps'?"
    task.write_text("task:\n  name: bad\n  datasets: [{name: chain_sum, wieght: 2}]\n")
    assert _error(str(task)) == f"{task}: task.datasets[0].wieght: unknown key; did you mean 'task.datasets[0].weight'?"
    task.write_text("task:\n  name: bad\n  datasets: [{name: chain_sum}\n")
    assert _error(str(task)).startswith(f"{task}: not valid YAML (line 4)")
    task.write_text("task:\n  name: bad\n  datasets: [{name: no_such_set}]\n")
    assert _error(str(task)) == f"{task}: task.datasets[0].name: unknown Reasoning Gym dataset 'no_such_set'"
    team = tmp_path / "team.yaml"
    team.write_text("team:\n  name: t\n  experts:\n    - {name: a}\n")
    assert _error("arithmetic", [f"team={team}"]) == f"{team}: team.experts[0]: missing required key 'model'"
    team.write_text("team:\n  name: t\n  experts:\n    - {name: a, model: 'random:lama'}\n")
    assert _error("arithmetic", [f"team={team}"]).startswith(f"{team}: team.experts[0].model: ")
    assert _error(str(tmp_path / "missing.yaml")) == f"task file '{tmp_path / 'missing.yaml'}' does not exist"


def test_yaml_is_loaded_safely(tmp_path):
    task = tmp_path / "evil.yaml"
    task.write_text("task: !!python/object/apply:os.system ['echo pwned']\n")
    assert "not valid YAML" in _error(str(task))
