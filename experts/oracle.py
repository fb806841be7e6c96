"""Oracle experts: a diagnostic that puts the gold answer into an expert's pooled state.

A team file names one like a model:

    - {name: oracle, model: "oracle:answer", num_cpus: 0}     # the encoding of the prompt's gold answer
    - {name: oracle, model: "oracle:shuffled", num_cpus: 0}   # the encoding of ANOTHER item's answer

If a run with `oracle:answer` in its team does not beat `single`, information put into an expert
state does not reach the policy's answers; `oracle:shuffled` is its control (the same distribution
of states, no information about the prompt). README "Does the context carry signal?".

No model loads: the pool serves an oracle in its own process (`OracleWorker`), through the same
state cache, precompute, sweeps and eval as any expert. It reads the question's UTF-8 bytes (those
are its cache key) and looks the question up in an `AnswerTable` that the learner builds from the
task's items (musketeers/data.py `answer_table`: train, then the held-out split, in file order).
A question outside the table is an error naming it.

The encoding (ENCODING_VERSION 1, width WIDTH = 144), written for a linear map to read:
  * the answer as written, left-aligned, character by character: POSITIONS = 8 slots of 14 each,
    one-hot over ALPHABET "0123456789-." + OTHER (any other character) + END (past the last
    character), so slot j says which character the reply writes j-th: 112 dimensions;
  * HASH_SLOTS = 32 dimensions: one-hot of sha256(answer) mod 32, so that answers the characters
    do not tell apart (longer, or not numeric) still differ.
`oracle:shuffled` maps the k-th question of a split to the answer of item perm[k] of the same split,
perm a fixed derangement (seed 0): every state is some real answer's encoding, none its own item's
(two items may share an answer by chance, as in any split).

It imports nothing of the project (a leaf of experts/).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Iterable, Sequence

import torch

ORACLE_SCHEME = "oracle:"
ORACLE_KINDS = ("answer", "shuffled")
ENCODING_VERSION = 1
ALPHABET = "0123456789-."
POSITIONS = 8
SYMBOLS = len(ALPHABET) + 2  # + OTHER + END
OTHER, END = len(ALPHABET), len(ALPHABET) + 1
HASH_SLOTS = 32
WIDTH = POSITIONS * SYMBOLS + HASH_SLOTS


class OracleError(ValueError):
    """A bad oracle reference, or a question the oracle's answer table does not hold."""


def oracle_kind(ref: str) -> str | None:
    """'answer' / 'shuffled' for an oracle reference, None for any other model reference."""
    if not isinstance(ref, str) or not ref.strip().startswith(ORACLE_SCHEME):
        return None
    kind = ref.strip()[len(ORACLE_SCHEME):]
    if kind not in ORACLE_KINDS:
        raise OracleError(f"unknown oracle {ref!r}; valid: {', '.join(ORACLE_SCHEME + k for k in ORACLE_KINDS)}")
    return kind


def encode_answer(answer: str) -> torch.Tensor:
    """The oracle's pooled state of an answer: float32 [WIDTH] (module docstring)."""
    text = str(answer).strip()
    state = torch.zeros(WIDTH)
    for j in range(POSITIONS):
        symbol = END if j >= len(text) else ALPHABET.find(text[j]) % (OTHER + 1)  # find -1 -> OTHER
        state[j * SYMBOLS + symbol] = 1.0
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    state[POSITIONS * SYMBOLS + digest % HASH_SLOTS] = 1.0
    return state


class AnswerTable:
    """Question -> gold answer text for a task's items, with the derangement `oracle:shuffled` uses.

    splits: one sequence of (question, answer) pairs per split, in file order. A question seen twice
    keeps its first answer (`conflicts` counts questions seen with another answer)."""

    def __init__(self, splits: Iterable[Sequence[tuple[str, str]]]):
        self.answers: dict[str, str] = {}
        self.shuffled: dict[str, str] = {}
        self.conflicts = 0
        digest = hashlib.sha256(f"oracle-encoding-{ENCODING_VERSION}".encode())
        for pairs in splits:
            pairs = [(str(q), str(a)) for q, a in pairs]
            perm = derangement(len(pairs), seed=0)
            for k, (question, answer) in enumerate(pairs):
                if question in self.answers:
                    self.conflicts += self.answers[question] != answer
                    continue
                self.answers[question] = answer
                self.shuffled[question] = pairs[perm[k]][1]
            digest.update(json.dumps(pairs).encode())
        self.fingerprint = digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.answers)

    def lookup(self, question: str, kind: str) -> str:
        table = self.answers if kind == "answer" else self.shuffled
        if question not in table:
            raise OracleError(f"oracle:{kind}: the question {question[:80]!r} is not among the task's items "
                              f"({len(table)} questions); an oracle answers only the task's own train and held-out items")
        return table[question]


def derangement(n: int, seed: int = 0) -> list[int]:
    """A fixed permutation of range(n) with no fixed point (n >= 2; [0] for n = 1)."""
    perm = list(range(n))
    random.Random(seed).shuffle(perm)
    for k in range(n):
        if perm[k] == k and n > 1:  # swap with the next position: neither keeps its own index
            j = (k + 1) % n
            perm[k], perm[j] = perm[j], perm[k]
    return perm


class OracleInput:
    """What an oracle reads: the question's UTF-8 bytes (its cache key; no template, no system prompt)."""

    format = None

    @staticmethod
    def ids(questions: Sequence[str]) -> list[list[int]]:
        return [list(q.encode("utf-8")) for q in questions]


class OracleWorker:
    """The oracle's stand-in for ExpertWorker: the same calls, answered from an AnswerTable."""

    def __init__(self, expert, answers: AnswerTable | None):
        self.expert, self.kind = expert, oracle_kind(expert.model)
        if answers is None:
            raise OracleError(f"expert {expert.name!r} ({expert.model}) needs the task's answers: "
                              "an oracle runs only inside a run, an eval or a precompute of a task")
        self.answers, self.input, self.num_forwards = answers, OracleInput(), 0
        self.hidden_size = WIDTH

    def _answer(self, question: str) -> str:
        return self.answers.lookup(question, self.kind)

    def encode_ids(self, ids: list[list[int]]) -> torch.Tensor:
        self.num_forwards += len(ids)
        if not ids:
            return torch.zeros(0, WIDTH)
        return torch.stack([encode_answer(self._answer(bytes(row).decode("utf-8"))) for row in ids])

    def generate(self, questions: list[str], max_new_tokens: int) -> list[str]:
        """text_hints: the answer itself (shuffled: another item's)."""
        return [self._answer(q) for q in questions]

    def benchmark(self, questions: list[str], repeats: int = 3) -> dict:
        ids = self.input.ids(questions)
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.encode_ids(ids)
            seconds.append(time.perf_counter() - start)
        return {"seconds": seconds, "prompt_tokens": [len(row) for row in ids]}

    def info(self) -> dict:
        return {"name": self.expert.name, "model": self.expert.model,
                "architecture": f"oracle ({self.kind}, encoding v{ENCODING_VERSION})", "parameters": 0,
                "hidden_size": WIDTH, "num_layers": 0, "vocab_size": 256, "chat_template": False, "system_role": "plain",
                "template_date": None, "chat": "the question's bytes, no template", "dtype": "float32",
                "device": "cpu", "load_s": 0.0, "forwards": self.num_forwards, "pid": os.getpid()}
