"""Chat templates that behave like real ones: a gemma-2-it-like template that refuses a system turn,
a Llama-3.x-like one that writes today's date unless given `date_string`, and a gpt-oss-like one
that asks `strftime_now` directly. Every tokenizer and model here is built in the test (a character
tokenizer with the template's markers as special tokens, a tiny random Llama saved beside it)."""

import logging
from dataclasses import replace
from datetime import datetime

import pytest
import torch
import transformers.utils.chat_template_utils as chat_template_utils
from jinja2.exceptions import TemplateError

from experts import ExpertPool, ExpertWorker
from experts.config import ExpertConfig, TeamConfig
from experts.synthetic import synthetic_tokenizer
from experts.prompt import ExpertInput, chat_format, chat_prompt
from musketeers.config import ConfigError, TaskConfig, load_run_config
from musketeers.data import build_prompt, system_prompt

# gemma-2-it's template, as google/gemma-2-2b-it ships it
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
# Llama 3.x's date logic and system block (tools left out)
LLAMA3 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
# gpt-oss asks the clock itself, inside a macro, with no date_string to pass
CLOCK = """{%- macro build_system_message() -%}
    {{- "Knowledge cutoff: 2024-06\\n" }}
    {{- "Current date: " + strftime_now("%Y-%m-%d") + "\\n\\n" }}
{%- endmacro -%}
{{- "<|start|>system<|message|>" + build_system_message() + "<|end|>" }}
{%- for message in messages %}
    {{- "<|start|>" + message['role'] + "<|message|>" + message['content'] + "<|end|>" }}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<|start|>assistant" }}{%- endif %}"""
# a template that renders a system turn by leaving it out
DROPS_SYSTEM = "{% for m in messages if m['role'] != 'system' %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}[assistant]"
MARKERS = ["<start_of_turn>", "<end_of_turn>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
           "<|start|>", "<|message|>", "<|end|>"]

SYSTEM = "Answer with the final answer only.\n"
QUESTION = "What is 2 + 2?"
DAYS = (datetime(2031, 3, 5, 9, 30), datetime(2032, 11, 28, 23, 59))  # two faked "todays"


def chat_tokenizer(template: str | None):
    tok = synthetic_tokenizer("chars")  # one token per printable character, plus <pad> <s> </s> <unk>
    tok.add_tokens(MARKERS, special_tokens=True)
    tok.chat_template = template
    return tok


@pytest.fixture
def clock(monkeypatch):
    """Sets the day transformers' strftime_now reads (it asks datetime.now() in chat_template_utils)."""

    def set_day(day: datetime) -> None:
        class Frozen(datetime):
            @classmethod
            def now(cls, tz=None):
                return day

        monkeypatch.setattr(chat_template_utils, "datetime", Frozen)

    return set_day


def raw_render(tok, messages) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ----------------------------------------------------------------------------- chat formats


def test_a_gemma2_like_template_gets_the_system_text_folded_into_the_first_user_turn():
    tok = chat_tokenizer(GEMMA2)
    with pytest.raises(TemplateError, match="System role not supported"):  # the template behaves like the real one
        raw_render(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}])
    fmt = chat_format(tok)
    assert (fmt.system_role, fmt.reads_date) == ("folded", False)
    assert fmt.describe() == "chat template (system text folded into the first user turn)"
    assert chat_prompt(QUESTION, tok, SYSTEM) == (
        "<s><start_of_turn>user\nAnswer with the final answer only.\n\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n")
    assert chat_prompt(QUESTION, tok, None) == "<s><start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n"
    assert chat_format(tok) is fmt  # decided once, kept on the tokenizer


def test_a_template_that_drops_the_system_turn_is_folded_too():
    tok = chat_tokenizer(DROPS_SYSTEM)
    assert chat_format(tok).system_role == "folded"
    assert chat_prompt(QUESTION, tok, "Be brief.") == "[user]Be brief.\n\nWhat is 2 + 2?[assistant]"


def test_the_policy_prompt_follows_the_same_decision():
    tok = chat_tokenizer(GEMMA2)
    task = TaskConfig(name="t", system_prompt_text=SYSTEM, assistant_prefill="<answer>")
    assert build_prompt(QUESTION, tok, task) == chat_prompt(QUESTION, tok, SYSTEM) + "<answer>"
    assert "<start_of_turn>user\nAnswer with the final answer only.\n\nWhat is 2 + 2?" in build_prompt(QUESTION, tok, task)


LLAMA3_TEXT = ("<s><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
               "Today Date: {date}\n\nAnswer with the final answer only.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
               "What is 2 + 2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
CLOCK_TEXT = ("<|start|>system<|message|>Knowledge cutoff: 2024-06\nCurrent date: {date}\n\n<|end|>"
              "<|start|>system<|message|>Answer with the final answer only.\n<|end|>"
              "<|start|>user<|message|>What is 2 + 2?<|end|><|start|>assistant")


@pytest.mark.parametrize("template, text, default, later", [
    (LLAMA3, LLAMA3_TEXT, "26 Jul 2024", "01 Jan 2025"),
    (CLOCK, CLOCK_TEXT, "2024-07-26", "2025-01-01"),
], ids=["llama3-date_string", "gpt-oss-strftime_now"])
def test_a_template_that_writes_a_date_reads_one_fixed_date_on_every_day(clock, template, text, default, later):
    tok = chat_tokenizer(template)
    user = [{"role": "user", "content": QUESTION}]
    raw = []
    for day in DAYS:  # the fake clock works: left alone, the template writes that day
        clock(day)
        raw.append(raw_render(tok, user))
    assert raw[0] != raw[1] and DAYS[1].strftime("%Y") in raw[1]
    rendered = []
    for day in DAYS:
        clock(day)
        rendered.append(chat_prompt(QUESTION, tok, SYSTEM))
    assert rendered == [text.format(date=default)] * 2
    fmt = chat_format(tok)
    assert (fmt.system_role, fmt.reads_date, fmt.date) == ("native", True, "26 Jul 2024")
    assert fmt.describe() == "chat template (system turn; date fixed at 26 Jul 2024)"
    assert chat_format(tok, "1 jan 2025").date == "01 Jan 2025"  # another team.template_date, canonical
    assert chat_prompt(QUESTION, tok, SYSTEM) == text.format(date=later)


def test_a_tokenizer_without_a_template_reads_the_plain_layout():
    tok = chat_tokenizer(None)
    assert chat_format(tok).describe() == "no chat template (plain layout)"
    assert chat_prompt(QUESTION, tok, SYSTEM) == "Answer with the final answer only.\n\nUser: What is 2 + 2?\nAssistant: "


def test_team_template_date_is_typed_validated_and_defaults_to_llama31s_own():
    assert load_run_config("arithmetic", []).team.template_date == "26 Jul 2024"
    assert load_run_config("arithmetic", ["team.template_date=05 Mar 2031"]).team.template_date == "05 Mar 2031"
    with pytest.raises(ConfigError) as caught:
        load_run_config("arithmetic", ["team.template_date=31 Feb 2024"])
    assert str(caught.value) == ("command line: team.template_date: expected a date like '26 Jul 2024' "
                                 "(day, month abbreviation, year), got '31 Feb 2024'")


# ----------------------------------------------------------------------------- experts on such templates


def save_model_folder(folder, template: str) -> str:
    """A tiny random Llama with a chat tokenizer, saved as a model folder (a path model reference)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = chat_tokenizer(template)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    return {name: save_model_folder(root / name, template) for name, template in
            (("gemma2-like", GEMMA2), ("llama3-like", LLAMA3), ("gpt-oss-like", CLOCK))}


def experts_of(folders, *names) -> list[ExpertConfig]:
    return [ExpertConfig(name, folders[name], dtype="float32", device="cpu") for name in names]


def test_experts_read_their_templates_the_same_on_two_days(folders, clock, caplog):
    team = TeamConfig(name="t", backend="local", experts=experts_of(folders, "gemma2-like", "llama3-like", "gpt-oss-like"))
    caplog.set_level(logging.INFO, logger="experts")
    states = []
    for day in DAYS:
        clock(day)
        with ExpertPool(team, SYSTEM) as pool:  # a fresh pool each day: nothing cached between them
            states.append(pool.encode([QUESTION, "Name a prime number."]))
            infos = pool.infos
    assert all(torch.equal(a, b) for a, b in zip(*states))
    assert [(i["system_role"], i["template_date"]) for i in infos] == [
        ("folded", None), ("native", "26 Jul 2024"), ("native", "26 Jul 2024")]
    ready = [r.getMessage() for r in caplog.records if " ready: " in r.getMessage()]
    assert any(line.startswith("expert gemma2-like ready: llama (LlamaForCausalLM), ")
               and ", chat template (system text folded into the first user turn), loaded in " in line for line in ready)
    assert any(", chat template (system turn; date fixed at 26 Jul 2024), loaded in " in line for line in ready)


def test_the_cache_misses_exactly_when_what_an_expert_reads_changes(folders, clock, tmp_path):
    experts_ = experts_of(folders, "gemma2-like", "llama3-like")
    questions = [QUESTION, "Name a prime number.", QUESTION]

    def forwards(system=SYSTEM, **team_keys) -> list[int]:
        team = TeamConfig(name="t", backend="local", experts=experts_, cache_dir=str(tmp_path), **team_keys)
        with ExpertPool(team, system) as pool:
            pool.encode(questions)
            return [s["forwards"] for s in pool.stats.values()]

    clock(DAYS[0])
    assert forwards() == [2, 2]  # two distinct prompts each, computed once
    clock(DAYS[1])
    assert forwards() == [0, 0]  # another day reads the same: all from disk
    assert forwards(system="Think step by step.") == [2, 2]  # another system prompt: new keys
    # another template date: only the template that writes a date reads something new
    assert forwards(template_date="01 Jan 2025") == [0, 2]


def test_the_cache_key_is_the_hash_of_the_token_ids_read(folders):
    from experts.cache import prompt_key
    from experts.models import load_tokenizer

    reader = ExpertInput(load_tokenizer(folders["llama3-like"]), SYSTEM, "26 Jul 2024", max_length=40)
    (ids,), (full,) = reader.ids([QUESTION]), reader.ids([QUESTION], cut=False)
    assert len(ids) == 40 < len(full) and ids == full[-40:]  # cut from the left: the end of the question stays
    assert reader.tokenizer.decode(full) == LLAMA3_TEXT.format(date="26 Jul 2024")
    assert prompt_key(ids) == prompt_key(list(ids)) != prompt_key(full)


def test_a_long_prompt_cut_to_max_length_keeps_the_tokenizers_bos():
    """Without a chat template the tokenizer adds its BOS; the cut to max_length (the tokenizer's own
    truncation, from the left) keeps it, and the end of the question."""
    from tokenizers import processors

    tok = synthetic_tokenizer("chars")
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    reader = ExpertInput(tok, SYSTEM, "26 Jul 2024", max_length=12)
    (ids,), (full,) = reader.ids([QUESTION]), reader.ids([QUESTION], cut=False)
    assert full[0] == tok.bos_token_id and len(full) > 12
    assert len(ids) == 12 and ids[0] == tok.bos_token_id and ids[1:] == full[-11:]


def test_the_generalist_teams_gemma_expert_reads_a_gemma2_template(folders):
    """configs/teams/generalist.yaml's gemma-2-2b-it with the task's DeepSeekZero system prompt: its
    template refuses the system turn, so the expert would crash on its first prompt without folding."""
    cfg = load_run_config("arithmetic", ["team=generalist"])
    (gemma,) = [e for e in cfg.team.experts if e.model == "google/gemma-2-2b-it"]
    expert = replace(gemma, model=folders["gemma2-like"], dtype="float32", device="cpu")  # the real weights are not here
    worker = ExpertWorker(expert, system_prompt(cfg.task), template_date=cfg.team.template_date)
    text = worker.prompt(QUESTION)
    assert text.startswith("<s><start_of_turn>user\nA conversation between User and Assistant.")
    assert text.endswith("in that example.\n\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n")
    assert worker.encode([QUESTION]).shape == (1, 32)
    assert worker.info()["system_role"] == "folded"


def test_probe_show_input_prints_what_each_expert_and_the_policy_read(folders, tmp_path, capsys):
    from musketeers.cli import main

    team_file = tmp_path / "team.yaml"
    team_file.write_text("team:\n  name: t\n  backend: local\n  experts:\n" + "".join(
        f"    - {{name: {name}, model: '{folders[name]}', dtype: float32}}\n" for name in ("gemma2-like", "llama3-like")))
    main(["experts", "probe", str(team_file), "--task", "demo", f"policy.model={folders['llama3-like']}",
          "--show-input", QUESTION])
    out = capsys.readouterr().out
    folded = "<s><start_of_turn>user\nAnswer with the final answer only.\n\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n"
    llama = LLAMA3_TEXT.format(date="26 Jul 2024")
    count = lambda text: len(chat_tokenizer(None)(text)["input_ids"])  # noqa: E731 - one token per character or marker
    assert count("<s><|eot_id|>ab\n") == 5
    assert out == (
        f"=== expert gemma2-like ({folders['gemma2-like']}): reads {count(folded)} tokens; "
        f"chat template (system text folded into the first user turn)\n{folded}[end]\n"
        f"=== expert llama3-like ({folders['llama3-like']}): reads {count(llama)} tokens; "
        f"chat template (system turn; date fixed at 26 Jul 2024)\n{llama}[end]\n"
        f"=== policy ({folders['llama3-like']}): reads {count(llama + '<answer>')} tokens; "
        f"chat template (system turn; date fixed at 26 Jul 2024)\n{llama}<answer>[end]\n")


@pytest.mark.slow
def test_probe_show_input_on_the_embedded_team(capsys):
    from musketeers.cli import main

    main(["experts", "probe", "embedded", "--task", "demo", "--show-input", "What is 17 + 25?"])
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("=== ")]
    assert [h.split(" (")[0] for h in heads] == ["=== expert smollm2-135m", "=== expert gemma3-270m",
                                                "=== expert gpt2-random", "=== policy"]
    assert heads[0].endswith("; chat template (system turn)") and heads[1].endswith("; no chat template (plain layout)")
    assert "<|im_start|>system\nAnswer with the final answer only.<|im_end|>\n<|im_start|>user\nWhat is 17 + 25?" in out
    assert out.endswith("<|im_start|>assistant\n<answer>[end]\n")
