"""What a shared cluster does to a run: preemption (SIGTERM), a full disk during a checkpoint, files torn by a
kill, two processes writing one expert cache or one eval result. No completed step is lost, nothing damaged
is read back, and the next attempt continues by itself."""
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from shutil import copytree

import pytest
import torch
from transformers import TrainerCallback, TrainerControl

from experts import cache as cache_module
from experts.cache import DiskCache
from musketeers import interruptions, rundir, sweep
from musketeers import train as train_module
from musketeers.config import load_run_config
from musketeers.interruptions import REQUEUE_EXIT, DiskFull, Preempted, PreemptionCallback
from musketeers.train import grpo_config, train

REPO = Path(__file__).resolve().parents[2]
TASK = str(REPO / "tests" / "fixtures" / "task_tiny.yaml")
STEPS = ["training.max_steps=5", "training.gradient_accumulation_steps=1"]


def dense_reward(prompts, completions, **kwargs):
    """A dense test reward (random tiny models never answer correctly): share of distinct characters."""
    return [len(set(text)) / (len(text) + 1) for text in completions]


dense_reward.__name__ = "accuracy"
DENSE = "rewards.make_reward_functions", lambda *a, **k: ([dense_reward], [1.0])


def config(out: Path, *overrides):
    return load_run_config(TASK, [f"output_dir={out}", *STEPS, *overrides])


def deterministic(row):
    """What must not depend on interruptions: all but wall times and expert-cache counters."""
    return {k: v for k, v in row.items() if not k.startswith(("time/", "experts/")) and k not in ("step_time", "eval/runtime")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A run of 5 steps never interrupted, a checkpoint after every step."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(*DENSE)
        return train(config(tmp_path_factory.mktemp("reference"), "training.save_steps=1"))


@pytest.fixture
def dense(monkeypatch):
    monkeypatch.setattr(*DENSE)


def same_metrics(run_dir: Path, reference: Path) -> None:
    got, expected = rundir.read_metrics(run_dir), rundir.read_metrics(reference)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
    assert [deterministic(r) for r in got] == [deterministic(r) for r in expected]


# ----------------------------------------------------------------------------- 1. preemption


def test_the_handlers_are_ours_again_when_training_begins_whatever_loading_installed():
    """ray.init (Ray experts start while a run loads) installs Ray's own SIGTERM handler, which aborts the
    process (exit 134, seen on the demo): training begins with ours again."""
    stop = PreemptionCallback()
    with stop.handling_signals():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what a library installing its own handler leaves
        stop.on_train_begin(None, None, TrainerControl())
        assert all(signal.getsignal(s) == stop._handle for s in PreemptionCallback.SIGNALS)
    assert signal.getsignal(signal.SIGTERM) != stop._handle  # restored when the run ends


def test_the_first_signal_saves_the_step_in_flight_and_stops_a_second_sigint_aborts():
    stop, control = PreemptionCallback(), TrainerControl()
    before = signal.getsignal(signal.SIGTERM)
    with stop.handling_signals():
        with pytest.raises(Preempted, match="before training started: nothing to save"):  # models still loading
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before  # restored
    stop = PreemptionCallback()
    with stop.handling_signals():
        stop.on_train_begin(None, None, control)
        stop.on_step_end(None, None, control)
        assert not (control.should_save or control.should_training_stop)  # no signal: TRL's own schedule
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # forwarded twice (srun, torchrun): still one graceful stop
        stop.on_step_end(None, None, control)
        assert control.should_save and control.should_training_stop and control.should_log
        assert stop.signal_name == "SIGTERM"
        control.should_save = False
        stop.on_save(None, None, control)  # arrived while the step's checkpoint was written: not saved twice
        assert not control.should_save and control.should_training_stop
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C after the signal: stop at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before


class SigtermDuringStep(TrainerCallback):
    """The scheduler's SIGTERM, arriving while step `step` runs."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_preempted_run_saves_the_step_in_flight_and_resume_equals_an_uninterrupted_run(tmp_path, reference, dense,
                                                                                         monkeypatch):
    original = train_module.build_trainer

    def build(*args):
        trainer = original(*args)
        trainer.add_callback(SigtermDuringStep(2))
        return trainer

    monkeypatch.setattr(train_module, "build_trainer", build)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as stopped:  # save_steps 100: the preemption writes the only checkpoint
        train(config(tmp_path, "training.save_steps=100"))
    run_dir = next(tmp_path.iterdir())
    two = rundir.checkpoint_dir(run_dir, 2)
    assert str(stopped.value) == (f"preempted by SIGTERM: stopped after step 2 of 5 and saved {two}; exit status 75 "
                                  f"(requeue); `musketeers train --resume {run_dir}` continues from there")
    assert rundir.last_checkpoint(run_dir) == two and [r["step"] for r in rundir.read_metrics(run_dir)] == [1, 2]
    assert not rundir.is_finished(run_dir) and signal.getsignal(signal.SIGTERM) is handler
    monkeypatch.setattr(train_module, "build_trainer", original)
    train(resume=run_dir)
    same_metrics(run_dir, reference)


CHILD = textwrap.dedent("""
    import sys
    import rewards
    def accuracy(prompts, completions, **kwargs):
        return [len(set(text)) / (len(text) + 1) for text in completions]
    rewards.make_reward_functions = lambda *a, **k: ([accuracy], [1.0])
    from musketeers.cli import main
    main(sys.argv[1:])
""")


@pytest.mark.slow
def test_sigterm_to_musketeers_train_saves_that_step_exits_75_and_resume_equals_an_uninterrupted_run(tmp_path, reference,
                                                                                                     dense):
    out = tmp_path / "out"  # save_steps 100: the only checkpoint is the one the preemption writes
    child = subprocess.Popen([sys.executable, "-c", CHILD, "train", TASK, f"output_dir={out}", *STEPS,
                              "training.save_steps=100"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    while not (out.is_dir() and any(rundir.read_metrics(d) for d in out.iterdir())):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    # once step 1's row is in metrics.jsonl: the step in flight is saved, step 1 itself when the signal comes while
    # its logging callbacks still run (the row is written by one of them), else step 2 (or the one in flight then)
    child.send_signal(signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=240)
    run_dir = next(out.iterdir())
    step = rundir.read_metrics(run_dir)[-1]["step"]
    assert child.returncode == REQUEUE_EXIT, stderr
    assert 1 <= step < 5 and rundir.last_checkpoint(run_dir) == rundir.checkpoint_dir(run_dir, step)
    assert [line for line in stderr.splitlines() if line.startswith("musketeers:")] == [
        f"musketeers: preempted by SIGTERM: stopped after step {step} of 5 and saved {run_dir / f'checkpoint-{step}'}; "
        f"exit status 75 (requeue); `musketeers train --resume {run_dir}` continues from there"]
    assert not rundir.is_finished(run_dir)
    train(resume=run_dir)
    same_metrics(run_dir, reference)


# ----------------------------------------------------------------------------- 2. a full disk


def fill_disk_at_step_2(monkeypatch, where: str) -> None:
    """Saving checkpoint-2 writes half a file, then fails as a full disk does (at `where`)."""
    def half(path):
        path = Path(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    if where == "adapter":  # g_phi's safetensors, the first file of a checkpoint
        from musketeers import trainer as trainer_module

        real = trainer_module.save_file

        def save_file(tensors, path, *a, **k):
            real(tensors, path, *a, **k)
            if "checkpoint-2" in path:
                half(path)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

        monkeypatch.setattr(trainer_module, "save_file", save_file)
    elif where == "optimizer":  # torch.save says only "unexpected pos": no errno, and no space left
        real = torch.save

        def save(obj, f, *a, **k):
            real(obj, f, *a, **k)
            if "checkpoint-2" in str(f) and str(f).endswith("optimizer.pt"):
                half(f)
                monkeypatch.setattr(interruptions, "free_bytes", lambda path: 0)
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

        monkeypatch.setattr(torch, "save", save)
    else:  # trainer_state.json, which transformers writes last and not atomically
        from transformers import TrainerState

        real = TrainerState.save_to_json

        def save_to_json(self, json_path):
            real(self, json_path)
            if "checkpoint-2" in json_path:
                half(json_path)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(TrainerState, "save_to_json", save_to_json)


@pytest.mark.parametrize("where", ["adapter", "optimizer", "trainer_state"])
def test_a_full_disk_during_a_checkpoint_keeps_the_last_one_says_so_and_resume_continues(tmp_path, reference, dense,
                                                                                          monkeypatch, where):
    fill_disk_at_step_2(monkeypatch, where)
    with pytest.raises(DiskFull) as stopped:
        train(config(tmp_path, "training.save_steps=1"))
    run_dir = next(tmp_path.iterdir())
    one, two = rundir.checkpoint_dir(run_dir, 1), rundir.checkpoint_dir(run_dir, 2)
    message = str(stopped.value)
    assert message.startswith("disk full: writing ") and str(two) in message and " free on that file system" in message
    assert f"{one} is intact and is where --resume continues" in message and "\n" not in message
    assert stopped.value.exit_code == interruptions.DISK_FULL_EXIT
    assert not two.exists()  # the half-written checkpoint is gone, the one before untouched
    assert rundir.last_checkpoint(run_dir) == rundir.resume_checkpoint(run_dir) == one
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.undo()
    monkeypatch.setattr(*DENSE)
    train(resume=run_dir)
    same_metrics(run_dir, reference)


def test_no_checkpoint_is_rotated_away():
    """transformers rotates (save_total_limit) before our manifest seals the new checkpoint: it must stay off."""
    cfg = load_run_config(TASK, [])
    assert grpo_config(cfg, Path("/nonexistent"), False).save_total_limit is None


def test_any_write_that_finds_the_disk_full_stops_the_run_in_one_line(tmp_path, dense, monkeypatch):
    def append(run_dir, row):  # a metrics row
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("musketeers.train.append_metrics", append)
    with pytest.raises(DiskFull, match=r"^disk full: writing .*tiny-perceiver-tiny-seed0-\S+ failed \(No space left on "
                                       r"device\); .* free on that file system; the run stopped, no checkpoint was complete yet"):
        train(config(tmp_path, "training.max_steps=1"))


# ----------------------------------------------------------------------------- 3. torn files


def copy_run(reference: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / reference.name
    copytree(reference, run_dir)
    return run_dir


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "context_adapter.safetensors", "optimizer.pt",
                                  "trainer_state.json", "rng_state.pth", "scheduler.pt"])
def test_a_truncated_checkpoint_file_is_detected_and_the_one_before_is_used(tmp_path, reference, caplog, name):
    run_dir = copy_run(reference, tmp_path)
    last = rundir.checkpoint_dir(run_dir, 5)
    size = (last / name).stat().st_size
    os.truncate(last / name, size // 2)
    assert rundir.last_checkpoint(run_dir) == rundir.resume_checkpoint(run_dir) == rundir.checkpoint_dir(run_dir, 4)
    assert caplog.messages == [f"warning: skipping checkpoint-5 ({name} has {size // 2:,} bytes, {size:,} when it was saved)"]


def test_a_file_damaged_in_place_is_caught_by_its_checksum_on_resume(tmp_path, reference, caplog):
    run_dir = copy_run(reference, tmp_path)
    optimizer = rundir.checkpoint_dir(run_dir, 5) / "optimizer.pt"
    optimizer.write_bytes(bytes(optimizer.stat().st_size))  # zeroed, as a crashed node can leave it: same size
    assert rundir.last_checkpoint(run_dir) == rundir.checkpoint_dir(run_dir, 5)  # sizes only (sweeps look often)
    assert rundir.resume_checkpoint(run_dir) == rundir.checkpoint_dir(run_dir, 4)
    assert caplog.messages == ["warning: skipping checkpoint-5 (optimizer.pt differs from what was saved (sha256))"]


def test_a_run_with_torn_files_resumes_from_what_is_whole_and_ends_as_if_never_hurt(tmp_path, reference, dense, caplog):
    run_dir = copy_run(reference, tmp_path)
    final = run_dir / rundir.FINAL_DIR
    lora_size = (final / "adapter_model.safetensors").stat().st_size
    os.truncate(final / "adapter_model.safetensors", 100)  # killed while final/ was written
    optimizer = rundir.checkpoint_dir(run_dir, 5) / "optimizer.pt"
    size = optimizer.stat().st_size
    os.truncate(optimizer, 100)
    with open(run_dir / rundir.METRICS_FILE, "a") as f:
        f.write('{"step": 6, "rew')  # a row cut by the kill
    assert not rundir.is_finished(run_dir) and rundir.final_or_last_checkpoint(run_dir) == rundir.checkpoint_dir(run_dir, 4)
    assert len(rundir.read_metrics(run_dir)) == 5
    train(resume=run_dir)
    same_metrics(run_dir, reference)
    assert rundir.is_finished(run_dir) and rundir.final_or_last_checkpoint(run_dir) == final
    assert [m for m in caplog.messages if m.startswith("warning")] == [
        f"warning: {final} is incomplete (adapter_model.safetensors has 100 bytes, {lora_size:,} when it was saved); "
        "using checkpoint-4",
        f"warning: skipping checkpoint-5 (optimizer.pt has 100 bytes, {size:,} when it was saved)",
        f"warning: {run_dir / 'metrics.jsonl'}: left out line 6, cut short (a kill or a full disk while it was written)"]


def test_a_truncated_eval_result_counts_as_missing_and_is_evaluated_again(tmp_path, reference, caplog):
    run_dir = copy_run(reference, tmp_path)
    path = rundir.eval_path(run_dir / rundir.FINAL_DIR, "validation")
    result = {"accuracy": 0.25, "n": 1, "split_size": 1, "items": [{"index": 0}]}
    rundir.write_json_atomic(path, result)
    assert rundir.read_eval(run_dir, "validation") == result
    assert sweep.eval_done(run_dir, {})
    os.truncate(path, path.stat().st_size - 3)
    assert rundir.read_eval(run_dir, "validation") is None and not sweep.eval_done(run_dir, {})
    assert caplog.messages[0].startswith(f"warning: {path} is unreadable (Expecting ")


def shard_states(keys: list[bytes]) -> torch.Tensor:
    """Each key's state is a function of the key, so a test can tell a right state from garbage."""
    return torch.tensor([[k[0] + i / 10 for i in range(16)] for k in keys], dtype=torch.float32)


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_a_damaged_expert_cache_shard_is_skipped_never_read(tmp_path, caplog, damage):
    cache = DiskCache(tmp_path, {"expert": "x"})
    kept, lost = [bytes([1]) * 32, bytes([2]) * 32], [bytes([3]) * 32]
    cache.save(kept, shard_states(kept))
    cache.save(lost, shard_states(lost))
    shard = cache.shards()[-1]
    size = shard.stat().st_size
    if damage == "truncated":
        os.truncate(shard, size - 8)
    else:  # the header intact, the states zeroed: only the checksum tells
        data = bytearray(shard.read_bytes())
        data[-64:] = bytes(64)
        shard.write_bytes(bytes(data))
    states = cache.load()
    assert sorted(states) == kept and all(torch.equal(states[k], shard_states([k])[0]) for k in kept)
    assert len(caplog.messages) == 1 and caplog.messages[0].startswith(f"warning: skipping expert-state shard {shard} (")
    assert caplog.messages[0].endswith(f"the shard is kept as {shard.stem}.damaged")
    assert sorted(cache.load()) == kept and len(caplog.messages) == 1  # set aside: warned once


def test_a_failed_shard_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(OSError, match="No space left"):
        DiskCache(tmp_path, {}).save([bytes(32)], torch.zeros(1, 4))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- 4. two writers


def start(target, *args):
    """Another process (forked: this one's imports come along, so it starts at once)."""
    process = multiprocessing.get_context("fork").Process(target=target, args=args)
    process.start()
    return process


def fill_cache(directory: Path, first: int) -> None:
    """What a precompute or a run does to a cache: add shards, load (which merges: MERGE_AT 4 merges often,
    so the writers delete each other's shards)."""
    cache_module.MERGE_AT = 4
    disk = DiskCache(directory, {"expert": "x"})
    for k in range(first, first + 24):
        keys = [bytes([k, j]) * 16 for j in range(3)]
        disk.save(keys, shard_states(keys))
        disk.load()


def test_a_precompute_and_a_run_filling_one_expert_cache_never_show_each_other_half_a_shard(tmp_path):
    writers = [start(fill_cache, tmp_path, first) for first in (0, 12)]  # keys 12..23 written by both
    cache, loads = DiskCache(tmp_path, {"expert": "x"}), 0
    while any(w.is_alive() for w in writers):
        states = cache.load()
        assert all(torch.equal(state, shard_states([key])[0]) for key, state in states.items())
        loads += 1
    assert [w.exitcode for w in writers] == [0, 0] and loads > 0
    expected = {bytes([k, j]) * 16 for k in range(36) for j in range(3)}
    states = cache.load()
    assert set(states) == expected and all(torch.equal(s, shard_states([k])[0]) for k, s in states.items())
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".safetensors")]  # no temporary files left


def write_results(path: Path, writer: str) -> None:
    for k in range(150):
        rundir.write_json_atomic(path, {"writer": writer, "k": k, "items": [writer * 20] * 2000})


def test_two_runs_evaluating_one_checkpoint_never_leave_half_a_result(tmp_path):
    path = tmp_path / "eval-validation.json"
    writers = [start(write_results, path, name) for name in ("a", "b")]
    while any(w.is_alive() for w in writers):
        result = rundir.read_json(path)  # None only before the first write: never half of one
        if result is not None:
            assert result["items"] == [result["writer"] * 20] * 2000
    assert [w.exitcode for w in writers] == [0, 0] and json.loads(path.read_text())["k"] == 149
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
