"""Where C sits (ContextLayout) and generation with C, one prefill per distinct prompt."""
import pytest
import torch

from experts.models import load_model
from musketeers.config import CONTEXT_POSITIONS
from musketeers.context import ContextLayout, distinct_rows, generate_with_context, insert_context


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
def test_the_static_cache_generates_the_same_tokens(tiny, with_context):
    """HF's static KV cache (compiled decoding on CUDA) and the shared-prefill dynamic path agree."""
    model, _ = tiny
    ids, mask = left_padded([[7, 8, 9, 10, 11], [12, 13], [7, 8, 9, 10, 11], [12, 13], [14, 15, 16]])
    torch.manual_seed(0)
    context = torch.randn(3, 4, model.get_input_embeddings().weight.shape[1])[[0, 1, 0, 1, 2]] if with_context else None
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    dynamic = generate_with_context(model, ids, mask, context, [-1], ContextLayout(), "dynamic", **kwargs)
    assert generate_with_context(model, ids, mask, context, [-1], ContextLayout(), "static", **kwargs) == dynamic


def test_layout_places_c_after_pads_first_token_or_prompt():
    ids, mask = left_padded([[7, 8, 9], [5], [1, 2, 3, 4]])  # width 4: 1, 3 and 0 pads
    embeds = ids.unsqueeze(-1).float()
    context = torch.full((3, 2, 1), -1.0)
    expected = {"prefix": [[0, -1, -1, 7, 8, 9], [0, 0, 0, -1, -1, 5], [-1, -1, 1, 2, 3, 4]],
                "after_first": [[0, 7, -1, -1, 8, 9], [0, 0, 0, 5, -1, -1], [1, -1, -1, 2, 3, 4]],
                "suffix": [[0, 7, 8, 9, -1, -1], [0, 0, 0, 5, -1, -1], [1, 2, 3, 4, -1, -1]]}
    for position, rows in expected.items():
        layout = ContextLayout(position)
        out, full_mask, positions = insert_context(embeds, mask, context, layout.slot(mask))
        assert out.squeeze(-1).long().tolist() == rows, position
        assert full_mask.sum(1).tolist() == [5, 3, 6]  # C is attended, pads are not
        assert positions[0].tolist() == [0, 0, 1, 2, 3, 4] and positions[2].tolist() == [0, 1, 2, 3, 4, 5]
    assert ContextLayout(reference="none").reference_context(context) is None
    assert torch.equal(ContextLayout(reference="zeros").reference_context(context), torch.zeros(3, 2, 1))
    with pytest.raises(ValueError, match="context position 'middle' is not one of after_first, prefix, suffix"):
        ContextLayout("middle")


@pytest.mark.parametrize("position", [None, *CONTEXT_POSITIONS])  # None: no C
def test_shared_prefill_generates_what_each_row_alone_generates(tiny, position):
    with_context = position is not None
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
    layout = ContextLayout(position or "after_first")
    shared = generate_with_context(model, ids, mask, context, [-1], layout, **kwargs)
    assert prefill_rows[0] == 3  # one prefill row per distinct prompt, for 5 rows
    model._forward_pre_hooks.clear()
    for i, p in enumerate(prompts):  # each row on its own, no padding, plain HF generate
        row = torch.tensor([p])
        if context is None:
            alone = model.generate(input_ids=row, attention_mask=torch.ones_like(row), **kwargs)[0, len(p):]
        else:
            ones = torch.ones_like(row)
            embeds, m, _ = insert_context(model.get_input_embeddings()(row), ones, context[i : i + 1], layout.slot(ones))
            alone = model.generate(inputs_embeds=embeds, attention_mask=m, **kwargs)[0]
        assert shared[i] == alone.tolist(), i
