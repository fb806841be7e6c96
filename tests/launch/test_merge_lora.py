"""launch/merge_lora.py: a run's LoRA merged into its policy, saved as a model folder a later run loads."""
from pathlib import Path

import pytest
import torch

from experts.models import load_model
from musketeers.config import load_run_config
from musketeers.policy import build_policy
from musketeers.rundir import new_run_dir, write_manifest

ROOT = Path(__file__).resolve().parents[2]


def trained_run(tmp_path):
    """A run directory whose final/ holds a LoRA with non-zero B (as if trained), and that PEFT model."""
    from peft import get_peft_model

    cfg = load_run_config(str(ROOT / "tests/fixtures/task_tiny.yaml"))
    run = new_run_dir(cfg, tmp_path / "run")
    model, _, lora = build_policy(cfg)
    peft = get_peft_model(model, lora)
    torch.manual_seed(0)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data.normal_(std=0.5)
    peft.save_pretrained(run / "final")
    write_manifest(run / "final")
    return run, peft.eval()


def test_the_merged_folder_loads_as_a_policy_that_computes_what_base_plus_lora_did(merge_lora, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "cache"))
    run, peft = trained_run(tmp_path)
    out = tmp_path / "models" / "warm"
    merge_lora.main([str(run), "--out", str(out)])
    assert f"use it as policy.model={out}" in capsys.readouterr().out
    merged, tokenizer = load_model(str(out), dtype="float32", device="cpu")
    ids = tokenizer("3 + 4 =", return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got = peft(ids).logits, merged(ids).logits
        base = peft.get_base_model()
        with peft.disable_adapter():
            untouched = base(ids).logits
    assert (expected - untouched).abs().max() > 1e-2  # the LoRA changes the logits, and the merge keeps that
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert [p.name for p in out.parent.iterdir()] == ["warm"]  # no staging folder left


def test_bad_input_is_one_clear_line_and_writes_nothing(merge_lora, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "cache"))
    run, _ = trained_run(tmp_path)
    out = tmp_path / "out"
    cases = [([str(tmp_path), "--out", str(out)], "not a run directory (no config.yaml)"),
             ([str(run), "--out", str(run)], "already exists; give a new folder"),
             ([str(run), "--out", str(out), "--checkpoint", "checkpoint-7"], "checkpoint-7: no such folder; valid: final or checkpoint-N"),
             ([str(run), "--out", str(out), "--checkpoint", "."], "no LoRA adapter|manifest.json")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            merge_lora.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert any(part in err for part in message.split("|")), err
    assert not out.exists()
