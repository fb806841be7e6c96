"""The paper's experiments as sweep files (configs/sweeps/): each plans the runs the paper implies, they share
one store where Table 1's runs serve the other sweeps, and an embedded version of each (the same sweep file,
its tasks and teams swapped for tiny random ones of the same names, at most 2 tasks, 2 seeds, 2 steps,
trained in this process) gives the figure or table `musketeers report` renders."""
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from experts.config import POOLINGS
from musketeers.config import load_run_config
from musketeers.evaluate import evaluate
from musketeers import sweep
from musketeers.report import report
from musketeers.train import train

REPO = Path(__file__).resolve().parents[2]
SWEEPS = REPO / "configs" / "sweeps"
FIXTURES = REPO / "tests" / "fixtures"
SEEDS = [0, 1, 2]  # the paper's 3 seeds
TINY = ["training.max_steps=2", "training.save_steps=2", "training.gradient_accumulation_steps=1"]
TASKS = ("algorithmic", "arithmetic", "logic", "gsm8k")
PAPER_SWEEPS = ("table1", "fig4_utilisation", "fig5_without_context", "fig6_num_queries", "table2_pooling")


@lru_cache(maxsize=None)
def paper_plan(name: str) -> tuple[dict, list]:
    data = sweep.read_sweep(SWEEPS / f"{name}.yaml")
    return data, sweep.plan(data, f"{name}.yaml")


def get(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


# ----------------------------------------------------------------------------- the paper's plans


def test_fig4_plans_three_teams_on_the_four_task_families():
    data, jobs = paper_plan("fig4_utilisation")
    assert sorted(j.name for j in jobs) == sorted(f"{task}-perceiver-{team}-seed{s}" for task in TASKS
                                                  for team in ("default", "llm", "naive") for s in SEEDS)
    experts = {j.config["team"]["name"]: [e["model"] for e in j.config["team"]["experts"]] for j in jobs}
    assert len(experts["default"]) == 3 and len(experts["naive"]) == 4 and "openai/gpt-oss-20b" in experts["llm"]
    assert experts["naive"][1:] == experts["default"] and "gpt2" in experts["naive"][0]
    assert all(j.config["training"]["max_steps"] == (233 if j.config["task"]["name"] == "gsm8k" else 500) for j in jobs)
    assert data.get("eval") is None  # the figure is the training dynamics


def test_cpu_table1_plans_the_five_methods_on_the_demo_as_docs_table1_cpu_says():
    data, jobs = paper_plan("cpu_table1")
    methods = ("single", "hard_routing", "text_hints", "ffn", "perceiver")
    assert sorted(j.name for j in jobs) == sorted(f"demo-{m}-{'none' if m == 'single' else 'embedded'}-seed{s}"
                                                  for m in methods for s in SEEDS)
    for job in jobs:
        training = job.config["training"]
        assert (training["max_steps"], training["max_completion_length"], training["learning_rate"]) == (60, 2, 1e-3)
        assert job.config["adapter"]["hint_max_tokens"] == 16 and training["no_context_reward_every"] == 10
        assert (job.config["adapter"]["state_norm"], job.config["adapter"]["init_scale"]) == ("none", "torch")
    assert data["eval"]["limit"] == 500 and data["resources"]["num_cpus"] == 2


def test_fig5_plans_logic_and_arithmetic_with_the_reward_without_c_logged():
    data, jobs = paper_plan("fig5_without_context")
    assert sorted(j.name for j in jobs) == sorted(f"{task}-perceiver-default-seed{s}-no_context_reward_every10"
                                                  for task in ("logic", "arithmetic") for s in SEEDS)
    assert {j.config["training"]["no_context_reward_every"] for j in jobs} == {10}
    assert all(j.config["training"]["max_steps"] == 500 for j in jobs)


def test_fig6_plans_m_from_2_to_128():
    data, jobs = paper_plan("fig6_num_queries")
    ms = [2 ** k for k in range(1, 8)]
    assert sorted(j.name for j in jobs) == sorted(f"arithmetic-perceiver-default-seed{s}-num_queries{m}" for m in ms for s in SEEDS)
    assert sorted({j.config["adapter"]["num_queries"] for j in jobs}) == ms
    assert data["eval"] is not None  # the figure is held-out accuracy


def test_table2_plans_the_four_poolings_beside_the_default():
    data, jobs = paper_plan("table2_pooling")
    assert sorted(j.name for j in jobs) == sorted(f"arithmetic-perceiver-default-seed{s}-pooling{p}" for p in POOLINGS for s in SEEDS)
    assert {j.config["team"]["pooling"] for j in jobs} == set(POOLINGS) and len(POOLINGS) == 5
    assert data["eval"] is not None


def test_the_paper_sweeps_share_one_store_where_table1_runs_serve_the_others():
    """Figure 4's default team, Figure 6's m = 8 and Table 2's last_token are Table 1 runs: reused, not trained
    again; Figure 5 logs the reward without C (an extra sampling pass), so its runs are its own. A name two
    sweeps plan is one run in both (else the second sweep would refuse it as a conflict)."""
    plans = {name: paper_plan(name) for name in PAPER_SWEEPS}
    assert {data["output_dir"] for data, _ in plans.values()} == {"runs/paper"}
    table1 = {j.identity for j in plans["table1"][1]}
    reused = {name: sum(j.identity in table1 for j in jobs) for name, (_, jobs) in plans.items() if name != "table1"}
    assert reused == {"fig4_utilisation": 12, "fig5_without_context": 0, "fig6_num_queries": 3, "table2_pooling": 3}
    assert all(j.config["team"]["name"] == "default" and j.config["adapter"]["num_queries"] == 8
               and j.config["team"]["pooling"] == "last_token" for name, (_, jobs) in plans.items() if name != "table1"
               for j in jobs if j.identity in table1)
    identities = {}
    for _, jobs in plans.values():
        for job in jobs:
            assert identities.setdefault(job.name, job.identity) == job.identity, job.name


# ----------------------------------------------------------------------------- embedded versions

def tiny_teams() -> dict[str, list[dict]]:
    """The paper's teams, tiny: llm swaps the last expert for another, naive adds a GPT-2 in front."""
    default = yaml.safe_load((FIXTURES / "team_tiny.yaml").read_text())["team"]["experts"]
    other = {"name": "qwen2-96", "model": "random:qwen2:hidden_size=96,tokenizer=bytes,seed=2", "dtype": "float32", "device": "cpu"}
    gpt2 = {"name": "gpt2-32", "model": "random:gpt2:hidden_size=32,tokenizer=chars,seed=3", "dtype": "float32", "device": "cpu"}
    return {"default": default, "llm": [*default[:-1], other], "naive": [gpt2, *default]}


def embedded_sweep(data: dict, root: Path) -> dict:
    """The sweep file with its tasks and teams swapped for tiny ones of the same names (files under root),
    its first 2 tasks, 2 seeds, m in {2, 4, 8}, 2 steps."""
    team_file = yaml.safe_load((FIXTURES / "team_tiny.yaml").read_text())
    task_file = yaml.safe_load((FIXTURES / "task_tiny.yaml").read_text())
    (root / "teams").mkdir(parents=True)
    (root / "tasks").mkdir()
    teams = {}
    for name, experts in tiny_teams().items():
        teams[name] = root / "teams" / f"{name}.yaml"
        teams[name].write_text(yaml.safe_dump({**team_file, "team": {**team_file["team"], "name": name, "experts": experts}}))
    tasks = {}
    for name in data["tasks"][:2]:
        tasks[name] = root / "tasks" / f"{name}.yaml"
        tasks[name].write_text(yaml.safe_dump({**task_file, "task": {**task_file["task"], "name": name}, "team": str(teams["default"])}))
    overrides = [*data.get("overrides", []), *TINY]
    return {**data, "output_dir": str(root / "runs"), "tasks": [str(tasks[t]) for t in tasks],
            "teams": [str(teams[t]) for t in data.get("teams", ["default"])], "seeds": data["seeds"][:2],
            "overrides": overrides, "vary": {k: v[:3] if k == "adapter.num_queries" else v for k, v in (data.get("vary") or {}).items()}}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """name -> (report markdown, report folder, run names): each paper sweep's embedded version, trained once."""
    done = {}

    def run(name: str):
        if name not in done:
            data, paper_jobs = paper_plan(name)
            root = tmp_path_factory.mktemp(name)
            small = embedded_sweep(data, root)
            jobs = sweep.plan(small, f"embedded {name}")
            # the same runs as the paper's plan, fewer: the same names for the kept seeds and values
            kept = [j.name for j in paper_jobs if j.config["seed"] in small["seeds"]
                    and j.config["task"]["name"] in data["tasks"][:2]
                    and all(get(j.config, k) in v for k, v in small["vary"].items())]
            assert sorted(j.name for j in jobs) == sorted(kept)
            for job in jobs:
                train(load_run_config(job.task, job.overrides), run_dir=job.run_dir)
                if data.get("eval") is not None:
                    evaluate(job.run_dir, limit=2, batch_size=2, progress=False)
            out = root / "report"
            done[name] = report([small["output_dir"]], out), out, [j.name for j in jobs]
        return done[name]

    return run


def section(markdown: str, heading: str) -> str:
    text = markdown[markdown.index(heading):]
    return text[:text.find("\n## ", 1)]


def rows(markdown: str, heading: str) -> list[list[str]]:
    """The table rows (cells) of the section whose heading contains `heading`."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in section(markdown, heading).splitlines()
            if line.startswith("| ") and not line.startswith(("| method | ", "| --- "))]


def test_fig4_embedded_report_shows_utilisation_per_task_and_team(embedded):
    text, out, names = embedded("fig4_utilisation")
    tasks = ["algorithmic", "arithmetic"]  # the embedded version's first two of the four families
    assert len(names) == 2 * 3 * 2
    for task in tasks:
        for plot in (f"utilisation-{task}.png", f"utilisation_change-{task}.png"):
            assert (out / plot).stat().st_size > 10_000 and f"({plot})" in text
    table = rows(text, "## Expert utilisation")
    experts = {(team, task): [r[2] for r in table if r[0] == f"perceiver ({team})" and r[1] == task]
               for team in ("default", "llm", "naive") for task in tasks}
    assert experts == {(team, task): [e["name"] for e in members] for team, members in tiny_teams().items() for task in tasks}
    assert all(r[3] == "utilisation" and "±" in r[4] for r in table)  # 2 seeds: mean ± std


def test_fig5_embedded_report_shows_the_score_with_and_without_c(embedded):
    text, out, names = embedded("fig5_without_context")
    assert len(names) == 2 * 2
    for task in ("logic", "arithmetic"):
        assert (out / f"reward_without_context-{task}.png").stat().st_size > 10_000
    table = rows(text, "## Training score with and without C")
    # every 10 steps: of 2 steps, the first (global step 0); Table 1's order of tasks
    assert [r[:3] for r in table] == [["perceiver (default)", "arithmetic", "1"], ["perceiver (default)", "logic", "1"]]
    assert all("±" in cell for r in table for cell in r[3:])


def test_fig6_embedded_report_shows_accuracy_against_m(embedded):
    text, out, names = embedded("fig6_num_queries")
    assert len(names) == 3 * 2
    assert (out / "accuracy_vs_queries-arithmetic.png").stat().st_size > 10_000
    table = rows(text, "## Held-out accuracy")
    assert [r[0] for r in table] == [f"perceiver (default), num_queries={m}" for m in (2, 4, 8)]
    assert all(r[1] not in ("", "—") and "seeds)" not in r[1] for r in table)  # every seed evaluated


def test_table2_embedded_report_has_a_row_per_pooling(embedded):
    text, out, names = embedded("table2_pooling")
    assert len(names) == 5 * 2
    table = rows(text, "## Held-out accuracy")
    assert section(text, "## Held-out accuracy").splitlines()[2] == "| method | arithmetic |"
    assert [r[0] for r in table] == [f"perceiver (default), pooling={p}" for p in POOLINGS]
    assert all(r[1] not in ("", "—") and "seeds)" not in r[1] for r in table)


def test_oracle_signal_bits_plans_single_oracle_and_shuffled_in_the_setting_that_carries_the_team(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where ./runs holds no warm_policy, the plan stops at it (tests/experts/test_models.py)
    data = sweep.read_sweep(SWEEPS / "oracle_signal_bits.yaml")
    jobs = sweep.plan(data, "oracle_signal_bits.yaml")
    assert sorted(j.name for j in jobs) == sorted(f"demo_bits-{m}-{t}-seed{s}" for s in SEEDS for m, t in
                                                  (("single", "none"), ("perceiver", "oracle"), ("perceiver", "oracle_shuffled")))
    for job in jobs:
        training, adapter = job.config["training"], job.config["adapter"]
        assert (training["learning_rate"], training["router_lr"]) == (1e-4, 3e-4)  # LoRA at a third of g_phi's
        assert (training["max_completion_length"], training["num_generations"], training["prompts_per_batch"]) == (1, 8, 2)
        assert (training["out_proj_lr_scale"], training["warmup_steps"], training["max_steps"]) == (0.25, 20, 240)
        assert (adapter["state_norm"], adapter["init_scale"]) == ("layernorm", "unit")
        assert job.config["policy"]["model"] == "runs/warm_policy"  # the warm start the file's comment makes
    assert data["eval"]["limit"] == 500


def test_oracle_signal_bits_32_is_the_same_grid_at_the_papers_32_prompts_a_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small, big = (sweep.plan(sweep.read_sweep(SWEEPS / f"{n}.yaml"), f"{n}.yaml")
                  for n in ("oracle_signal_bits", "oracle_signal_bits_32"))
    assert [j.name for j in small] == [j.name for j in big]
    for a, b in zip(small, big):
        ta, tb = a.config["training"], b.config["training"]
        assert (tb["prompts_per_batch"] * tb["gradient_accumulation_steps"], ta["prompts_per_batch"]) == (32, 2)
        differ = {k for k in ta if ta[k] != tb[k]}
        assert differ <= {"prompts_per_batch", "gradient_accumulation_steps", "eval_every", "eval_size"}, differ
        assert {k: v for k, v in a.config.items() if k not in ("training", "output_dir")} == \
               {k: v for k, v in b.config.items() if k not in ("training", "output_dir")}
