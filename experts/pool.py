"""ExpertPool: a team of frozen experts behind one API, as Ray actors or in-process.

    with ExpertPool(cfg.team, system_prompt(cfg.task), seed=cfg.seed) as pool:
        states = pool.encode(questions)         # [B, d_i] float32 CPU tensors, in team order
        state = pool.encode_expert(2, qs)       # hard routing: only expert 2 runs
        hints = pool.generate_hints(qs, 128)    # text-hints baseline: [expert][question] strings

Backends: `ray` (the default for training) puts each expert in its own actor with the team file's
resources (num_cpus, num_gpus, fractions allowed; custom Ray `resources` to pin a node type) and calls
all experts concurrently, on this node or on any other of the Ray cluster (the states travel back
through Ray's object store); `local` holds the experts in this process (unit tests, single-process
GPU runs). Both compute the same numbers. Ray restarts a killed actor and retries the call, so a dead expert process costs a reload,
not the run. Every (expert, prompt) is computed once per pool (cache.py), duplicates in a request
included, so a GRPO batch of B prompts x G completions runs B forwards per expert. The pool turns
questions into each expert's token ids itself (it loads each expert's tokenizer once: the ids are
the cache key), and sends the ids of cache misses to the expert.

Of the project it imports experts' cache, config, models, oracle, pooling, prompt and worker; like all of
experts/, never musketeers (tests/test_imports.py).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch

from experts.cache import DiskCache, StateCache, fingerprint, prompt_key
from experts.config import DEFAULT_TEMPLATE_DATE, ExpertConfig, TeamConfig
from experts.models import load_tokenizer, model_identity, needs_conversion, one_line
from experts.oracle import AnswerTable, OracleWorker, oracle_kind
from experts.pooling import uses_seed
from experts.prompt import ExpertInput
from experts.worker import ExpertLoadError, ExpertWorker

BACKENDS = ("ray", "local")
MAX_RESTARTS = 8  # restarts of a dead expert actor before its calls fail
MAX_TASK_RETRIES = 4  # retries of a call whose actor died under it
OBJECT_STORE_BYTES = 150 * 2**20  # pooled states are small; keep Ray's shared memory small too

log = logging.getLogger(__name__)


class RayExpertWorker(ExpertWorker):
    """The body of an expert actor: its own thread count, and a load error kept for info() (an
    exception in an actor's constructor would surface as a long traceback, not one line)."""

    def __init__(self, expert: ExpertConfig, system_prompt: str | None, pooling: str, seed: int, threads: int,
                 template_date: str = DEFAULT_TEMPLATE_DATE):
        torch.set_num_threads(threads)
        self.load_error = None
        try:
            super().__init__(expert, system_prompt, pooling, seed, template_date=template_date)
        except ExpertLoadError as e:
            self.load_error = str(e)

    def info(self) -> dict:
        import ray

        if self.load_error:
            return {"error": self.load_error}
        return {**super().info(), "node_id": ray.get_runtime_context().get_node_id()}  # where Ray placed it


def init_ray(num_cpus: float, env_vars: dict[str, str] | None = None, resources: dict[str, float] | None = None) -> bool:
    """Start a quiet local Ray unless one is running (or RAY_ADDRESS names a cluster to join), with at
    least `num_cpus` logical CPUs, the custom `resources` and `env_vars` in its workers' environment.
    Returns True when this call started it (so its owner shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # PYTHONHASHSEED: anything set-ordered in a worker (a dataset's scorer) behaves the same in every worker;
    # data splits do not depend on it (musketeers/splits.py generates them under hash seed 0 itself)
    env = {"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", **(env_vars or {})}
    kwargs = {"log_to_driver": False, "runtime_env": {"env_vars": env}}
    if not os.environ.get("RAY_ADDRESS"):
        # logical CPUs: every expert actor must fit, even when the team asks for more than the cores
        kwargs.update(num_cpus=max(os.cpu_count() or 1, math.ceil(num_cpus)), resources=resources or None,
                      include_dashboard=False,
                      object_store_memory=OBJECT_STORE_BYTES,
                      address="local")  # a new Ray, not one a `ray start` left (ray.init would join it)
    ray.init(**kwargs)
    return True


class ExpertPool:
    """A team's experts: pooled hidden states (cached), hard-routed single experts, text hints.
    Every expert reads `system_prompt` (the task's system prompt text; None: none) before a question,
    and templates that write a date read team.template_date. Oracle experts (experts/oracle.py) run in
    this process whatever the backend, answering from `answers`, the task's AnswerTable."""

    def __init__(self, team: TeamConfig, system_prompt: str | None, seed: int = 0, backend: str | None = None,
                 wait: bool = True, answers: AnswerTable | None = None):
        """wait=False: Ray experts go on loading in their actors after this returns (the caller can load
        its policy meanwhile); the first call that needs them, or ready(), waits."""
        self.team, self.system_prompt, self.seed, self.answers = team, system_prompt, seed, answers
        self.backend = backend or team.backend
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown expert backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        if not team.experts:
            raise ValueError(f"team {team.name!r} has no experts")
        n = len(team.experts)
        self.workers: list = [None] * n  # ExpertWorker objects (local) or Ray actor handles; None: not loaded
        self.infos: list[dict] = [{} for _ in range(n)]
        self._inputs: list[ExpertInput | None] = [None] * n  # what each expert reads, as token ids (cache keys)
        self.loads = 0  # expert models loaded by this pool
        self._owns_ray = self._closed = False
        self._loading: dict = {}  # Ray object ref of an actor's info() -> expert index, until it is ready
        try:
            self._caches = [StateCache(self._disk_cache(e)) for e in team.experts]
            # an expert whose states are on disk loads only when a prompt misses its cache
            cached = {i: c.width for i, c in enumerate(self._caches) if c.width is not None}
            for i, width in cached.items():
                self.infos[i] = {"name": team.experts[i].name, "model": team.experts[i].model, "hidden_size": width}
                log.info("expert %s: pooled states on disk (team.cache_dir); its model loads only on a miss", team.experts[i].name)
            self._start([i for i in range(n) if i not in cached])
            if wait:
                self.ready()
        except BaseException:
            self.shutdown()
            raise
        self._hints: list[dict[tuple[str, int], str]] = [{} for _ in team.experts]

    # ------------------------------------------------------------------ start / stop

    def _start(self, indices: list[int]) -> None:
        """Load these experts (all at once on Ray) and record what each is. Each start and each expert
        ready is an INFO line on this module's logger (`musketeers train` prints them)."""
        for i in [i for i in indices if oracle_kind(self.team.experts[i].model)]:  # no model: in this process
            self.workers[i] = OracleWorker(self.team.experts[i], self.answers)
            self._ready(i, self.workers[i].info())
        indices = [i for i in indices if self.workers[i] is None]
        if not indices:
            return
        experts, pooling = [self.team.experts[i] for i in indices], self.team.pooling
        if self.backend == "local":
            for i, e in zip(indices, experts):
                self.workers[i] = ExpertWorker(e, self.system_prompt, pooling, self.seed, template_date=self.team.template_date)
                self._ready(i, self.workers[i].info())
            return
        import ray

        if not ray.is_initialized():
            self._owns_ray = init_ray(sum(e.num_cpus for e in self.team.experts if not oracle_kind(e.model)))
        self._check_resources(experts)
        log.info("starting %d expert(s) in Ray actors: %s", len(experts), ", ".join(e.name for e in experts))
        actor = ray.remote(RayExpertWorker)
        for i, e in zip(indices, experts):
            threads = max(1, int(e.num_cpus))
            options = {"num_cpus": e.num_cpus, "num_gpus": e.num_gpus, "resources": e.resources, "max_restarts": MAX_RESTARTS,
                       "max_task_retries": MAX_TASK_RETRIES,
                       "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads)}}}
            self.workers[i] = actor.options(**options).remote(e, self.system_prompt, pooling, self.seed, threads,
                                                              self.team.template_date)
            self._loading[self.workers[i].info.remote()] = i  # all experts load concurrently
            if needs_conversion(e.model):  # else a minute of silence: the actor's own lines stay in the actor
                log.info("expert %s: converting %s once inside its actor first (under a minute on 2 cores; "
                         "the actor prints nothing until it is ready)", e.name, e.model)

    def ready(self) -> None:
        """Wait until every expert started is loaded (in the order they become ready); at once when none is loading."""
        if not self._loading:
            return
        import ray

        while self._loading:
            (ref,), _ = ray.wait(list(self._loading), num_returns=1)
            i = self._loading.pop(ref)
            self._ready(i, self._loaded(self.team.experts[i], ref))

    def _ready(self, index: int, info: dict) -> None:
        self.infos[index] = info
        self.loads += 1
        log.info("expert %s ready: %s, %.1fM parameters, %s on %s, %s, loaded in %.1f s", info["name"], info["architecture"],
                 info["parameters"] / 1e6, info["dtype"], info["device"], info["chat"], info["load_s"])

    @staticmethod
    def _loaded(expert: ExpertConfig, ref) -> dict:
        """An expert actor's info once it has loaded, or its failure as one ExpertLoadError line."""
        import ray

        try:
            info = ray.get(ref)
        except ray.exceptions.RayActorError as e:  # the process died while loading (e.g. out of memory)
            raise ExpertLoadError(f"expert {expert.name!r} ({expert.model}) failed to load: its actor died "
                                  f"({one_line(e)})") from None
        if "error" in info:
            raise ExpertLoadError(info["error"])
        return info

    def _check_resources(self, experts: list[ExpertConfig], wait_s: float = 10.0) -> None:
        """Fail now, not hang forever, when the Ray cluster cannot fit the experts. Resources that a
        pool just shut down frees may take a moment to show, hence a short wait when they could."""
        import ray
        from ray.util import get_current_placement_group

        if get_current_placement_group() is not None:  # a sweep run: its bundle was sized for these experts
            return
        want = {"CPU": sum(e.num_cpus for e in experts), "GPU": sum(e.num_gpus for e in experts)}
        for e in experts:
            for key, amount in e.resources.items():
                want[key] = want.get(key, 0.0) + amount
        total = ray.cluster_resources()
        deadline = time.monotonic() + wait_s
        while True:
            free = ray.available_resources()
            short = [k for k, n in want.items() if n > free.get(k, 0.0) + 1e-9]
            never = any(want[k] > total.get(k, 0.0) + 1e-9 for k in short)
            if not short or never or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if short:
            k = short[0]
            raise ExpertLoadError(f"team {self.team.name!r}: its experts need {want[k]:g} {k} in all "
                                  f"(num_cpus / num_gpus in the team file), the Ray cluster has {free.get(k, 0.0):g} free")

    def _disk_cache(self, expert: ExpertConfig) -> DiskCache | None:
        if not self.team.cache_dir:
            return None
        # the seed only in random poolings' keys: the runs of every seed then share deterministic states.
        # What the expert reads (template, system prompt, date, max_length) is in each prompt's key.
        seed = self.seed if uses_seed(self.team.pooling) else None
        fields = {"model": model_identity(expert.model), "name": expert.name, "dtype": expert.dtype,
                  "pooling": self.team.pooling, "seed": seed}
        if oracle_kind(expert.model):  # the answers it serves: a shuffled oracle's change with the task's items
            fields["answers"] = self.answers.fingerprint if self.answers is not None else None
        safe_name = "".join(c if c.isalnum() or c in "._-" else "_" for c in expert.name)
        directory = Path(self.team.cache_dir).expanduser() / f"{safe_name}-{fingerprint(fields)}"
        return DiskCache(directory, {k: str(v) for k, v in fields.items()})

    def shutdown(self) -> None:
        """Stop every expert (kill the actors; stop Ray if this pool started it). Idempotent."""
        if self.backend == "ray":
            import ray

            for actor in self.workers:
                try:
                    if actor is not None and not isinstance(actor, (ExpertWorker, OracleWorker)):  # in-process: no actor
                        ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self.workers, self._closed = [], True
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> ExpertPool:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ calls

    def _call(self, index: int, method: str, *args):
        """Start a call on one expert: a Ray object ref, or (local) the result itself."""
        if self._closed:
            raise RuntimeError("the expert pool has been shut down")
        if self.workers[index] is None:  # its states were on disk until now
            self._start([index])
        self.ready()
        worker = self.workers[index]
        if isinstance(worker, (ExpertWorker, OracleWorker)):  # in this process: the result itself
            return getattr(worker, method)(*args)
        return getattr(worker, method).remote(*args)

    def _wait(self, pending: list) -> list:
        """Results of _call's: Ray object refs fetched together, in-process results as they are."""
        if self.backend != "ray" or not pending:
            return pending
        import ray

        refs = [k for k, p in enumerate(pending) if isinstance(p, ray.ObjectRef)]
        if not refs:  # in-process results only (oracles): ray.get([]) would start a Ray
            return pending
        fetched = dict(zip(refs, ray.get([pending[k] for k in refs])))
        return [fetched.get(k, p) for k, p in enumerate(pending)]

    # ------------------------------------------------------------------ API

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.team.experts]

    @property
    def hidden_sizes(self) -> list[int]:
        self.ready()
        return [info["hidden_size"] for info in self.infos]

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """Per expert: hits, misses, forwards (prompts run through the model), cached, loaded_from_disk."""
        return {name: cache.stats() for name, cache in zip(self.names, self._caches)}

    def encode(self, questions: list[str]) -> list[torch.Tensor]:
        """Pooled states of every expert, in team order: a [B, d_i] float32 CPU tensor each."""
        return self._encode(range(len(self.team.experts)), list(questions))

    def encode_expert(self, index: int, questions: list[str]) -> torch.Tensor:
        """Pooled states of one expert [B, d_index]; the others do not run (hard routing)."""
        return self._encode([index], list(questions))[0]

    def expert_input(self, index: int) -> ExpertInput:
        """What expert `index` reads (its tokenizer, loaded once in this process; a local expert's own)."""
        if self._inputs[index] is None:
            worker = self.workers[index]
            if worker is None and oracle_kind(self.team.experts[index].model):  # its states were on disk
                self._start([index])
                worker = self.workers[index]
            if isinstance(worker, (ExpertWorker, OracleWorker)):
                self._inputs[index] = worker.input
            else:
                e = self.team.experts[index]
                try:
                    tokenizer = load_tokenizer(e.model, trust_remote_code=e.trust_remote_code)
                except Exception as err:  # noqa: BLE001 - every failure must name the expert
                    raise ExpertLoadError(f"expert {e.name!r} ({e.model}): its tokenizer failed to load: {one_line(err)}") from None
                self._inputs[index] = ExpertInput(tokenizer, self.system_prompt, self.team.template_date, e.max_length)
        return self._inputs[index]

    def _encode(self, indices, questions: list[str]) -> list[torch.Tensor]:
        distinct = list(dict.fromkeys(questions))
        keys, todo, pending = {}, {}, {}
        for i in indices:
            ids = dict(zip(distinct, self.expert_input(i).ids(distinct)))
            keys[i] = [prompt_key(ids[q]) for q in questions]
            todo[i] = self._caches[i].plan(keys[i])  # positions of the distinct uncached keys
            if todo[i]:
                pending[i] = self._call(i, "encode_ids", [ids[questions[k]] for k in todo[i]])
        for i, states in zip(pending, self._wait(list(pending.values()))):
            self._caches[i].add([keys[i][k] for k in todo[i]], states)
        return [self._gather(i, keys[i]) for i in indices]

    def _gather(self, index: int, keys: list[bytes]) -> torch.Tensor:
        if not keys:
            return torch.zeros(0, self.hidden_sizes[index])
        return self._caches[index].gather(keys)

    def generate_hints(self, questions: list[str], max_new_tokens: int) -> list[list[str]]:
        """Each expert's greedy hint (at most max_new_tokens of its tokens) per question:
        [expert][question], computed once per distinct question."""
        questions = list(questions)
        todo = [list(dict.fromkeys(q for q in questions if (q, max_new_tokens) not in hints)) for hints in self._hints]
        pending = {i: self._call(i, "generate", qs, max_new_tokens) for i, qs in enumerate(todo) if qs}
        for i, texts in zip(pending, self._wait(list(pending.values()))):
            self._hints[i].update({(q, max_new_tokens): t for q, t in zip(todo[i], texts)})
        return [[hints[(q, max_new_tokens)] for q in questions] for hints in self._hints]

    def benchmark(self, index: int, questions: list[str], repeats: int = 3) -> dict:
        """One expert's uncached encode of `questions` timed inside its worker:
        {"seconds": [per repeat], "prompt_tokens": [per question]}."""
        return self._wait([self._call(index, "benchmark", list(questions), repeats)])[0]

    def __repr__(self) -> str:
        return f"ExpertPool(team={self.team.name!r}, backend={self.backend!r}, experts={self.names})"
