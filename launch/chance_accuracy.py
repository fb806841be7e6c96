"""Is a run's held-out accuracy above what its own answers would score by chance?

A policy that writes the same answer everywhere scores that answer's share of the split, and one that
writes answers from some distribution, whatever the item, scores about sum_k p_written(k) p_gold(k).
Neither has read the item. This compares an evaluation's accuracy with its own written answers given
to the items in random orders (a permutation test): the chance mean, its 99th percentile and p, the
share of orders that score at least as well. Above chance, the answers depend on the items; for a
task the policy cannot compute (configs/tasks/demo_bits.yaml), that dependence came through C
(docs/signal.md).

    musketeers eval RUN --limit 500                                   # writes RUN/final/eval-validation.json
    python launch/chance_accuracy.py RUN/final/eval-validation.json [...] [--rounds 5000]

Answers are compared as strings: the reply's <answer> (prefill + completion, as the reward reads it)
against the gold answer, both stripped. That is the task's accuracy where its score is an exact match
(count_bits); where it is not, the line says so and the two accuracies differ.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reasoning_gym.utils import extract_answer  # noqa: E402

from musketeers.data import load_split  # noqa: E402
from musketeers.rundir import is_run_dir, read_config  # noqa: E402
from rewards.functions import gold_answer_text, reply_text  # noqa: E402


def run_dir_of(path: Path, evaluation: dict) -> Path:
    """The run an eval JSON belongs to: the folder it lies in (RUN/ for --baseline) or the one above (RUN/final/),
    else the run_dir it records (relative to where `musketeers eval` ran, so it may not resolve from here)."""
    for candidate in (path.parent, path.parent.parent, Path(evaluation["run_dir"])):
        if is_run_dir(candidate):
            return candidate
    raise ValueError(f"no run directory (a config.yaml) beside it, above it or at its run_dir {evaluation['run_dir']!r}")


def written_and_gold(evaluation: dict, run_dir: Path) -> list[tuple[str, str]]:
    """(written answer, gold answer) of every item of a greedy evaluation (musketeers/evaluate.py's JSON)."""
    if not evaluation["items"] or "completion" not in evaluation["items"][0]:
        raise ValueError("a sampled (--samples) or empty evaluation; give a greedy one")
    cfg = read_config(run_dir)
    rows = load_split(cfg.task, evaluation["split"])
    pairs = []
    for item in evaluation["items"]:
        written = extract_answer(reply_text(item["completion"], cfg.task.assistant_prefill)) or ""
        pairs.append((written.strip(), gold_answer_text(rows[item["index"]]).strip()))
    return pairs


def permutation_test(pairs: list[tuple[str, str]], rounds: int = 5000, seed: int = 0) -> dict[str, float]:
    """Accuracy of the pairs, and of the written answers matched to the gold answers in `rounds` random
    orders: their mean, 99th percentile and p (the share at least as high, the observed order counted)."""
    written, gold = [w for w, _ in pairs], [g for _, g in pairs]
    accuracy = sum(w == g for w, g in pairs) / len(pairs)
    rng, shuffled, chance = random.Random(seed), list(gold), []
    for _ in range(rounds):
        rng.shuffle(shuffled)
        chance.append(sum(w == g for w, g in zip(written, shuffled)) / len(pairs))
    chance.sort()
    return {"accuracy": accuracy, "chance": sum(chance) / rounds, "chance_p99": chance[int(0.99 * (rounds - 1))],
            "p": (1 + sum(c >= accuracy for c in chance)) / (1 + rounds), "n": len(pairs)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evaluations", nargs="+", type=Path, help="eval JSON files written by `musketeers eval`")
    parser.add_argument("--rounds", type=int, default=5000, help="random orders of the written answers")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    for path in args.evaluations:
        if not path.is_file():
            parser.error(f"{path}: no such evaluation file (musketeers eval writes RUN/final/eval-<split>.json)")
        try:
            evaluation = json.loads(path.read_text())
            result = permutation_test(written_and_gold(evaluation, run_dir_of(path, evaluation)), args.rounds)
        except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
            parser.error(f"{path}: not a greedy evaluation written by `musketeers eval` ({error!r})")
        differs = "" if abs(result["accuracy"] - evaluation["accuracy"]) < 1e-9 else \
            f" (the task's own accuracy: {evaluation['accuracy']:.3f}; its score is not an exact match)"
        print(f"{path}: accuracy {result['accuracy']:.3f} on {result['n']} items{differs}; by chance "
              f"{result['chance']:.3f} (99th percentile {result['chance_p99']:.3f}), p = {result['p']:.4f}")


if __name__ == "__main__":
    main()
