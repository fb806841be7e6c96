"""musketeers.sweep: the grid, names, what each run asks of Ray, and, on a simulated multi-node Ray
cluster (ray.cluster_utils.Cluster: nodes with their own CPUs and custom resources), runs spread over
nodes, skipped when finished, resumed after a kill or a lost node, experts on other nodes, states
computed once."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from musketeers import rundir, run_store, sweep, sweep_plan
from musketeers import train as train_module
from musketeers.config import ConfigError, load_run_config
from musketeers.rundir import MANIFEST_FILE, attempts_path, log_path, read_metrics

REPO = Path(__file__).resolve().parents[2]
TASK = str(REPO / "tests" / "fixtures" / "task_tiny.yaml")
TINY = ["training.max_steps=2", "training.save_steps=1", "training.gradient_accumulation_steps=1"]


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
    from musketeers.cli import main

    with pytest.raises(sweep.SweepError, match="unknown key 'method'"):
        sweep.read_sweep(write_sweep(tmp_path / "a.yaml", tasks=[TASK], method=["single"], seeds=[0]))
    with pytest.raises(sweep.SweepError, match="seeds: expected a non-empty list"):
        sweep.plan(sweep.read_sweep(write_sweep(tmp_path / "b.yaml", tasks=[TASK], methods=["single"])), "b.yaml")
    with pytest.raises(sweep.SweepError, match="resources: unknown key 'gpus'; valid: num_cpus, num_gpus, custom"):
        sweep.read_sweep(write_sweep(tmp_path / "c.yaml", tasks=[TASK], methods=["single"], seeds=[0], resources={"gpus": 1}))
    with pytest.raises(sweep.SweepError, match="resources.num_gpus: expected a number >= 0 or auto, got 'all'"):
        sweep.read_sweep(write_sweep(tmp_path / "d.yaml", tasks=[TASK], methods=["single"], seeds=[0], resources={"num_gpus": "all"}))
    with pytest.raises(sweep.SweepError, match=r"eval.limit: expected an integer >= 1, got 0"):
        sweep.read_sweep(write_sweep(tmp_path / "e.yaml", tasks=[TASK], methods=["single"], seeds=[0], eval={"limit": 0}))
    with pytest.raises(ConfigError, match="task 'tiny' has no test split"):  # before any run trains
        sweep.plan(sweep.read_sweep(write_sweep(tmp_path / "f.yaml", tasks=[TASK], methods=["single"], seeds=[0],
                                                eval={"split": "test"})), "f.yaml")
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(sweep.SweepError, match=f"--address 'ray://127.0.0.1:{port}': nothing answers"):
        sweep._check_reachable(f"ray://127.0.0.1:{port}")
    with pytest.raises(SystemExit) as info:
        main(["sweep", str(tmp_path / "missing.yaml")])
    assert info.value.code == 2 and "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a store shared by sweeps

EVAL = {"limit": 2, "batch_size": 2}


def test_a_sweep_reuses_the_runs_another_sweep_file_left_in_its_store(tmp_path, capsys):
    """Sweep a trained seed 0 (evaluated) and left seed 1 at a checkpoint; sweep b names those runs -num_queries4
    (the tiny team's m) and writes them with other trackers and checkpoint spacing, which are not part of a run's
    identity, beside new runs with m = 2."""
    from musketeers.report import report

    store = tmp_path / "store"
    first = write_sweep(tmp_path / "a.yaml", output_dir=str(store), tasks=[TASK], methods=["perceiver"], seeds=[0, 1],
                        overrides=TINY, eval=EVAL)
    seed0, seed1 = sweep.plan(sweep.read_sweep(first), "a")
    sweep.run_child(seed0.run_dir, TASK, seed0.overrides, EVAL)
    (seed1.run_dir / "checkpoint-1").mkdir(parents=True)  # a run killed after its first checkpoint
    (seed1.run_dir / "config.yaml").write_text(yaml.safe_dump(seed1.config, sort_keys=False))
    (seed1.run_dir / "checkpoint-1" / "trainer_state.json").write_text("{}")
    for name in rundir.LORA_FILES:
        (seed1.run_dir / "checkpoint-1" / name).write_text("{}")
    rundir.write_manifest(seed1.run_dir / "checkpoint-1")  # sealed, as a save leaves it

    def second(seeds, values, eval_opts=EVAL):
        return write_sweep(tmp_path / "b.yaml", output_dir=str(store), tasks=[TASK], methods=["perceiver"], seeds=seeds,
                           overrides=[*TINY[::2], "training.save_steps=2", "training.report_to=none"],
                           vary={"adapter.num_queries": values}, eval=eval_opts)

    capsys.readouterr()
    assert sweep.sweep(second([0, 1], [2, 4]), dry_run=True) == {
        "tiny-perceiver-tiny-seed0-num_queries2": "new", "tiny-perceiver-tiny-seed0-num_queries4": "finished",
        "tiny-perceiver-tiny-seed1-num_queries2": "new", "tiny-perceiver-tiny-seed1-num_queries4": "resume"}
    printed = capsys.readouterr().out
    assert f"[sweep]  finished  {seed0.run_dir}  (reused for tiny-perceiver-tiny-seed0-num_queries4)\n" in printed
    assert f"[sweep]    resume  {seed1.run_dir}  (reused for tiny-perceiver-tiny-seed1-num_queries4)\n" in printed
    assert "[sweep] 4 runs: 2 new, 1 finished, 1 resumable\n" in printed
    assert f"[sweep] reused: 2 (runs of {store} that other sweeps use too, or under another name): 1 finished, 1 resumable\n" in printed
    with run_store.hold(store, seed1.identity, "other"):  # another sweep resumes it now: left to it
        assert sweep.sweep(second([1], [4]), dry_run=True) == {"tiny-perceiver-tiny-seed1-num_queries4": "busy"}
        assert sweep.run_on_node(str(seed1.run_dir), seed1.identity, TASK, [], None, "mine", 1) == {
            "busy": run_store.describe_holder(run_store.lock_holder(store, seed1.identity))}
    assert "(sweep other holds it (host " in capsys.readouterr().out
    # evaluated on 2 items; a sweep asking for 4 evaluates it again
    assert sweep.sweep(second([0], [4], {"limit": 4}), dry_run=True) == {"tiny-perceiver-tiny-seed0-num_queries4": "evaluate"}

    # nothing to train (so no Ray): the sweep records which run serves its run, and the report reads that
    assert sweep.sweep(second([0], [4])) == {"tiny-perceiver-tiny-seed0-num_queries4": "finished"}
    record = store / "sweeps" / "b"
    assert json.loads((record / "runs.json").read_text()) == {"tiny-perceiver-tiny-seed0-num_queries4": seed0.name}
    assert (record / "sweep.yaml").read_text() == (tmp_path / "b.yaml").read_text()
    text = report([record], tmp_path / "report")
    assert text.startswith("# musketeers report (1 runs)") and f"| {seed0.name} | tiny | perceiver |" in text
    capsys.readouterr()
    sweep.sweep(first, dry_run=True)  # a's own run, which b uses too
    assert f"[sweep]  finished  {seed0.run_dir}  (reused, also in b)\n" in capsys.readouterr().out


def test_a_changed_config_under_the_same_name_is_refused_unless_the_store_has_it(tmp_path):
    store = tmp_path / "store"
    file = write_sweep(tmp_path / "a.yaml", output_dir=str(store), tasks=[TASK], methods=["single"], seeds=[0], overrides=TINY)
    (job,) = sweep.plan(sweep.read_sweep(file), "a")
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "config.yaml").write_text(yaml.safe_dump(job.config, sort_keys=False))
    changed = write_sweep(tmp_path / "b.yaml", output_dir=str(store), tasks=[TASK], methods=["single"], seeds=[0],
                          overrides=[*TINY, "training.learning_rate=0.001"])
    assert sweep.sweep(changed, dry_run=True) == {job.name: "conflict"}
    moved = write_sweep(tmp_path / "c.yaml", output_dir=str(store), tasks=[TASK], methods=["single"], seeds=[0],
                        overrides=[*TINY, "training.report_to=none", "team.placement=apart"])
    assert sweep.sweep(moved, dry_run=True) == {job.name: "restart"}  # the same run, stored and placed otherwise


# ----------------------------------------------------------------------------- what a run asks of Ray


def job_with(*overrides, method="perceiver", **expert_fields):
    """A run of the tiny task whose experts are Ray actors; expert_fields: {field: [value of each expert]}."""
    config = load_run_config(TASK, [f"method={method}", "team.backend=ray", *overrides]).to_dict()
    for key, values in expert_fields.items():
        for expert, value in zip(config["team"]["experts"], values):
            expert[key] = value
    return sweep.Job("r", Path("r"), TASK, [], config)


def test_a_run_asks_for_its_policy_and_its_experts_together_or_apart():
    res = sweep_plan.read_resources({"resources": {"num_cpus": 2, "custom": {"a100": 1}}}, "s")
    task, bundle = sweep.run_demand(job_with(num_gpus=[0.25, 0, 0]), res, cluster_gpus=8)
    # together: one bundle on one node; the run's GPU is shared with its experts' fractions
    assert bundle == {"CPU": 2 + 3, "GPU": 1.0, "a100": 1.0}
    assert task == {"num_cpus": 2.0, "num_gpus": 0.75, "resources": {}}
    task, bundle = sweep.run_demand(job_with("team.placement=apart"), res, cluster_gpus=8)
    assert bundle is None and task == {"num_cpus": 2.0, "num_gpus": 1.0, "resources": {"a100": 1.0}}
    task, bundle = sweep.run_demand(job_with(method="single"), sweep_plan.read_resources({}, "s"), cluster_gpus=0)
    assert bundle is None and task == {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {}}  # auto: no GPU in the cluster
    assert sweep.run_demand(job_with("team.backend=local"), res, 0)[1] is None  # in-process experts: no actors
    with pytest.raises(sweep.SweepError, match="its experts ask for 1 GPU of the run's 1"):
        sweep.run_demand(job_with(num_gpus=[0.5, 0.5, 0]), res, cluster_gpus=1)


def test_a_run_no_node_can_hold_fails_before_anything_starts():
    job = job_with("team.placement=apart", resources=[{}, {"big_node": 1.0}, {}])
    res = sweep_plan.read_resources({}, "s")
    demands = {"r": sweep.run_demand(job, res, 0)}
    sweep.check_fits([job], demands, [{"CPU": 4.0}, {"CPU": 1.0, "big_node": 1.0}])
    with pytest.raises(sweep.SweepError, match="r: expert 'gpt2-64' asks for .*big_node.* no node of the Ray cluster"):
        sweep.check_fits([job], demands, [{"CPU": 4.0}])


def test_a_sweeps_own_ray_holds_no_more_runs_at_once_than_the_cores_give_threads(monkeypatch):
    from musketeers.sweep_resources import RUN_SLOT, local_run_slots, with_run_slot

    assert [local_run_slots(cpus, cores) for cpus, cores in [(2, 2), (1, 2), (2, 8), (4, 2), (0.5, 2), (1, None)]] \
        == [1, 2, 4, 1, 2, 1]
    res = sweep_plan.read_resources({"resources": {"num_cpus": 2}}, "s")
    assert with_run_slot(res, {"CPU": 5.0}) is res  # a cluster joined with --address: Ray's CPUs place the runs
    slotted = with_run_slot(res, {"CPU": 5.0, RUN_SLOT: 1.0})
    task, bundle = sweep.run_demand(job_with(), slotted, 0)
    assert bundle == {"CPU": 2 + 3, RUN_SLOT: 1.0} and task["resources"] == {}  # the slot is held with the experts'
    task, bundle = sweep.run_demand(job_with(method="single"), slotted, 0)
    assert bundle is None and task["resources"] == {RUN_SLOT: 1.0}
    sweep.check_fits([job_with()], {"r": sweep.run_demand(job_with(), slotted, 0)}, [{"CPU": 5.0, RUN_SLOT: 1.0}])
    # the Ray a sweep starts declares the slots: on 2 cores, one 2-thread run at a time, though 5 logical
    # CPUs (for a perceiver run's three expert actors) would fit two `single` runs
    import ray

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert sweep.connect(None, [job_with()], res)
    try:
        assert ray.cluster_resources()[RUN_SLOT] == 1.0 and ray.cluster_resources()["CPU"] == 5.0
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------- on a simulated cluster


@pytest.fixture(scope="module")
def cluster():
    """A Ray head without CPUs and two worker nodes with one CPU each, custom resources node_a / node_b."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    small = {"object_store_memory": 80 * 2**20}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **small})
    nodes = {name: c.add_node(num_cpus=1, resources={name: 1}, **small) for name in ("node_a", "node_b")}
    ray.init(address=c.address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}})
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def attempts(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in attempts_path(run_dir).read_text().splitlines()]


def deterministic(row):
    """Metrics that do not depend on where or in how many pieces a run ran (wall times, expert cache counters)."""
    return {k: v for k, v in row.items() if not k.startswith(("time/", "experts/")) and k != "step_time"}


@pytest.mark.slow
def test_runs_spread_over_the_nodes_and_a_finished_sweep_starts_nothing(cluster, tmp_path, capsys):
    _, nodes = cluster
    file = write_sweep(tmp_path / "s.yaml", output_dir=str(tmp_path / "out"), tasks=[TASK], methods=["single"],
                       seeds=[0, 1, 2, 3], overrides=TINY)
    outcome = sweep.sweep(file)
    assert list(outcome.values()) == ["ok"] * 4
    used = {attempts(tmp_path / "out" / name)[0]["node_id"] for name in outcome}
    assert used == {n.node_id for n in nodes.values()}  # one CPU per node: two runs at a time, one on each
    printed = capsys.readouterr().out
    assert "4 finished" in printed and "[sweep] 4 run(s) in" in printed
    assert sweep.sweep(file) == {name: "finished" for name in outcome}  # rerun: nothing starts
    assert all(len(attempts(tmp_path / "out" / name)) == 1 for name in outcome)


@pytest.mark.slow
def test_two_sweep_files_in_one_store_train_their_shared_run_once(cluster, tmp_path):
    """b's seed 0 is a's run under another name (report_to is not part of a run's identity): it is not trained
    again; b trains only seed 1, and every run's lock is gone when the sweeps end."""
    store = tmp_path / "out"
    first = write_sweep(tmp_path / "a.yaml", output_dir=str(store), tasks=[TASK], methods=["single"], seeds=[0],
                        overrides=TINY)
    assert sweep.sweep(first) == {"tiny-single-none-seed0": "ok"}
    second = write_sweep(tmp_path / "b.yaml", output_dir=str(store), tasks=[TASK], methods=["single"], seeds=[0, 1],
                         overrides=TINY, vary={"training.report_to": ["none"]})
    assert sweep.sweep(second) == {"tiny-single-none-seed0-report_tonone": "finished", "tiny-single-none-seed1-report_tonone": "ok"}
    assert len(attempts(store / "tiny-single-none-seed0")) == 1 and not (store / "tiny-single-none-seed0-report_tonone").exists()
    assert json.loads((store / "sweeps" / "b" / "runs.json").read_text()) == {
        "tiny-single-none-seed0-report_tonone": "tiny-single-none-seed0",
        "tiny-single-none-seed1-report_tonone": "tiny-single-none-seed1-report_tonone"}
    assert read_metrics(store / "tiny-single-none-seed1-report_tonone")[-1]["step"] == 2
    assert list((store / "locks").iterdir()) == []


@pytest.mark.slow
def test_sweep_skips_finished_runs_resumes_killed_ones_and_restarts_empty_ones(cluster, tmp_path, monkeypatch):
    out = tmp_path / "out"
    file = write_sweep(tmp_path / "s.yaml", output_dir=str(out), tasks=[TASK], methods=["perceiver"], seeds=[0, 1, 2],
                       overrides=TINY, eval={"limit": 2, "batch_size": 2})
    jobs = {j.name: j for j in sweep.plan(sweep.read_sweep(file), "s")}
    seed0, seed1, seed2 = (out / f"tiny-perceiver-tiny-seed{k}" for k in range(3))
    sweep.run_child(seed0, TASK, jobs[seed0.name].overrides, None)  # finished, not evaluated yet
    monkeypatch.setattr(train_module, "build_trainer", interrupt_seed(seed=1, step=1))
    with pytest.raises(KeyboardInterrupt):  # seed 1: killed right after checkpoint-1
        sweep.run_child(seed1, TASK, jobs[seed1.name].overrides, None)
    seed2.mkdir()  # seed 2: killed before its first checkpoint (a config and a metrics row)
    (seed2 / "config.yaml").write_text(yaml.safe_dump(jobs[seed2.name].config, sort_keys=False))
    (seed2 / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.0}) + "\n")
    assert sweep.sweep(file, dry_run=True) == {seed0.name: "evaluate", seed1.name: "resume", seed2.name: "restart"}

    assert sweep.sweep(file) == {seed0.name: "ok", seed1.name: "ok", seed2.name: "ok"}
    assert [a["resumed_from"] for a in attempts(seed1)] == [1] and attempts(seed2)[0]["resumed_from"] is None
    for run_dir in (seed0, seed1, seed2):
        assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
        assert (run_dir / "DONE").is_file() and (run_dir / "final" / "eval-validation.json").is_file()
    assert "=== " in (out / "logs" / f"{seed1.name}.log").read_text()  # each run's output, on the head

    write_sweep(file, output_dir=str(out), tasks=[TASK], methods=["perceiver"], seeds=[0],
                overrides=[*TINY[:-1], "training.gradient_accumulation_steps=2"])
    assert sweep.sweep(file) == {seed0.name: "conflict"}  # changed config: left alone


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


def sweep_until(file: Path, done, what: str) -> tuple[threading.Thread, dict]:
    """Run the sweep in a thread (its outcome fills the dict) and return once done() is true."""
    result = {}
    driver = threading.Thread(target=lambda: result.update(sweep.sweep(file)))
    driver.start()
    deadline = time.monotonic() + 240
    while not done():
        assert time.monotonic() < deadline and driver.is_alive(), f"the run never {what}"
        time.sleep(0.05)
    return driver, result


def sweep_until_checkpoint(file: Path, checkpoint: Path) -> tuple[threading.Thread, dict]:
    """... once `checkpoint` is complete (its manifest, written last)."""
    return sweep_until(file, (checkpoint / MANIFEST_FILE).is_file, "saved its first checkpoint")


@pytest.mark.slow
def test_a_run_whose_node_dies_finishes_from_its_checkpoint_on_another_node(cluster, tmp_path):
    """Two spare nodes offer a `spare` resource; the run's node is removed once it has saved a
    checkpoint; Ray retries it on the other one, where it resumes with the metrics of a run never stopped."""
    c, _ = cluster
    spares = [c.add_node(num_cpus=1, resources={"spare": 1}, object_store_memory=80 * 2**20) for _ in range(2)]
    c.wait_for_nodes()
    steps = ["training.max_steps=24", "training.save_steps=2", "training.gradient_accumulation_steps=1"]
    file = write_sweep(tmp_path / "s.yaml", output_dir=str(tmp_path / "out"), tasks=[TASK], methods=["perceiver"],
                       seeds=[0], overrides=steps, resources={"num_cpus": 1, "custom": {"spare": 1}}, max_retries=2)
    run_dir = tmp_path / "out" / "tiny-perceiver-tiny-seed0"
    driver, result = sweep_until_checkpoint(file, run_dir / "checkpoint-2")
    first = attempts(run_dir)[0]["node_id"]
    victim = next(n for n in spares if n.node_id == first)
    c.remove_node(victim)
    driver.join(timeout=240)
    assert result == {run_dir.name: "ok"}
    tries = attempts(run_dir)
    assert len(tries) == 2 and tries[1]["node_id"] != first and tries[1]["resumed_from"] >= 2
    straight = train_module.train(load_run_config(TASK, [*steps, "method=perceiver", f"output_dir={tmp_path / 'ref'}"]))
    expected, got = read_metrics(straight), read_metrics(run_dir)
    assert [r["step"] for r in got] == list(range(1, 25))
    assert [deterministic(r) for r in got] == [deterministic(r) for r in expected]
    for node in spares:
        if node is not victim:
            c.remove_node(node)


@pytest.mark.slow
def test_a_killed_run_process_is_restarted_and_resumes_from_its_checkpoint(cluster, tmp_path):
    steps = ["training.max_steps=24", "training.save_steps=2", "training.gradient_accumulation_steps=1"]
    file = write_sweep(tmp_path / "s.yaml", output_dir=str(tmp_path / "out"), tasks=[TASK], methods=["single"],
                       seeds=[0], overrides=steps)
    run_dir = tmp_path / "out" / "tiny-single-none-seed0"
    driver, result = sweep_until_checkpoint(file, run_dir / "checkpoint-2")
    os.kill(attempts(run_dir)[0]["pid"], 9)
    driver.join(timeout=240)
    assert result == {run_dir.name: "ok"}
    tries = attempts(run_dir)
    assert len(tries) == 2 and tries[1]["pid"] != tries[0]["pid"] and tries[1]["resumed_from"] >= 2
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 25))


@pytest.mark.slow
def test_a_preempted_run_saves_its_step_and_ray_retries_it_from_there(cluster, tmp_path):
    """SIGTERM to the run's process (a scheduler preempting it): it saves the step in flight, raises Preempted,
    and Ray's retry resumes from that checkpoint (save_steps 100: no other checkpoint exists). The signal
    lands once step 1 has logged: while step 1 still logs (the save is checkpoint-1) or during step 2 or later."""
    steps = ["training.max_steps=12", "training.save_steps=100", "training.gradient_accumulation_steps=1"]
    file = write_sweep(tmp_path / "s.yaml", output_dir=str(tmp_path / "out"), tasks=[TASK], methods=["single"],
                       seeds=[0], overrides=steps)
    run_dir = tmp_path / "out" / "tiny-single-none-seed0"
    driver, result = sweep_until(file, lambda: bool(read_metrics(run_dir)), "logged a step")
    os.kill(attempts(run_dir)[0]["pid"], signal.SIGTERM)
    driver.join(timeout=240)
    assert result == {run_dir.name: "ok"}
    tries = attempts(run_dir)
    step = tries[1]["resumed_from"]
    assert len(tries) == 2 and step >= 1
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 13))
    saved = run_dir / f"checkpoint-{step}"
    assert f"musketeers: preempted by SIGTERM: stopped after step {step} of 12 and saved {saved}" in log_path(run_dir).read_text()


@pytest.mark.slow
def test_an_expert_on_another_node_serves_the_same_states_as_in_process(cluster):
    """The trainer's process on node_a, its expert actors on node_b: states cross Ray's object store."""
    import ray
    import torch

    from experts.pool import ExpertPool

    cfg = load_run_config(TASK, ["team.backend=ray", "team.placement=apart"])
    for expert in cfg.team.experts:
        expert.resources, expert.num_cpus = {"node_b": 0.1}, 0.25  # all three on node_b's one CPU
    questions = ["What is 2 + 3?", "Sort 3 1 2.", "What is 2 + 3?"]

    @ray.remote(num_cpus=0, resources={"node_a": 0.1})
    def on_node_a(team):
        with ExpertPool(team, None, seed=0) as pool:
            return ray.get_runtime_context().get_node_id(), [i["node_id"] for i in pool.infos], pool.encode(questions)

    _, nodes = cluster
    trainer_node, expert_nodes, remote = ray.get(on_node_a.remote(cfg.team))
    assert trainer_node == nodes["node_a"].node_id and set(expert_nodes) == {nodes["node_b"].node_id}
    with ExpertPool(cfg.team, None, seed=0, backend="local") as pool:
        local = pool.encode(questions)
    assert all(torch.equal(a, b) for a, b in zip(remote, local))


@pytest.mark.slow
def test_together_places_a_runs_expert_actors_in_its_own_bundle_on_its_node(cluster):
    """team.placement together: the run task's placement group holds its experts' actors too."""
    import ray

    from experts.pool import ExpertPool

    job = job_with(num_cpus=[0.25] * 3)
    task, bundle = sweep.run_demand(job, sweep_plan.read_resources({"resources": {"num_cpus": 0.25}}, "s"), 0)
    assert bundle == {"CPU": 1.0}
    group, strategy = sweep._place(bundle)
    team = load_run_config(TASK, ["team.backend=ray"]).team
    for expert in team.experts:
        expert.num_cpus = 0.25

    @ray.remote
    def run(team):
        with ExpertPool(team, None, seed=0) as pool:
            return ray.get_runtime_context().get_node_id(), [i["node_id"] for i in pool.infos]

    try:
        node, expert_nodes = ray.get(run.options(num_cpus=task["num_cpus"], scheduling_strategy=strategy).remote(team))
    finally:
        ray.util.remove_placement_group(group)
    assert set(expert_nodes) == {node}


@pytest.mark.slow
def test_runs_whose_experts_go_together_queue_for_a_bundle_and_all_finish(cluster, tmp_path):
    """Three runs, each a one-CPU bundle (policy 0.25 + three experts 0.25) on two one-CPU nodes: the
    third waits for a finished run's bundle. The states are on disk (precomputed), so no actor starts."""
    team = yaml.safe_load((REPO / "tests" / "fixtures" / "team_tiny.yaml").read_text())
    team["team"].update(backend="ray", placement="together", cache_dir=str(tmp_path / "states"))
    for expert in team["team"]["experts"]:
        expert["num_cpus"] = 0.25
    (tmp_path / "team.yaml").write_text(yaml.safe_dump(team))
    file = write_sweep(tmp_path / "s.yaml", output_dir=str(tmp_path / "out"), tasks=[TASK], methods=["perceiver"],
                       teams=[str(tmp_path / "team.yaml")], seeds=[0, 1, 2], overrides=TINY,
                       resources={"num_cpus": 0.25, "custom": {"node_a": 0.01}})  # all three on node_a
    assert set(sweep.sweep(file).values()) == {"ok"}


@pytest.mark.slow
def test_the_sweep_computes_expert_states_once_before_its_runs(cluster, tmp_path):
    """With team.cache_dir set, the runs of every method and seed read one cache, filled before they
    start by one precompute task: no run loads an expert model, and each trains as it would have
    with states it computed itself."""
    cache = f"team.cache_dir={tmp_path / 'states'}"
    file = write_sweep(tmp_path / "s.yaml", output_dir=str(tmp_path / "out"), tasks=[TASK], methods=["single", "perceiver", "ffn"],
                       seeds=[0, 1], overrides=[*TINY, cache])
    jobs = sweep.plan(sweep.read_sweep(file), "s")
    assert len(sweep.precompute_groups(jobs)) == 1  # single reads no states; the other runs share one cache
    random = sweep.plan({**sweep.read_sweep(file), "overrides": [*TINY, cache, "team.pooling=random_token"]}, "s")
    assert len(sweep.precompute_groups(random)) == 2  # a random pooling's states depend on the seed

    outcome = sweep.sweep(file)
    assert set(outcome.values()) == {"ok"} and len(outcome) == 2 + 4
    for method in ("perceiver", "ffn"):
        rows = read_metrics(tmp_path / "out" / f"tiny-{method}-tiny-seed0")
        assert all(r["experts/models_loaded"] == 0 and r["experts/forwards"] == 0 for r in rows)
    own = train_module.train(load_run_config(TASK, [*TINY, "method=perceiver", f"output_dir={tmp_path / 'own'}"]))
    assert read_metrics(own)[-1]["experts/models_loaded"] == 3
    assert [deterministic(r) for r in read_metrics(own)] == \
        [deterministic(r) for r in read_metrics(tmp_path / "out" / "tiny-perceiver-tiny-seed0")]
