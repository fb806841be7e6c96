"""Oracle experts (experts/oracle.py): the encoding, the answer table and its derangement, and an
oracle served by the pool (in-process whatever the backend, through the disk cache) in a run's config."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from experts import ExpertPool
from experts.config import ExpertConfig, TeamConfig
from experts.models import ModelLoadError, load_model, model_identity, parse_model_ref
from experts.oracle import (ALPHABET, END, OTHER, POSITIONS, SYMBOLS, WIDTH, AnswerTable, OracleError,
                            derangement, encode_answer)
from musketeers.config import ConfigError, load_run_config

FIXTURES = Path(__file__).parents[1] / "fixtures"
TINY = ExpertConfig("llama-48", "random:llama:hidden_size=48,tokenizer=bytes", dtype="float32", device="cpu")
PAIRS = [("What is 2 + 2?", "4"), ("What is 9 - 12?", "-3"), ("What is 7 + 8?", "15"), ("Spell cat.", "cat")]


def hot(state: torch.Tensor) -> list[int]:
    return state.nonzero().flatten().tolist()


def test_the_encoding_writes_the_answer_character_by_character():
    state = encode_answer(" -15 ")  # written as "-15": stripped
    assert state.shape == (WIDTH,) and WIDTH == POSITIONS * SYMBOLS + 32 == 144
    chars = [ALPHABET.index("-"), ALPHABET.index("1"), ALPHABET.index("5")] + [END] * (POSITIONS - 3)
    assert hot(state)[:POSITIONS] == [j * SYMBOLS + c for j, c in enumerate(chars)]
    assert len(hot(state)) == POSITIONS + 1 and state.sum() == POSITIONS + 1  # one per slot, one hash slot
    assert hot(encode_answer("cat"))[:3] == [OTHER, SYMBOLS + OTHER, 2 * SYMBOLS + OTHER]
    answers = [str(n) for n in range(-99, 1000)] + ["dog", "cat", "1/2", "3.25"]
    assert len({tuple(hot(encode_answer(a))) for a in answers}) == len(answers)  # no two answers alike


def test_the_table_answers_and_the_shuffled_oracle_serves_another_items_answer():
    train, held_out = PAIRS, [("What is 1 + 1?", "2"), ("What is 3 + 3?", "6"), ("What is 5 + 5?", "10")]
    table = AnswerTable([train, held_out])
    assert len(table) == 7 and table.conflicts == 0
    assert table.lookup("What is 7 + 8?", "answer") == "15"
    for split in (train, held_out):  # a permutation within the split: the same answers, none its own item's
        served = [table.lookup(q, "shuffled") for q, _ in split]
        assert sorted(served) == sorted(a for _, a in split)
        assert all(s != a for s, (_, a) in zip(served, split))
    with pytest.raises(OracleError, match="'What is 4 \\+ 4\\?' is not among the task's items"):
        table.lookup("What is 4 + 4?", "answer")
    assert AnswerTable([train]).fingerprint != AnswerTable([train[::-1]]).fingerprint
    for n in (2, 3, 10, 101):
        perm = derangement(n)
        assert sorted(perm) == list(range(n)) and all(p != k for k, p in enumerate(perm)) and perm == derangement(n)


def test_oracle_references_are_team_experts_only():
    assert parse_model_ref("oracle:shuffled").kind == "oracle"
    assert model_identity("oracle:answer") == "oracle:answer@encoding1"
    with pytest.raises(ValueError, match="unknown oracle 'oracle:answers'; valid: oracle:answer, oracle:shuffled"):
        parse_model_ref("oracle:answers")
    with pytest.raises(ModelLoadError, match="oracle expert: it loads no model"):
        load_model("oracle:answer")
    with pytest.raises(ConfigError, match="policy.model: 'oracle:answer' is an oracle expert"):
        load_run_config(str(FIXTURES / "task_tiny.yaml"), ["policy.model=oracle:answer"])


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_the_pool_serves_an_oracle_in_process_through_the_disk_cache(tmp_path, backend):
    oracle = ExpertConfig("oracle", "oracle:answer", dtype="float32", num_cpus=0)
    experts = [oracle, TINY] if backend == "local" else [oracle]  # ray: the oracle alone, no actor starts
    team = TeamConfig(name="t", backend=backend, experts=experts, cache_dir=str(tmp_path))
    table = AnswerTable([PAIRS])
    questions = [q for q, _ in PAIRS] + [PAIRS[0][0]]
    with ExpertPool(team, None, answers=table) as pool:
        states = pool.encode(questions)
        assert pool.hidden_sizes[0] == WIDTH and pool.infos[0]["parameters"] == 0
        assert torch.equal(states[0], torch.stack([encode_answer(a) for _, a in PAIRS + PAIRS[:1]]))
        assert pool.stats["oracle"]["forwards"] == 4  # the repeated question is computed once
        assert pool.generate_hints(questions[:2], 16)[0] == ["4", "-3"]  # text_hints: the answer itself
    with ExpertPool(team, None, answers=table) as pool:  # from disk
        assert torch.equal(pool.encode(questions)[0], states[0]) and pool.stats["oracle"]["forwards"] == 0
    shuffled = replace(team, experts=[replace(oracle, model="oracle:shuffled")])
    with ExpertPool(shuffled, None, answers=table) as pool:  # its own cache: other states
        assert pool.stats["oracle"]["loaded_from_disk"] == 0
        assert not torch.equal(pool.encode(questions)[0], states[0])
    with pytest.raises(OracleError, match="needs the task's answers"):
        ExpertPool(replace(team, cache_dir=None), None)


def test_a_run_on_an_oracle_team_reads_the_tasks_answers(tmp_path, monkeypatch):
    from musketeers.conditioning import start_experts
    from musketeers.data import load_split

    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path))
    cfg = load_run_config(str(FIXTURES / "task_tiny.yaml"), [f"team={FIXTURES / 'team_oracle_tiny.yaml'}"])
    rows = list(load_split(cfg.task, "train")[:3]) + list(load_split(cfg.task, "validation")[:3])
    with start_experts(cfg) as pool:
        oracle, llama = pool.encode([r["question"] for r in rows])
    assert torch.equal(oracle, torch.stack([encode_answer(r["answer"]) for r in rows])) and llama.shape == (6, 48)


def test_a_ray_pool_of_oracles_alone_starts_no_ray():
    import ray

    team = TeamConfig(name="t", backend="ray", experts=[ExpertConfig("oracle", "oracle:answer", num_cpus=0)])
    with ExpertPool(team, None, answers=AnswerTable([PAIRS])) as pool:
        pool.encode([PAIRS[0][0]])
        pool.generate_hints([PAIRS[0][0]], 4)
    assert not ray.is_initialized()
