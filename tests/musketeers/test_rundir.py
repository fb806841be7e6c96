"""musketeers.rundir: names, checkpoint discovery, metrics on resume, eval results, atomic writes."""
import json
import re
from pathlib import Path

import pytest

from musketeers import rundir
from musketeers.config import load_run_config

TASK = str(Path(__file__).parents[1] / "fixtures" / "task_tiny.yaml")


def config(tmp_path, *overrides):
    return load_run_config(TASK, [f"output_dir={tmp_path}", *overrides])


def checkpoint(folder: Path, complete: bool = True, adapter: bool = False, trainer_state: bool = False) -> Path:
    """A checkpoint folder; complete = its LoRA is saved and the manifest written after it (incomplete: killed
    while the LoRA was written)."""
    folder.mkdir(parents=True)
    for name in rundir.LORA_FILES[: 2 if complete else 1]:
        (folder / name).write_text("{}")
    if adapter:
        (folder / rundir.ADAPTER_FILE).write_text("")
    if trainer_state:
        (folder / rundir.TRAINER_STATE_FILE).write_text("{}")
    if complete:
        rundir.write_manifest(folder)
    return folder


def test_run_names_and_a_new_run_directory_with_its_config(tmp_path):
    cfg = config(tmp_path, "seed=3")
    assert rundir.run_name(cfg) == "tiny-perceiver-tiny-seed3"
    assert rundir.run_name(config(tmp_path, "method=single"), "-num_queries2") == "tiny-single-none-seed0-num_queries2"

    run_dir = rundir.new_run_dir(cfg)
    assert run_dir.parent == tmp_path and re.fullmatch(r"tiny-perceiver-tiny-seed3-\d{8}-\d{6}", run_dir.name)
    assert rundir.is_run_dir(run_dir) and rundir.read_config(run_dir).to_dict() == cfg.to_dict()
    assert [p.name for p in run_dir.iterdir()] == [rundir.CONFIG_FILE]

    assert rundir.new_run_dir(cfg, tmp_path / "sweep" / "named") == tmp_path / "sweep" / "named"
    with pytest.raises(FileExistsError):  # a sweep's deterministic name is never reused silently
        rundir.new_run_dir(cfg, tmp_path / "sweep" / "named")
    assert rundir.log_path(tmp_path / "sweep" / "named") == tmp_path / "sweep" / "logs" / "named.log"


def test_checkpoint_names_are_the_ones_trl_writes_and_finds(tmp_path):
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

    assert rundir.CHECKPOINT_PREFIX == f"{PREFIX_CHECKPOINT_DIR}-"
    assert rundir.checkpoint_dir(tmp_path, 12) == tmp_path / "checkpoint-12"
    assert rundir.checkpoint_step(tmp_path / "checkpoint-12") == 12
    assert rundir.last_checkpoint(tmp_path) is None
    for step in (9, 10):
        checkpoint(tmp_path / f"checkpoint-{step}", trainer_state=True)
    (tmp_path / "checkpoint-11").write_text("")  # a file, not a folder
    (tmp_path / "checkpoint-x").mkdir()
    assert rundir.last_checkpoint(tmp_path) == Path(get_last_checkpoint(str(tmp_path))) == tmp_path / "checkpoint-10"
    checkpoint(tmp_path / "checkpoint-12", complete=False, trainer_state=True)  # a kill before its manifest
    assert Path(get_last_checkpoint(str(tmp_path))) == tmp_path / "checkpoint-12"  # TRL would resume from it
    assert rundir.last_checkpoint(tmp_path) == rundir.resume_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert rundir.checkpoints_after(tmp_path, 10) == [tmp_path / "checkpoint-12"]


def test_discovery_picks_final_over_the_highest_complete_checkpoint(tmp_path):
    assert rundir.final_or_last_checkpoint(tmp_path) is None
    checkpoint(tmp_path / "checkpoint-2")
    checkpoint(tmp_path / "checkpoint-10")
    checkpoint(tmp_path / "checkpoint-20", complete=False)  # killed while saving
    assert rundir.final_or_last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # by number, not by name
    checkpoint(tmp_path / "final", complete=False)
    assert rundir.final_or_last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    (tmp_path / "final" / rundir.LORA_FILES[1]).write_text("{}")
    assert rundir.final_or_last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # no manifest yet: not sealed
    rundir.write_manifest(tmp_path / "final")
    assert rundir.final_or_last_checkpoint(tmp_path) == tmp_path / "final"


@pytest.mark.parametrize("method, adapter_saved, finished", [
    ("perceiver", False, False), ("perceiver", True, True), ("single", False, True), ("text_hints", False, True)])
def test_finished_means_final_holds_what_the_method_saves(tmp_path, method, adapter_saved, finished):
    run_dir = rundir.new_run_dir(config(tmp_path, f"method={method}"))
    assert not rundir.is_finished(run_dir)
    checkpoint(run_dir / rundir.FINAL_DIR, adapter=adapter_saved)
    assert rundir.is_finished(run_dir) == finished


def test_the_done_marker_finishes_a_run_and_counts_its_steps(tmp_path):
    rundir.mark_done(tmp_path)
    assert rundir.is_finished(tmp_path) and json.loads((tmp_path / rundir.DONE_FILE).read_text())["steps"] == 0
    for step in (1, 2, 3):
        rundir.append_metrics(tmp_path, {"step": step, "reward": 0.5})
    rundir.mark_done(tmp_path)
    assert json.loads((tmp_path / rundir.DONE_FILE).read_text())["steps"] == 3


def test_truncation_keeps_the_rows_up_to_the_resumed_step(tmp_path):
    assert rundir.read_metrics(tmp_path) == []
    for step in (1, 2, 3, 4):
        rundir.append_metrics(tmp_path, {"step": step, "reward": step / 10})
    rundir.truncate_metrics(tmp_path, 2)
    assert rundir.read_metrics(tmp_path) == [{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.2}]
    rundir.append_metrics(tmp_path, {"step": 3, "reward": 0.0})  # the resumed run logs step 3 again
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == [rundir.METRICS_FILE]


def test_eval_results_are_read_where_they_are_written(tmp_path):
    assert rundir.read_eval(tmp_path, "validation") is None
    last = checkpoint(tmp_path / "checkpoint-4")
    rundir.write_json_atomic(rundir.eval_path(last, "validation"), {"accuracy": 0.25})
    rundir.write_json_atomic(rundir.baseline_eval_path(tmp_path, "validation"), {"accuracy": 0.1})
    assert rundir.eval_path(last, "validation") == last / "eval-validation.json"
    assert rundir.baseline_eval_path(tmp_path, "test") == tmp_path / "eval-test-baseline.json"
    assert rundir.read_eval(tmp_path, "validation") == {"accuracy": 0.25}
    assert rundir.read_eval(tmp_path, "validation", baseline=True) == {"accuracy": 0.1}
    assert rundir.read_eval(tmp_path, "test") is None
    tag = rundir.sampling_tag(3, 0.6, 0.9)  # a sampled eval has its own file; what report reads stays greedy
    rundir.write_json_atomic(rundir.eval_path(last, "validation", tag), {"mean@k": 0.5})
    assert rundir.eval_path(last, "validation", tag) == last / "eval-validation-sampled-k3-t0.6-p0.9.json"
    assert rundir.baseline_eval_path(tmp_path, "test", tag) == tmp_path / "eval-test-baseline-sampled-k3-t0.6-p0.9.json"
    assert rundir.read_eval(tmp_path, "validation") == {"accuracy": 0.25}
    checkpoint(tmp_path / "final")  # training ended: the final model's result counts, none yet
    assert rundir.read_eval(tmp_path, "validation") is None


def test_a_failed_atomic_write_leaves_the_old_file_and_nothing_else(tmp_path, monkeypatch):
    path = tmp_path / "eval-validation.json"
    rundir.write_json_atomic(path, {"accuracy": 0.5})
    with pytest.raises(TypeError):  # not JSON: fails before touching the disk
        rundir.write_json_atomic(path, {"accuracy": object()})

    def rename_fails(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(rundir.os, "replace", rename_fails)
    with pytest.raises(OSError, match="disk full"):
        rundir.write_text_atomic(path, "half")
    assert json.loads(path.read_text()) == {"accuracy": 0.5} and [p.name for p in tmp_path.iterdir()] == [path.name]
