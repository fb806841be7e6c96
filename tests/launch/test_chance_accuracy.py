"""launch/chance_accuracy.py: a run's accuracy against its own answers given to the items in random orders."""
import json
from pathlib import Path

import pytest

from musketeers.config import load_run_config
from musketeers.data import load_split
from musketeers.rundir import new_run_dir

ROOT = Path(__file__).resolve().parents[2]


def test_one_answer_everywhere_is_exactly_chance(chance):
    pairs = [("5", gold) for gold in "5512346789"]  # every order gives the same two items right
    result = chance.permutation_test(pairs, rounds=200)
    assert result["accuracy"] == result["chance_p99"] == 0.2 and result["p"] == 1.0
    assert result["chance"] == pytest.approx(0.2)


def test_answers_that_follow_the_items_are_above_chance(chance):
    golds = [str(k % 9 + 1) for k in range(90)]
    result = chance.permutation_test([(g, g) for g in golds], rounds=500)
    assert result["accuracy"] == 1.0 and result["chance"] < 0.2 and result["p"] == 1 / 501  # no order does as well


def test_an_evaluation_is_read_against_its_run_split(chance, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "cache"))
    cfg = load_run_config(str(ROOT / "tests/fixtures/task_tiny.yaml"))
    run = new_run_dir(cfg, tmp_path / "run")
    rows = list(load_split(cfg.task, "validation"))[:4]
    items = [{"index": k, "dataset": r["task"], "score": 1.0, "completion": f"{r['answer']}</answer>"} for k, r in enumerate(rows)]
    evaluation = tmp_path / "eval.json"  # what musketeers eval writes, reduced to what the script reads
    evaluation.write_text(json.dumps({"run_dir": str(run), "split": "validation", "accuracy": 1.0, "items": items}))
    chance.main([str(evaluation), "--rounds", "50"])
    assert "accuracy 1.000 on 4 items; by chance" in capsys.readouterr().out
    # the run_dir it records is relative to where `musketeers eval` ran: the run is found from where the JSON lies
    (run / "final").mkdir()
    moved = json.loads(evaluation.read_text()) | {"run_dir": "runs/elsewhere"}
    (run / "final" / "eval-validation.json").write_text(json.dumps(moved))
    chance.main([str(run / "final" / "eval-validation.json"), "--rounds", "50"])
    assert "accuracy 1.000 on 4 items; by chance" in capsys.readouterr().out
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    with pytest.raises(SystemExit):
        chance.main([str(tmp_path / "moved.json")])
    assert "no run directory (a config.yaml) beside it, above it or at its run_dir 'runs/elsewhere'" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"steps": 3}))
    for bad in ("missing.json", "other.json"):  # no file; a JSON that is no evaluation
        with pytest.raises(SystemExit):
            chance.main([str(tmp_path / bad)])
