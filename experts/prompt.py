"""How a model reads a question: a system prompt and the question through the tokenizer's chat
template (a plain layout where it has none), up to where the assistant's answer starts.

An expert reads exactly this (`ExpertInput`, as token ids); the learner's prompts
(musketeers.data.build_prompt) are this, with an expert-hints block before the question and the
assistant prefill after it. Real chat templates differ in two ways a plain render would get wrong, so
`chat_format` decides once per tokenizer, for experts and policy alike:

- a template that refuses a system turn (gemma-2-it raises "System role not supported") or drops
  it gets the system text folded into the first user turn: system text, a blank line, the question.
  That is what Gemma's prompt-formatting guide tells users to do, and what Gemma 3's and
  Mistral-Instruct-v0.3's own templates do with a system message;
- a template that writes today's date (Llama 3.x through `date_string`, else transformers'
  `strftime_now`; gpt-oss through `strftime_now`) reads one fixed date instead (team.template_date),
  so the same question reads the same on every day and a cache filled yesterday still matches.

Of the project it imports only experts.config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from experts.config import DEFAULT_TEMPLATE_DATE, TEMPLATE_DATE_FORMAT, parse_template_date

SYSTEM_ROLES = ("native", "folded", "plain")  # a system turn | folded into the first user turn | no template
FOLD_SEPARATOR = "\n\n"  # between the system text and the question in a folded first user turn
_MEMO = "_musketeers_chat_format"  # the attribute a tokenizer carries its decided ChatFormat in
_PROBE_SYSTEM, _PROBE_QUESTION = "musketeers probe: system text", "musketeers probe: question"
# strftime codes the fixed clock answers (a template's own strftime_now calls use "%d %b %Y", "%Y-%m-%d")
_CLOCK_CODES = "aAbBcdHIjmMpSUwWxXyY"


def fixed_clock(template: str, when: datetime) -> str:
    """`template` with `strftime_now(format)` answering `when` whatever today is: a macro of that name,
    defined first, shadows the global transformers gives templates, in the template and in its macros
    (`+%}` keeps a newline the template may start with)."""
    chain = "".join(f' | replace("%{code}", "{when.strftime("%" + code)}")' for code in _CLOCK_CODES)
    return "{% macro strftime_now(format) %}{{ format" + chain + ' | replace("%%", "%") }}{% endmacro +%}' + template


@dataclass(frozen=True)
class ChatFormat:
    """How one tokenizer lays out a prompt (see chat_format)."""

    source: str | None  # the tokenizer's chat template this was decided for (None: the plain layout)
    system_role: str  # one of SYSTEM_ROLES
    date: str  # the date a template that writes one reads, e.g. "26 Jul 2024"
    reads_date: bool = False  # whether the template writes a date at all
    template: str | None = None  # what renders: `source`, its clock fixed at `date` where it reads one

    def messages(self, question: str, system: str | None) -> list[dict[str, str]]:
        if system and self.system_role == "folded":
            return [{"role": "user", "content": f"{system.rstrip()}{FOLD_SEPARATOR}{question}"}]
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]

    def render(self, tokenizer: Any, question: str, system: str | None) -> str:
        """The prompt text of one question (no system text when `system` is None or empty)."""
        if self.source is None:
            return (f"{system.rstrip()}\n\n" if system else "") + f"User: {question}\nAssistant: "
        return self._apply(tokenizer, self.messages(question, system))

    def _apply(self, tokenizer: Any, messages: list[dict[str, str]]) -> str:
        kwargs: dict[str, Any] = {}
        if self.template != self.source:
            kwargs["chat_template"] = self.template
        if "date_string" in self.source:  # Llama 3.x reads date_string before it asks the clock
            kwargs["date_string"] = self.date
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)

    def describe(self) -> str:
        """One phrase for load lines, e.g. "chat template (system text folded into the first user turn)"."""
        if self.source is None:
            return "no chat template (plain layout)"
        role = "system turn" if self.system_role == "native" else "system text folded into the first user turn"
        return f"chat template ({role}{f'; date fixed at {self.date}' if self.reads_date else ''})"


def _decide(tokenizer: Any, source: str | None, date: str) -> ChatFormat:
    """Probe-render a system turn once (a template error or a dropped system text: fold it), and
    render twice on different dates to see whether the template writes one."""
    from jinja2.exceptions import TemplateError

    if not source:
        return ChatFormat(None, "plain", date)
    when = parse_template_date(date)
    fmt = ChatFormat(source, "native", date, template=fixed_clock(source, when) if "strftime_now" in source else source)
    try:
        probe = fmt._apply(tokenizer, fmt.messages(_PROBE_QUESTION, _PROBE_SYSTEM))
        native = _PROBE_SYSTEM in probe
    except TemplateError:
        native = False
    fmt = replace(fmt, system_role="native" if native else "folded")
    later = when + timedelta(days=400)  # another day, month, weekday and year
    other = replace(fmt, date=later.strftime(TEMPLATE_DATE_FORMAT),
                    template=fixed_clock(source, later) if fmt.template != source else source)
    reads_date = fmt.render(tokenizer, _PROBE_QUESTION, None) != other.render(tokenizer, _PROBE_QUESTION, None)
    return replace(fmt, reads_date=reads_date)


def chat_format(tokenizer: Any, date: str | None = None) -> ChatFormat:
    """How `tokenizer` lays out prompts, decided once and kept on the tokenizer (decided again only
    when its chat_template or the date changes). Pass `date` (team.template_date) where the tokenizer
    loads; None keeps the date it was decided with (DEFAULT_TEMPLATE_DATE when it never was)."""
    source = getattr(tokenizer, "chat_template", None) or None
    known = getattr(tokenizer, _MEMO, None)
    if date is not None:
        date = parse_template_date(date).strftime(TEMPLATE_DATE_FORMAT)
    if isinstance(known, ChatFormat) and known.source == source and date in (None, known.date):
        return known
    fmt = _decide(tokenizer, source, date or (known.date if isinstance(known, ChatFormat) else DEFAULT_TEMPLATE_DATE))
    try:
        setattr(tokenizer, _MEMO, fmt)
    except AttributeError:  # an object that takes no attributes: decided again on every call
        pass
    return fmt


def chat_prompt(question: str, tokenizer: Any, system: str | None) -> str:
    """The prompt text of one question (no system message when `system` is None or empty)."""
    return chat_format(tokenizer).render(tokenizer, question, system)


class ExpertInput:
    """What one expert reads: each question through its tokenizer's chat format with the task's system
    prompt, as token ids cut from the left to `max_length` by the tokenizer's own truncation (the end of
    the question stays, and special tokens the tokenizer adds, e.g. BOS, are kept). The pool keys its
    cache on these ids and the worker runs them, so both always agree. It sets the tokenizer's
    truncation_side to "left": the tokenizer it is handed is the expert's own."""

    def __init__(self, tokenizer: Any, system: str | None, date: str, max_length: int):
        self.tokenizer, self.system, self.max_length = tokenizer, system, max_length
        tokenizer.truncation_side = "left"
        self._format = chat_format(tokenizer, date)

    @property
    def format(self) -> ChatFormat:
        if self._format.source != (getattr(self.tokenizer, "chat_template", None) or None):  # template replaced
            self._format = chat_format(self.tokenizer, self._format.date)
        return self._format

    def text(self, question: str) -> str:
        return self.format.render(self.tokenizer, question, self.system)

    def ids(self, questions: list[str], cut: bool = True) -> list[list[int]]:
        """Token ids per question (cut=False: before the cut to max_length). A chat template writes its
        own special tokens (text, cut like the rest); the plain layout gets the tokenizer's (e.g. BOS,
        which the cut keeps)."""
        if not questions:
            return []
        fmt = self.format
        texts = [fmt.render(self.tokenizer, q, self.system) for q in questions]
        rows = self.tokenizer(texts, add_special_tokens=fmt.source is None, truncation=cut,
                              max_length=self.max_length if cut else None)["input_ids"]
        return [list(row) for row in rows]
