"""training.report_to: TensorBoard event files and a wandb offline run hold the logged scalars and the resolved config."""
import json
import textwrap
from pathlib import Path

import pytest
import yaml

from musketeers.config import load_run_config
from musketeers.rundir import read_metrics
from musketeers.train import train

TASK = str(Path(__file__).parents[1] / "fixtures" / "task_tiny.yaml")


def tiny_config(tmp_path, *overrides):
    return load_run_config(TASK, [f"output_dir={tmp_path}", *overrides])


def test_tensorboard_events_hold_the_scalars_and_the_resolved_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    run_dir = train(tiny_config(tmp_path, "training.eval_every=1", "training.eval_size=4", "training.learning_rate=2e-4"))
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    rows = read_metrics(run_dir)
    steps = [r for r in rows if "reward" in r]
    assert [(e.step, e.value) for e in events.Scalars("train/reward")] == [(r["step"], pytest.approx(r["reward"])) for r in steps]
    assert [(e.step, e.value) for e in events.Scalars("train/kl")] == [(r["step"], pytest.approx(r["kl"], abs=1e-9)) for r in steps]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [e.step for e in events.Scalars("eval/accuracy")] == [r["step"] for r in evals] == [1, 2]
    assert "eval/accuracy/chain_sum" in events.Tags()["scalars"]

    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert yaml.safe_load(textwrap.dedent(text)) == yaml.safe_load((run_dir / "config.yaml").read_text())
    session = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["training.learning_rate"].number_value == 2e-4 and hparams["method"].string_value == "perceiver"
    assert hparams["training.report_to"].string_value == "tensorboard"


def test_report_to_none_writes_no_tracker_files(tmp_path):
    run_dir = train(tiny_config(tmp_path, "training.report_to=none", "training.max_steps=1"))
    assert not (run_dir / "tensorboard").exists() and [r["step"] for r in read_metrics(run_dir)] == [1]


def wandb_records(path: Path):
    """The records of an offline run's run-<id>.wandb: a 7-byte header (":W&B", magic, version), then a
    LevelDB-style log (32 KiB blocks of chunks: crc32, length, type FULL/FIRST/MIDDLE/LAST) of protobuf Records."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield Record.FromString(pending)


def test_wandb_offline_run_holds_the_resolved_config_and_the_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is an optional extra (pip install 'musketeers[wandb]'), not installed here")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = train(tiny_config(tmp_path / "runs", "training.report_to=wandb", "training.eval_every=2", "training.eval_size=4"))
    (offline,) = (tmp_path / "wandb-dir" / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    records = list(wandb_records(log))
    config = {item.key: json.loads(item.value_json) for r in records if r.HasField("config") for item in r.config.update}
    assert config["musketeers"] == yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["run_name"] == run_dir.name  # the trainer's own arguments, as transformers records them
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records if r.HasField("history")]
    steps = [r for r in read_metrics(run_dir) if "reward" in r]
    assert [h["train/reward"] for h in history if "train/reward" in h] == pytest.approx([r["reward"] for r in steps])
    assert [h["train/global_step"] for h in history if "eval/accuracy" in h] == [2]
    assert not (run_dir / "tensorboard").exists()
