"""Expert forwards in a GRPO-shaped run (launch/benchmark.py): behaviour, not time.

B prompts x G completions per step, a prompt set of 2B unique questions: each expert runs once per
new prompt (not once per completion), in one batched call per step, and not at all on revisits.
"""
import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "launch" / "benchmark.py"
B, G, EXPERTS = 2, 3, 3


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_experts_run_once_per_unique_prompt_and_never_on_revisits(benchmark, tmp_path):
    args = benchmark.parse_args(["--configs", "d", "--steps", "3", "--prompts", str(B), "--unique-prompts", str(2 * B),
                                 "--generations", str(G), "--max-tokens", "3", "--threads", "1",
                                 "--policy", "random:llama:hidden_size=32,tokenizer=bytes"])
    trainer = benchmark.build_trainer("d", args, tmp_path)
    pool = trainer.conditioner.pool
    calls = []  # (expert, questions in the batch) of every real model forward
    for index, worker in enumerate(pool.workers):
        texts = {tuple(worker.input.ids([q])[0]): q for q in benchmark.questions(2 * B)}  # ids -> the question read

        def counted(ids, inner=worker.encode_ids, index=index, texts=texts):
            calls.append((index, [texts[tuple(row)] for row in ids]))
            return inner(ids)
        worker.encode_ids = counted

    probe = benchmark.StepProbe(trainer, cuda=False)
    errors = {}
    benchmark.train_one("d", trainer, probe, None, errors)
    pool.shutdown()
    assert not errors, errors

    per_expert = B  # forwards per expert on a step of new prompts
    assert [row["expert_forwards"] for row in probe.rows] == [EXPERTS * per_expert, EXPERTS * per_expert, 0]
    assert [row["cache_hits"] for row in probe.rows][-1] == EXPERTS * B  # the conditioner asks once per distinct prompt: each hits
    assert [len(qs) for _, qs in calls] == [per_expert] * (2 * EXPERTS)  # one batched call per expert per new step
    assert all(len(set(qs)) == len(qs) for _, qs in calls)  # a prompt repeated G times runs once
    seen = {i: [q for j, qs in calls if j == i for q in qs] for i in range(EXPERTS)}
    assert all(sorted(qs) == sorted(benchmark.questions(2 * B)) for qs in seen.values())
    assert all(row["tokens"] == B * G * 3 for row in probe.rows)  # min_new_tokens: exactly max-tokens each
