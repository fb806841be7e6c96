"""launch/sweep.py: the grid, deterministic names, skipping finished runs, resuming killed ones, GPU pinning."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from musketeers import train as train_module
from musketeers.rundir import read_metrics

REPO = Path(__file__).resolve().parents[2]
TASK = str(REPO / "tests" / "fixtures" / "task_tiny.yaml")
TINY = ["training.max_steps=2", "training.save_steps=1", "training.gradient_accumulation_steps=1"]

spec = importlib.util.spec_from_file_location("sweep", REPO / "launch" / "sweep.py")
sweep = importlib.util.module_from_spec(spec)
sys.modules["sweep"] = sweep  # dataclasses look their module up
spec.loader.exec_module(sweep)


class Finished:
    def __init__(self, returncode):
        self.returncode = returncode

    def poll(self):
        return self.returncode


def in_process(job, gpu, eval_opts):
    """The child process, run in this process (a subprocess costs ~10 s of imports)."""
    try:
        sweep.run_child(job.run_dir, job.task, job.overrides, eval_opts)
        return Finished(0)
    except BaseException:  # noqa: BLE001 - a killed run (KeyboardInterrupt) ends this run only
        return Finished(1)


def write_sweep(path: Path, **data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_plan_crosses_blocks_dedups_single_and_names_variants(tmp_path):
    file = write_sweep(tmp_path / "s.yaml", output_dir=str(tmp_path / "out"), tasks=[TASK], seeds=[0, 1],
                       grid=[{"methods": ["single", "perceiver"]},
                             {"methods": ["single", "ffn"], "vary": {"adapter.num_queries": [2, 8]}}])
    jobs = sweep.plan(sweep.read_sweep(file), str(file))
    names = [j.name for j in jobs]
    assert names[:4] == ["tiny-single-none-seed0", "tiny-single-none-seed1", "tiny-perceiver-tiny-seed0", "tiny-perceiver-tiny-seed1"]
    assert "tiny-ffn-tiny-seed1-num_queries8" in names and "tiny-single-none-seed0-num_queries2" in names
    assert len(names) == len(set(names)) == 4 + 8
    assert jobs[0].run_dir == tmp_path / "out" / "tiny-single-none-seed0"


def test_table1_grid_has_the_papers_72_runs():
    data = sweep.read_sweep(REPO / "configs" / "sweeps" / "table1.yaml")
    names = [j.name for j in sweep.plan(data, "table1.yaml")]
    assert len(names) == 4 * 6 * 3 and "gsm8k-perceiver-generalist-seed2" in names
    assert sum(n.startswith("logic-single-none-") for n in names) == 3


def test_bad_sweep_files_fail_in_one_line(tmp_path, capsys):
    with pytest.raises(sweep.SweepError, match="unknown key 'method'"):
        sweep.read_sweep(write_sweep(tmp_path / "a.yaml", tasks=[TASK], method=["single"], seeds=[0]))
    with pytest.raises(sweep.SweepError, match="seeds: expected a non-empty list"):
        sweep.plan(sweep.read_sweep(write_sweep(tmp_path / "b.yaml", tasks=[TASK], methods=["single"])), "b.yaml")
    with pytest.raises(SystemExit) as info:
        sweep.main([str(tmp_path / "missing.yaml")])
    assert info.value.code == 2 and "does not exist" in capsys.readouterr().err


def interrupt_seed(seed, step):
    """build_trainer whose run with `seed` is killed right after saving checkpoint-`step`."""
    from transformers import TrainerCallback

    original = train_module.build_trainer

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if args.seed == seed and state.global_step == step:
                raise KeyboardInterrupt

    def build(cfg, run_dir):
        trainer = original(cfg, run_dir)
        trainer.add_callback(Kill())
        return trainer

    return build


def test_sweep_skips_finished_runs_resumes_killed_ones_and_restarts_empty_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "POLL_S", 0.0)
    out = tmp_path / "out"
    file = write_sweep(tmp_path / "s.yaml", output_dir=str(out), tasks=[TASK], methods=["perceiver"], seeds=[0, 1],
                       overrides=TINY, eval={"limit": 2, "batch_size": 2})
    monkeypatch.setattr(train_module, "build_trainer", interrupt_seed(seed=1, step=1))
    outcome = sweep.sweep(file, start=in_process)
    seed0, seed1, seed2 = (out / f"tiny-perceiver-tiny-seed{k}" for k in range(3))
    assert outcome == {seed0.name: "ok", seed1.name: "failed (exit 1)"}
    assert (seed0 / "DONE").is_file() and (seed0 / "final" / "eval-validation.json").is_file()
    assert not (seed1 / "DONE").exists() and (seed1 / "checkpoint-1").is_dir() and not (seed1 / "final").exists()

    # seed 2: killed before its first checkpoint (a config and a metrics row, nothing to resume from)
    write_sweep(file, output_dir=str(out), tasks=[TASK], methods=["perceiver"], seeds=[0, 1, 2], overrides=TINY,
                eval={"limit": 2, "batch_size": 2})
    job2 = next(j for j in sweep.plan(sweep.read_sweep(file), "s") if j.name == seed2.name)
    seed2.mkdir()
    (seed2 / "config.yaml").write_text(yaml.safe_dump(job2.config, sort_keys=False))
    (seed2 / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.0}) + "\n")
    assert sweep.sweep(file, dry_run=True) == {seed0.name: "finished", seed1.name: "resume", seed2.name: "restart"}

    calls = []
    real_train = train_module.train
    monkeypatch.setattr(train_module, "build_trainer", interrupt_seed(seed=-1, step=0))
    monkeypatch.setattr(train_module, "train", lambda *a, **k: calls.append((a, k)) or real_train(*a, **k))
    outcome = sweep.sweep(file, start=in_process)
    assert outcome == {seed0.name: "finished", seed1.name: "ok", seed2.name: "ok"}
    assert calls[0] == ((), {"resume": seed1}) and calls[1][1] == {"run_dir": seed2}  # seed 0 not trained again
    for run_dir in (seed1, seed2):
        assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
        assert (run_dir / "DONE").is_file() and (run_dir / "final" / "eval-validation.json").is_file()

    (seed0 / "final" / "eval-validation.json").unlink()  # finished but not evaluated: evaluate only
    assert sweep.sweep(file, dry_run=True)[seed0.name] == "evaluate"
    calls.clear()
    sweep.sweep(file, start=in_process)
    assert not calls and (seed0 / "final" / "eval-validation.json").is_file()

    write_sweep(file, output_dir=str(out), tasks=[TASK], methods=["perceiver"], seeds=[0],
                overrides=[*TINY[:-1], "training.gradient_accumulation_steps=2"])
    assert sweep.sweep(file, start=in_process) == {seed0.name: "conflict"}  # changed config: left alone


def test_one_run_per_gpu_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "POLL_S", 0.0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert sweep.gpu_slots(None) == ["3", "5"] and sweep.gpu_slots(1) == ["3"]
    busy, log = set(), []

    class Proc:
        def __init__(self, gpu):
            self.gpu, self.polls, self.returncode = gpu, 0, None

        def poll(self):
            self.polls += 1
            if self.polls == 3:
                self.returncode = 0
                busy.remove(self.gpu)
            return self.returncode

    def start(job, gpu, eval_opts):
        assert gpu not in busy  # never two runs on one GPU
        busy.add(gpu)
        log.append((job.name, gpu))
        return Proc(gpu)

    jobs = [sweep.Job(f"r{k}", tmp_path / f"r{k}", TASK, []) for k in range(5)]
    codes = sweep.run_jobs(jobs, sweep.gpu_slots(None), None, start)
    assert codes == {f"r{k}": 0 for k in range(5)} and [g for _, g in log[:2]] == ["3", "5"]


def test_launch_pins_the_gpu_and_logs(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda cmd, env, stdout, stderr: seen.update(cmd=cmd, env=env))
    job = sweep.Job("r", tmp_path / "out" / "r", TASK, ["seed=1"])
    sweep.launch(job, "2", {"limit": 4})
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "2" and seen["cmd"][-2:] == ["--", "seed=1"]
    assert "--child" in seen["cmd"] and (tmp_path / "out" / "logs" / "r.log").read_text().startswith("\n=== ")


def test_the_sweep_computes_expert_states_once_before_its_runs(tmp_path, monkeypatch):
    """With team.cache_dir set, the runs of every method and seed read one cache, filled before they
    start: the tiny team's three experts load once for the whole sweep, never inside a run."""
    import experts.pool

    monkeypatch.setattr(sweep, "POLL_S", 0.0)
    cache = f"team.cache_dir={tmp_path / 'states'}"
    file = write_sweep(tmp_path / "s.yaml", output_dir=str(tmp_path / "out"), tasks=[TASK], methods=["single", "perceiver", "ffn"],
                       seeds=[0, 1], overrides=[*TINY, cache])
    jobs = sweep.plan(sweep.read_sweep(file), "s")
    assert len(sweep.precompute_groups(jobs)) == 1  # single reads no states; the other runs share one cache
    random = sweep.plan({**sweep.read_sweep(file), "overrides": [*TINY, cache, "team.pooling=random_token"]}, "s")
    assert len(sweep.precompute_groups(random)) == 2  # a random pooling's states depend on the seed

    loads = []
    original = experts.pool.ExpertWorker.__init__
    monkeypatch.setattr(experts.pool.ExpertWorker, "__init__", lambda self, *a, **k: loads.append(a[0].name) or original(self, *a, **k))
    outcome = sweep.sweep(file, start=in_process)
    assert set(outcome.values()) == {"ok"} and len(outcome) == 2 + 4
    assert sorted(loads) == ["gpt2-64", "llama-48", "qwen2-80"]  # once, by the precompute
    assert all(row["experts/forwards"] == 0 for run in ("perceiver", "ffn") for seed in (0, 1)
               for row in read_metrics(tmp_path / "out" / f"tiny-{run}-tiny-seed{seed}"))
