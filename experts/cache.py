"""Pooled states computed once: an in-memory cache per expert, optionally mirrored on disk.

A pooled state depends only on (expert, pooling, the token ids the expert reads), so the G
completions of a GRPO group and every later visit of a prompt share one forward. A prompt's key is
a hash of those exact ids (experts/prompt.py ExpertInput: after the chat template, the system
prompt, the template date and the cut to max_length), so any change to what the expert reads (a
new template, system prompt or date) misses the cache instead of serving a stale state. The
on-disk mirror (team.cache_dir) survives restarts: one directory per expert fingerprint (model
identity, name, dtype, pooling, seed), holding safetensors shards of {keys: uint8 [N, 32],
states: float32 [N, d]} and, in its metadata, the sha256 of those tensors. Each encoded batch is one
shard, written to a temporary file of its own and renamed into place, so neither a crash nor a second
process writing the same directory (a sweep's precompute and a run) ever shows a half-written shard; a
shard that is damaged all the same (truncated, or zeroed by a crashed node) fails its checksum and is
set aside (<name>.damaged) with a warning: its prompts are computed again. Many shards are merged at
load time.
Memory: prompts x d x 4 bytes per expert (16,000 prompts of a 3,584-wide expert: about 230 MB).

It imports nothing of the project (a leaf of experts/).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch

FORMAT_VERSION = 3  # 3: ids cut by the tokenizer, keeping its BOS; 2: keys hash token ids (1 hashed the question text)
MERGE_AT = 64  # shards found at load time before they are merged into one
CHECKSUM_KEY = "sha256"  # a shard's metadata entry: sha256 of its tensors (tensor_digest)
DAMAGED_SUFFIX = ".damaged"  # a shard that failed to load, renamed so that it is read (and warned about) once

log = logging.getLogger(__name__)


def prompt_key(token_ids: Sequence[int]) -> bytes:
    """The cache key of the token ids an expert reads (sha256 digest, 32 bytes)."""
    return hashlib.sha256(",".join(map(str, token_ids)).encode()).digest()


def fingerprint(fields: dict) -> str:
    """Short stable hash of everything a pooled state depends on besides the prompt."""
    text = json.dumps({"format": FORMAT_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors' names, shapes, dtypes and bytes (safetensors itself checks lengths, not content)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class DiskCache:
    """Shards of pooled states in one directory (one expert fingerprint)."""

    def __init__(self, directory: Path, metadata: dict[str, str]):
        self.directory = Path(directory)
        self.metadata = metadata
        self.directory.mkdir(parents=True, exist_ok=True)

    def shards(self) -> list[Path]:
        return sorted(self.directory.glob("*.safetensors"))

    def load(self) -> dict[bytes, torch.Tensor]:
        """Every state on disk; shards that vanished (another process merged them) are skipped, and so are
        shards that are damaged (cannot be read, or fail their checksum), with a warning line each."""
        from safetensors import safe_open

        states: dict[bytes, torch.Tensor] = {}
        shards = self.shards()
        for shard in shards:
            try:
                with safe_open(str(shard), framework="pt") as f:
                    data = {name: f.get_tensor(name) for name in f.keys()}
                    checksum = (f.metadata() or {}).get(CHECKSUM_KEY)
                if checksum != tensor_digest(data):
                    raise ValueError("its tensors do not match their checksum")
            except FileNotFoundError:
                continue
            except Exception as e:  # noqa: BLE001 - damaged: set aside (warned once, kept to look at), recompute
                log.warning("warning: skipping expert-state shard %s (%s); its prompts are computed again, the shard "
                            "is kept as %s", shard, " ".join(str(e).split())[:120], shard.with_suffix(DAMAGED_SUFFIX).name)
                try:
                    shard.replace(shard.with_suffix(DAMAGED_SUFFIX))
                except OSError:  # another process set it aside first
                    pass
                continue
            for key, state in zip(data["keys"], data["states"]):
                states[bytes(key.tolist())] = state
        if len(shards) >= MERGE_AT and states:
            self._merge(states, shards)
        return states

    def save(self, keys: list[bytes], states: torch.Tensor) -> None:
        """Write one shard atomically: a temporary file, then os.replace."""
        from safetensors.torch import save_file

        if not keys:
            return
        key_tensor = torch.tensor([list(k) for k in keys], dtype=torch.uint8)
        name = f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = self.directory / f".{name}.tmp"
        tensors = {"keys": key_tensor, "states": states.contiguous()}
        try:
            save_file(tensors, str(tmp), metadata={**self.metadata, CHECKSUM_KEY: tensor_digest(tensors)})
            os.replace(tmp, self.directory / f"{name}.safetensors")
        except BaseException:  # a full disk or a kill: no temporary file left behind
            tmp.unlink(missing_ok=True)
            raise

    def _merge(self, states: dict[bytes, torch.Tensor], shards: list[Path]) -> None:
        keys = list(states)
        self.save(keys, torch.stack([states[k] for k in keys]))
        for shard in shards:
            shard.unlink(missing_ok=True)


class StateCache:
    """Pooled states of one expert, by prompt key, with hit/miss/forward counts."""

    def __init__(self, disk: DiskCache | None = None):
        self.disk = disk
        self.states: dict[bytes, torch.Tensor] = disk.load() if disk else {}
        self.loaded = len(self.states)
        self.hits = self.misses = self.forwards = 0

    @property
    def width(self) -> int | None:
        """The expert's hidden size, as its stored states show it (None: nothing stored yet)."""
        return next(iter(self.states.values())).shape[0] if self.states else None

    def plan(self, keys: list[bytes]) -> list[int]:
        """Positions in `keys` of the distinct keys not cached yet (the first request of each), to
        compute once each. Counts a miss per distinct new key and a hit per every other request."""
        todo: dict[bytes, int] = {}
        for position, key in enumerate(keys):
            if key not in self.states and key not in todo:
                todo[key] = position
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        return list(todo.values())

    def add(self, keys: list[bytes], states: torch.Tensor) -> None:
        """Store freshly computed states under their keys (and mirror them on disk)."""
        states = states.clone()  # own the memory (not a view of a transport buffer)
        for key, state in zip(keys, states):
            self.states[key] = state
        self.forwards += len(keys)
        if self.disk:
            self.disk.save(keys, states)

    def gather(self, keys: list[bytes]) -> torch.Tensor:
        return torch.stack([self.states[k] for k in keys])

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "forwards": self.forwards,
                "cached": len(self.states), "loaded_from_disk": self.loaded}
