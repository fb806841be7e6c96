"""Synthetic tokenizers for random models, built without the network: "gpt2" (GPT-2's real BPE, read from
the gpt2.tiktoken file that the openai-whisper package ships), "bytes" (256 byte tokens) and "chars"
(printable ASCII). GPT-2's ranks are read here: there is no tiktoken dependency (a test compares
with tiktoken where it is installed).

It imports experts.embedded (package files, the load error); experts.models re-exports it.
"""
from __future__ import annotations

import base64
import functools
import string
from pathlib import Path

from experts.embedded import ModelLoadError, package_file

SYNTHETIC_TOKENIZERS = ("bytes", "chars", "gpt2")
# GPT-2's pre-tokenisation regex (tiktoken's "gpt2" encoding)
# GPT-2's pre-tokenisation regex (tiktoken's "gpt2" encoding)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_tiktoken_path() -> Path | None:
    """whisper/assets/gpt2.tiktoken from the openai-whisper package (not imported), if installed."""
    return package_file("openai-whisper", "whisper", "assets/gpt2.tiktoken")


@functools.lru_cache(maxsize=None)
def _tokenizer_json(kind: str) -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if kind == "bytes":  # 256 byte tokens (id = byte value) + specials; no merges
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        vocab = {ch: b for b, ch in bytes_to_unicode().items()}
        assert set(vocab) == set(alphabet)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(["<|endoftext|>", "<|pad|>"])
    elif kind == "chars":  # specials first, then one token per printable ASCII character
        vocab = {s: i for i, s in enumerate(["<pad>", "<s>", "</s>", "<unk>"])}
        for ch in string.printable:
            vocab.setdefault(ch, len(vocab))
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens(["<pad>", "<s>", "</s>", "<unk>"])
    elif kind == "gpt2":
        path = gpt2_tiktoken_path()
        if path is None:
            raise ModelLoadError("cannot build tokenizer 'gpt2': whisper/assets/gpt2.tiktoken not found; "
                                 "install it with: pip install --no-deps openai-whisper==20250625")
        from transformers.convert_slow_tokenizer import TikTokenConverter

        class _LocalTikToken(TikTokenConverter):
            @staticmethod
            def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:  # no tiktoken dependency
                ranks = {}
                with open(tiktoken_url, "rb") as handle:
                    for line in handle:
                        if line.strip():
                            token, rank = line.split()
                            ranks[base64.b64decode(token)] = int(rank)
                return ranks

        tok = _LocalTikToken(str(path), pattern=GPT2_PATTERN, extra_special_tokens=["<|endoftext|>"]).converted()
    else:
        raise ValueError(f"unknown synthetic tokenizer {kind!r}; valid: {', '.join(SYNTHETIC_TOKENIZERS)}")
    return tok.to_str()


def synthetic_tokenizer(kind: str):
    """A fresh PreTrainedTokenizerFast: 'gpt2' (real GPT-2 BPE, 50,257 tokens), 'bytes' (258) or
    'chars' (104, printable ASCII; other characters become <unk>). No chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_tokenizer_json(kind))
    if kind == "gpt2":
        special = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                       pad_token="<|endoftext|>", model_max_length=1024)
    elif kind == "bytes":
        special = dict(eos_token="<|endoftext|>", pad_token="<|pad|>")
    else:
        special = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **special)
    tok.name_or_path = f"musketeers:{kind}"
    return tok
