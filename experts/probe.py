"""`musketeers experts probe <team>`: what each expert is and how fast it reads a batch.

For every expert of a team: name, architecture, parameters, hidden size, tokenizer vocabulary,
load time, and the median latency of encoding a batch of prompts (the task's system prompt through
the expert's own chat template), measured inside the expert's worker after a warm-up.
`--show-input QUESTION` instead prints what each expert reads for one question (the rendered text
and its token count, from the tokenizers alone: no model loads).

Of the project it imports experts' config, models, pool and prompt.
"""

from __future__ import annotations

import statistics

from experts.config import TeamConfig
from experts.models import load_tokenizer
from experts.pool import ExpertPool
from experts.prompt import ExpertInput

PROBE_QUESTIONS = (
    "What is 17 + 25?",
    "Expand the product (3x + 2)(x - 5) and give the polynomial in standard form.",
    "A train travels 120 km in 1.5 hours and then 80 km in 1 hour. What is its average speed in km/h "
    "over the whole trip? Give the answer as a decimal number.",
    "Find all real solutions of x^2 - 5x + 6 = 0.",
)


def probe_team(team: TeamConfig, system_prompt: str | None, *, backend: str | None = None, repeats: int = 3,
               questions: tuple[str, ...] = PROBE_QUESTIONS) -> list[dict]:
    """Start the team, describe each expert and time one batch of `questions` (median of `repeats`)."""
    rows = []
    with ExpertPool(team, system_prompt, backend=backend) as pool:
        for index in range(len(pool.infos)):  # one expert at a time: timings do not share cores
            bench = pool.benchmark(index, list(questions), repeats)  # loads an expert whose states were on disk
            rows.append({**pool.infos[index], "backend": pool.backend, "batch": len(questions),
                         "prompt_tokens": statistics.mean(bench["prompt_tokens"]),
                         "latency_ms": 1000 * statistics.median(bench["seconds"])})
    return rows


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def format_probe(rows: list[dict]) -> str:
    """A plain-text table, one line per expert."""
    columns = [
        ("expert", lambda r: r["name"]),
        ("architecture", lambda r: r["architecture"]),
        ("params", lambda r: _count(r["parameters"])),
        ("hidden", lambda r: str(r["hidden_size"])),
        ("layers", lambda r: str(r["num_layers"])),
        ("vocab", lambda r: str(r["vocab_size"])),
        ("dtype", lambda r: r["dtype"]),
        ("device", lambda r: r["device"]),
        ("load s", lambda r: f"{r['load_s']:.1f}"),
        ("tokens/prompt", lambda r: f"{r['prompt_tokens']:.0f}"),
        ("ms/batch", lambda r: f"{r['latency_ms']:.1f}"),
    ]
    table = [[title for title, _ in columns]] + [[get(r) for _, get in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    if rows:
        lines.append(f"(latency: median of encoding a batch of {rows[0]['batch']} prompts, "
                     f"{rows[0]['backend']} backend)")
    return "\n".join(lines)


def read_inputs(team: TeamConfig, system_prompt: str | None, question: str) -> list[dict]:
    """What each expert of `team` reads for `question` (the same ExpertInput the pool keys its cache
    on): who, model, chat (how its template lays the prompt out), tokens read, tokens cut, text."""
    rows = []
    for e in team.experts:
        reader = ExpertInput(load_tokenizer(e.model, trust_remote_code=e.trust_remote_code), system_prompt,
                             team.template_date, e.max_length)
        (ids,), (full,) = reader.ids([question]), reader.ids([question], cut=False)
        rows.append({"who": f"expert {e.name}", "model": e.model, "chat": reader.format.describe(),
                     "tokens": len(ids), "cut": len(full) - len(ids), "text": reader.text(question)})
    return rows


END_OF_TEXT = "[end]"  # printed right after a text, so its trailing spaces and newlines show


def format_inputs(rows: list[dict]) -> str:
    """Each row's header (who, model, token count, chat layout) and the exact text it reads."""
    blocks = []
    for r in rows:
        if "note" in r:
            blocks.append(f"=== {r['who']} ({r['model']}): {r['note']}")
            continue
        cut = f" (the text's first {r['cut']} tokens are cut: max_length)" if r.get("cut") else ""
        head = f"=== {r['who']} ({r['model']}): reads {r['tokens']} tokens{cut}; {r['chat']}"
        blocks.append(f"{head}\n{r['text']}{END_OF_TEXT}")
    return "\n".join(blocks)
