"""Generation from [pads][C][prompt] with one prefill per distinct prompt."""
import pytest
import torch

from musketeers.context import distinct_rows, generate_with_context, insert_context, leading_pads
from musketeers.models import load_model


@pytest.fixture(scope="module", params=["llama:hidden_size=64", "gpt2:hidden_size=64",
                                        "gemma3_text:hidden_size=64,sliding_window=4"])  # absolute positions, sliding cache
def tiny(request):
    return load_model(f"random:{request.param}")


def left_padded(rows: list[list[int]]):
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_distinct_rows_groups_copies_and_keeps_rows_whose_context_differs():
    ids = torch.tensor([[5, 6], [1, 2], [5, 6], [1, 2], [5, 6]])
    first, copies = distinct_rows(ids, None)
    assert torch.equal(ids[first[copies]], ids) and len(first) == 2
    assert sorted(first.tolist()) == [0, 1]  # the first occurrence of each prompt
    context = torch.zeros(5, 2, 3)
    assert len(distinct_rows(ids, context)[0]) == 2
    context[4] = 1.0  # the same prompt with another C is another row
    first, copies = distinct_rows(ids, context)
    assert torch.equal(first, torch.arange(5)) and torch.equal(copies, torch.arange(5))


@pytest.mark.parametrize("with_context", [False, True])
def test_shared_prefill_generates_what_each_row_alone_generates(tiny, with_context, monkeypatch):
    model, _ = tiny
    torch.manual_seed(0)
    prompts = [[7, 8, 9, 10, 11], [12, 13], [7, 8, 9, 10, 11], [12, 13], [14, 15, 16]]
    ids, mask = left_padded(prompts)
    d = model.get_input_embeddings().weight.shape[1]
    context = torch.randn(3, 4, d)[[0, 1, 0, 1, 2]] if with_context else None  # C per prompt
    prefill_rows = []
    model.register_forward_pre_hook(lambda _m, _a, k: prefill_rows.append(k["inputs_embeds"].shape[0])
                                    if k.get("inputs_embeds") is not None else None, with_kwargs=True)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    shared = generate_with_context(model, ids, mask, context, eos_ids=[-1], **kwargs)
    assert prefill_rows[0] == 3  # one prefill row per distinct prompt, for 5 rows
    model._forward_pre_hooks.clear()
    for i, p in enumerate(prompts):  # each row on its own, no padding, plain HF generate
        row = torch.tensor([p])
        if context is None:
            alone = model.generate(input_ids=row, attention_mask=torch.ones_like(row), **kwargs)[0, len(p):]
        else:
            embeds, m, _ = insert_context(model.get_input_embeddings()(row), torch.ones_like(row), context[i : i + 1], leading_pads(torch.ones_like(row)))
            alone = model.generate(inputs_embeds=embeds, attention_mask=m, **kwargs)[0]
        assert shared[i] == alone.tolist(), i
