"""Experiment tracking as TRL users know it: `training.report_to` names the trackers, each a transformers
callback that logs what the trainer logs (train/*, eval/*) and also records the run's resolved config.

    tensorboard   (the default) <run_dir>/tensorboard: the scalars; the resolved config as a text summary
                  ("config") and as hparams (dotted keys, for TensorBoard's HParams tab), beside
                  transformers' own "args" and "model_config" texts
    wandb         (optional extra: pip install 'musketeers[wandb]') transformers' WandbCallback, configured
                  by wandb's own environment (WANDB_PROJECT, WANDB_MODE=offline, WANDB_DIR, ...); the run
                  is named after the run directory, its config holds the resolved config under "musketeers"
    none          no tracker (metrics.jsonl is always written)

Several are comma-separated (tensorboard,wandb). Which names are valid is checked with the config
(musketeers.config.REPORT_TO).

It may import config and rundir; train.py adds its callbacks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback, WandbCallback

from musketeers.config import RunConfig, flat_keys, trackers
from musketeers.rundir import TENSORBOARD_DIR


def tracker_callbacks(cfg: RunConfig, run_dir: Path) -> list[TrainerCallback]:
    """One callback per tracker in training.report_to."""
    return [{"tensorboard": RunTensorBoard, "wandb": RunWandb}[name](cfg, run_dir) for name in trackers(cfg.training.report_to)]


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as dotted keys with scalar values (lists and mappings as JSON text)."""
    return {key: value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)
            for key, value in flat_keys(cfg.to_dict()).items()}


class RunTensorBoard(TensorBoardCallback):
    """transformers' TensorBoard callback writing into the run directory, plus the resolved config."""

    def __init__(self, cfg: RunConfig, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        super().__init__(tb_writer=SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR)))
        self.cfg = cfg

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if state.is_world_process_zero and self.tb_writer is not None:
            self.write_config()

    def write_config(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        text = yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
        self.tb_writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()))  # a markdown code block
        metrics = {"train/reward": 0.0, **({"eval/accuracy": 0.0} if self.cfg.training.eval_every else {})}  # tags only
        for summary in hparams(flat_config(self.cfg), metrics):  # experiment, session start, session end
            self.tb_writer.file_writer.add_summary(summary)
        self.tb_writer.flush()


class RunWandb(WandbCallback):
    """transformers' wandb callback (it starts the run with the trainer's arguments as config), plus the
    resolved config; the run is finished when training ends, so a next run in the same process starts its own."""

    def __init__(self, cfg: RunConfig, run_dir: Path):
        super().__init__()
        self.cfg = cfg

    def setup(self, args, state, model, **kwargs):
        super().setup(args, state, model, **kwargs)
        if state.is_world_process_zero and self._wandb.run is not None:
            self._wandb.config.update({"musketeers": self.cfg.to_dict()}, allow_val_change=True)

    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)
        if state.is_world_process_zero and self._wandb.run is not None:
            self._wandb.finish()
            self._initialized = False
