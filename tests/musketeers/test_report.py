"""`musketeers report`: tables and correlations from hand-made metrics and eval files equal hand-computed values."""
import argparse
import json
import math
from pathlib import Path

import pytest
import yaml

from musketeers import plots
from musketeers import report as rp
from musketeers import runs as run_reading
from musketeers.config import load_run_config
from musketeers.rundir import write_manifest

TASK = str(Path(__file__).parents[1] / "fixtures" / "task_tiny.yaml")
EXPERTS = ("llama-48", "gpt2-64", "qwen2-80")


def make_run(root: Path, name: str, method: str, seed: int, rewards: list[float], *, entropy=None, accuracy=None,
             without_context=None, utilisation=None, evals=None, overrides=(), old=False) -> Path:
    """A run directory written by hand: config.yaml, metrics.jsonl (the score's mean = the reward; eval rows
    {step: accuracy} as training.eval_every logs them, with score = accuracy + 0.1), optionally
    final/eval-validation.json (score = accuracy + 0.05). `old`: the files as runs wrote them before
    accuracy meant the full-score share (rewards/accuracy/mean, no eval/score, `solved` in the eval JSON)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    cfg = load_run_config(TASK, [f"method={method}", f"seed={seed}", f"output_dir={root}", *overrides])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    rows = []
    for k, reward in enumerate(rewards):
        row = {"step": k + 1, "reward": reward, ("rewards/accuracy/mean" if old else "rewards/score/mean"): reward}
        if entropy is not None:
            row["routing/entropy"] = entropy[k]
        if utilisation is not None:
            row.update({f"routing/utilisation/{e}": u for e, u in zip(EXPERTS, utilisation[k])})
        if without_context is not None and k % 2 == 0:
            row["reward_without_context"] = without_context[k]
        rows.append(row)
        if evals and k + 1 in evals:
            scores = {} if old else {"eval/score": evals[k + 1] + 0.1}
            rows.append({"step": k + 1, "eval/accuracy": evals[k + 1], "eval/accuracy/chain_sum": evals[k + 1], **scores})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if accuracy is not None:
        (run_dir / "final").mkdir()
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            (run_dir / "final" / f).write_text("{}")
        fields = {"accuracy": accuracy + 0.05, "solved": accuracy} if old else {"accuracy": accuracy, "score": accuracy + 0.05}
        write_manifest(run_dir / "final")  # sealed, as train() leaves it
        (run_dir / "final" / "eval-validation.json").write_text(json.dumps(
            {**fields, "n": 16, "split": "validation", "split_size": 16,
             "per_dataset": {"chain_sum": {**fields, "n": 16}}}))
    return run_dir


def table_row(markdown: str, section: str, label: str) -> list[str]:
    """The cells of the row `label` in the first table after the heading containing `section`."""
    text = markdown[markdown.index(section):]
    line = next(l for l in text.splitlines() if l.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "sweep"
    ramp = [0.1 * k for k in range(10)]  # last 10% of 10 steps = the last step
    util = [(0.3 + 0.02 * k, 0.4 - 0.02 * k, 0.3) for k in range(10)]
    for seed, acc in ((0, 0.5), (1, 0.6), (2, 0.7)):
        make_run(root, f"p{seed}", "perceiver", seed, [r + seed for r in ramp], entropy=[1.0 - r for r in ramp],
                 accuracy=acc, utilisation=util, without_context=[r / 2 for r in ramp], evals={5: acc / 2, 10: acc})
    for seed, acc in ((0, 0.2), (1, 0.4)):
        make_run(root, f"s{seed}", "single", seed, [0.0] * 9 + [0.3 + 0.1 * seed], accuracy=acc)
    make_run(root, "p-m2", "perceiver", 0, [1, 2, 3, 4, 5], entropy=[1, 3, 2, 5, 4], accuracy=0.9,
             overrides=["adapter.num_queries=2"])
    return root


def test_tables_equal_hand_computed_values(runs, tmp_path):
    text = rp.report([runs], tmp_path / "out")
    # accuracy: perceiver 50, 60, 70 -> mean 60, sample std (ddof=1) 10; single 20, 40 -> 30 +- 14.14
    assert table_row(text, "Held-out accuracy", "perceiver (tiny), num_queries=4") == ["60.00 ± 10.00"]
    assert table_row(text, "Held-out accuracy", "single") == ["30.00 ± 14.14"]
    assert table_row(text, "Held-out accuracy", "perceiver (tiny), num_queries=2") == ["90.00 (1 seed)"]
    # training reward = last step (10% of 10 steps): perceiver 0.9, 1.9, 2.9 -> 190 +- 100 (%); single 0.3, 0.4
    assert table_row(text, "Training reward", "perceiver (tiny), num_queries=4") == ["190.00 ± 100.00"]
    assert table_row(text, "Training reward", "single") == ["35.00 ± 7.07"]
    # rho: reward up while entropy down = -1 for p0..p2; p-m2: 1 - 6 * 4 / (5 * 24) = 0.8; singles: none
    assert table_row(text, "## Runs", "p0")[-1] == "-1.000" and table_row(text, "## Runs", "p-m2")[-1] == "0.800"
    assert table_row(text, "## Runs", "s0")[-1] == "—"
    assert table_row(text, "## Runs", "p1")[-2] == "60.00 (step 10)" and table_row(text, "## Runs", "s0")[-2] == "—"
    assert table_row(text, "## Runs", "p1")[-4:-2] == ["60.00 (n=16)", "65.00"]  # held-out accuracy, score
    assert f"over 4 run(s): {(-3 + 0.8) / 4:.3f}" in text
    summary = {Path(r["run"]).name: r for r in json.loads((tmp_path / "out" / "summary.json").read_text())}
    assert summary["p1"]["final_reward"] == pytest.approx(1.9) and summary["p1"]["accuracy"] == 0.6
    assert summary["s0"]["accuracy"] == 0.2 and math.isnan(summary["s0"]["rho"])
    assert summary["p1"]["score"] == pytest.approx(0.65)


def test_files_of_older_runs_are_read_as_today_or_left_out_with_a_note(tmp_path):
    """An eval JSON with `solved` is read as accuracy = solved, score = its old accuracy; eval/accuracy logged
    during training without eval/score (it was the mean score) is left out; rewards/accuracy/mean is the score."""
    make_run(tmp_path, "old", "perceiver", 0, [0.2, 0.4], accuracy=0.5, evals={2: 0.3}, without_context=[0.1, 0.0], old=True)
    make_run(tmp_path, "new", "perceiver", 1, [0.2, 0.4], accuracy=0.7, evals={2: 0.3}, without_context=[0.1, 0.0])
    run = rp.load_run(tmp_path / "old")
    assert run.eval["accuracy"] == 0.5 and run.eval["score"] == pytest.approx(0.55) and "solved" not in run.eval
    assert run.eval["per_dataset"]["chain_sum"]["accuracy"] == 0.5 and run.eval["old_fields"]
    assert run.held_out_accuracy() == {} and rp.load_run(tmp_path / "new").held_out_accuracy() == {2: 0.3}
    assert run.score_series() == {1: 0.2, 2: 0.4}
    text = rp.report([tmp_path], tmp_path / "out")
    assert table_row(text, "Held-out accuracy", "perceiver (tiny)") == ["60.00 ± 14.14"]
    assert "1 eval JSON(s) predate the accuracy/score names" in text
    assert "Left out of eval/accuracy during training: old," in text
    assert table_row(text, "## Runs", "old")[-2] == "—" and table_row(text, "## Runs", "new")[-2] == "30.00 (step 2)"


def test_every_plot_is_written_when_there_is_data(runs, tmp_path):
    out = tmp_path / "out"
    text = rp.report([runs], out)
    for kind in plots.PLOTS:
        assert (out / f"{kind}-tiny.png").stat().st_size > 10_000, kind
    assert "skipped" not in text


def test_utilisation_change_is_last_tenth_minus_first_step(runs):
    run = rp.load_run(runs / "p0")
    assert run_reading.change_from_start(run, "routing/utilisation/llama-48") == pytest.approx(0.18)
    assert run_reading.change_from_start(run, "routing/utilisation/gpt2-64") == pytest.approx(-0.18)


def test_without_eval_json_the_report_says_which_number_it_shows(tmp_path):
    make_run(tmp_path, "a", "single", 0, [0.1, 0.2])
    make_run(tmp_path, "b", "single", 1, [0.3, 0.5])
    text = rp.report([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert "Held-out accuracy" not in text and "not accuracy" in text
    assert table_row(text, "Training reward", "single") == ["35.00 ± 21.21"]  # last steps 0.2, 0.5
    for kind in ("utilisation", "utilisation_change", "reward_without_context", "eval_accuracy", "accuracy_vs_queries"):
        assert f"skipped: {kind}-tiny.png" in text and not (tmp_path / "out" / f"{kind}-tiny.png").exists()
    assert (tmp_path / "out" / "reward_entropy-tiny.png").exists()


def test_mean_std_uses_ddof_1():
    mean, std = rp.mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))
    assert math.isnan(rp.mean_std([1.0])[1])


def test_cli_parser_and_bad_paths(runs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    rp.add_report_parser(parser.add_subparsers())
    args = parser.parse_args(["report", str(runs / "p0"), str(runs / "p1"), "--out", str(tmp_path / "o")])
    args.func(args)
    assert "# musketeers report (2 runs)" in capsys.readouterr().out
    with pytest.raises(run_reading.ReportError, match="does not exist"):
        rp.report([tmp_path / "missing"], tmp_path / "o")
    with pytest.raises(run_reading.ReportError, match="no run directories"):
        rp.report([tmp_path / "o"], tmp_path / "o2")


def test_rows_of_a_setting_come_in_numeric_and_pooling_order(tmp_path):
    """Figure 6's m sorts as numbers (2 < 16 < 128, not as text); Table 2's poolings as POOLINGS lists them."""
    for m in (128, 2, 16):
        make_run(tmp_path / "m", f"m{m}", "perceiver", 0, [0.1], overrides=[f"adapter.num_queries={m}"])
    text = rp.report([tmp_path / "m"], tmp_path / "out-m")
    rows = [l.split("|")[1].strip() for l in text[text.index("## Training reward"):].splitlines() if "num_queries=" in l]
    assert rows[:3] == ["perceiver (tiny), num_queries=2", "perceiver (tiny), num_queries=16", "perceiver (tiny), num_queries=128"]
    for pooling in ("random_layer", "first_token", "last_token"):
        make_run(tmp_path / "p", pooling, "perceiver", 0, [0.1], overrides=[f"team.pooling={pooling}"])
    text = rp.report([tmp_path / "p"], tmp_path / "out-p")
    rows = [l.split("|")[1].strip() for l in text[text.index("## Training reward"):].splitlines() if "pooling=" in l]
    assert rows[:3] == [f"perceiver (tiny), pooling={p}" for p in ("last_token", "first_token", "random_layer")]


def test_reward_without_context_and_utilisation_tables(runs, tmp_path):
    text = rp.report([runs], tmp_path / "out")
    # p0..p2 log reward_without_context on steps 1, 3, ..., 9; last 10% of those 5 steps = step 9:
    # with C (the score's mean, rewards/score/mean, here = reward) 0.8 + seed -> 80, 180, 280 %; without C 0.4 -> 40 %
    assert table_row(text, "Training score with and without C", "perceiver (tiny), num_queries=4") == [
        "tiny", "5", "180.00 ± 100.00", "40.00 ± 0.00", "140.00 ± 100.00"]
    assert "| single |" not in text[text.index("with and without C"):text.index("## Expert utilisation")]
    # utilisation of llama-48: 0.30 at step 1, 0.48 at step 10 (the last 10%), the same in every seed
    section = text[text.index("## Expert utilisation"):text.index("## Runs")]
    assert "| perceiver (tiny), num_queries=4 | tiny | llama-48 | utilisation | 0.300 ± 0.000 | 0.480 ± 0.000 | 0.180 ± 0.000 |" in section
    assert "| perceiver (tiny), num_queries=4 | tiny | gpt2-64 | utilisation | 0.400 ± 0.000 | 0.220 ± 0.000 | -0.180 ± 0.000 |" in section
