"""Expert serving: pooling, padding invariance, Ray == local, the per-prompt cache, faults, probe.

Three random experts of different architectures, hidden sizes and tokenizers. One Ray-backed pool
is shared by the module (Ray startup costs seconds on 2 cores).
"""

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from experts import POOLINGS, ExpertLoadError, ExpertPool, ExpertWorker, prompt_choice
from experts.cache import prompt_key
from experts.config import ExpertConfig, TeamConfig
from experts.probe import format_probe, probe_team
from musketeers.config import TaskConfig
from musketeers.data import build_prompt, system_prompt

SEED = 3
EXPERTS = [  # the bytes expert reads at most 120 tokens, so the long question is cut from the left
    ExpertConfig("llama-bytes", "random:llama:hidden_size=48,tokenizer=bytes", dtype="float32", max_length=120),
    ExpertConfig("gpt2-bpe", "random:gpt2:hidden_size=64,tokenizer=gpt2", dtype="float32"),
    ExpertConfig("qwen2-chars", "random:qwen2:hidden_size=80,num_hidden_layers=3,tokenizer=chars", dtype="float32"),
]
TASK = TaskConfig(name="test", system_prompt_text="Think, then answer inside <answer></answer>.",
                  assistant_prefill="<answer>")
SYSTEM = system_prompt(TASK)  # what the learner hands its experts
QUESTIONS = [
    "What is 2 + 2?",
    "Sort these numbers in ascending order: 31, 7, 12, 99, 4, 56, 23, 18, 71, 2, 64, 45, 9, 88, 15, 37. "
    "Then report the median of the sorted list, and explain briefly how you found it.",
    "x",
    "Compute 123 * 456.",
    "If a train leaves at 3 pm and travels 60 km/h for 2.5 hours, when and how far has it gone?",
]
ATOL = 1e-5


def team(pooling: str = "last_token", backend: str = "local", experts=EXPERTS, cache_dir=None) -> TeamConfig:
    return TeamConfig(name="test", backend=backend, pooling=pooling, experts=list(experts), cache_dir=cache_dir)


def delta(after: dict, before: dict, key: str) -> list[int]:
    return [after[name][key] - before[name][key] for name in after]


@pytest.fixture(scope="module")
def workers():
    return [ExpertWorker(e, SYSTEM, seed=SEED) for e in EXPERTS]


@contextmanager
def configured(worker, pooling, padding_side="left"):
    saved = worker.pooling, worker.padding_side
    worker.pooling, worker.padding_side = pooling, padding_side
    try:
        yield worker
    finally:
        worker.pooling, worker.padding_side = saved


@pytest.fixture(scope="module")
def local_pool():
    with ExpertPool(team("random_token"), SYSTEM, seed=SEED, backend="local") as pool:
        yield pool


@pytest.fixture(scope="module")
def ray_session():
    """A Ray instance for the module, with logical CPUs for a second pool beside the shared one."""
    import ray

    from experts.pool import init_ray

    started = init_ray(num_cpus=8)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_pool(ray_session):
    with ExpertPool(team("random_token", backend="ray"), SYSTEM, seed=SEED) as pool:
        yield pool


def direct_forward(worker, question: str, pooling: str) -> torch.Tensor:
    """The expected pooled state, by hand: the unpadded prompt through the full model."""
    tok = worker.tokenizer
    text = build_prompt(question, tok, replace(TASK, assistant_prefill=""))
    ids = tok(text, add_special_tokens=not tok.chat_template)["input_ids"][-worker.expert.max_length:]
    with torch.no_grad():
        states = worker.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    choice = prompt_choice(SEED, worker.expert.name, prompt_key(ids).hex())  # a random choice follows the ids read
    last_layer, last_token = len(states) - 1, len(ids) - 1
    layer, token = {
        "last_token": (last_layer, last_token),
        "first_token": (last_layer, 0),
        "random_token": (last_layer, choice % len(ids)),
        "first_layer": (0, last_token),
        "random_layer": (choice % len(states), last_token),
    }[pooling]
    return states[layer][0, token]


# ----------------------------------------------------------------------------- pooling


def test_expert_prompt_uses_task_system_prompt_without_prefill(workers):
    for w in workers:
        text = w.prompt("What is 2 + 2?")
        assert TASK.system_prompt_text in text and "What is 2 + 2?" in text
        assert not text.endswith("<answer>")
        assert all(not p.requires_grad for p in w.model.parameters()) and not w.model.training


@pytest.mark.parametrize("pooling", POOLINGS)
def test_every_pooling_equals_a_direct_forward(workers, pooling):
    for w in workers:
        with configured(w, pooling):
            batch = w.encode(QUESTIONS)
        assert batch.dtype == torch.float32 and batch.shape == (len(QUESTIONS), w.hidden_size)
        expected = torch.stack([direct_forward(w, q, pooling) for q in QUESTIONS])
        torch.testing.assert_close(batch, expected, atol=ATOL, rtol=0)


def test_long_prompts_are_cut_from_the_left(workers):
    w = workers[0]
    ids, mask = w.tokenize(QUESTIONS, "right")
    assert ids.shape[1] == w.expert.max_length  # the long question was cut ...
    long_row = ids[1][mask[1].bool()].tolist()
    assert w.tokenizer.decode(long_row).endswith("Assistant: ")  # ... keeping its end


@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_side_and_batch_do_not_change_a_prompt_state(workers, pooling):
    for w in workers:
        with configured(w, pooling, "left"):
            left = w.encode(QUESTIONS)
            alone = torch.cat([w.encode([q]) for q in QUESTIONS])
        with configured(w, pooling, "right"):
            right = w.encode(QUESTIONS)
        torch.testing.assert_close(left, alone, atol=ATOL, rtol=0)
        torch.testing.assert_close(right, alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("pooling", ["random_token", "random_layer"])
def test_random_choices_are_per_prompt_and_reproducible(workers, pooling):
    w = workers[2]
    with configured(w, pooling):
        full = w.encode(QUESTIONS)
        shuffled = w.encode([QUESTIONS[3], QUESTIONS[0], QUESTIONS[4]])
        again = w.encode(QUESTIONS[3:4])
    torch.testing.assert_close(shuffled, full[[3, 0, 4]], atol=ATOL, rtol=0)
    torch.testing.assert_close(again[0], full[3], atol=ATOL, rtol=0)
    # the choice is a pure function of (seed, expert, prompt), and it does vary between prompts
    assert prompt_choice(SEED, "e", "q") == prompt_choice(SEED, "e", "q") != prompt_choice(SEED + 1, "e", "q")
    layers = {prompt_choice(SEED, w.expert.name, q) % 4 for q in QUESTIONS}
    assert len(layers) > 1


# ----------------------------------------------------------------------------- pool + cache


def test_pool_api(local_pool):
    assert local_pool.names == [e.name for e in EXPERTS]
    assert local_pool.hidden_sizes == [48, 64, 80]
    out = local_pool.encode(QUESTIONS[:2])
    assert [t.shape for t in out] == [(2, 48), (2, 64), (2, 80)]
    assert [t.shape for t in local_pool.encode([])] == [(0, 48), (0, 64), (0, 80)]
    archs = [info["architecture"].split()[0] for info in local_pool.infos]
    assert archs == ["llama", "gpt2", "qwen2"]
    assert len({info["vocab_size"] for info in local_pool.infos}) == 3  # three different tokenizers


def test_hard_routing_runs_only_the_chosen_expert(local_pool):
    questions = ["routing question A", "routing question B"]
    before = local_pool.stats
    state = local_pool.encode_expert(1, questions)
    assert delta(local_pool.stats, before, "forwards") == [0, 2, 0]
    assert torch.equal(state, local_pool.encode(questions)[1])


def test_ray_backend_equals_local_bit_for_bit(ray_pool, local_pool):
    assert ray_pool.hidden_sizes == local_pool.hidden_sizes
    questions = [f"{q} (ray or local?)" for q in QUESTIONS]  # fresh: cached rows keep their first batch's rounding
    for got, want in zip(ray_pool.encode(questions), local_pool.encode(questions)):
        assert torch.equal(got, want)
    assert ray_pool.generate_hints(QUESTIONS[:2], 4) == local_pool.generate_hints(QUESTIONS[:2], 4)


def test_grpo_request_runs_one_forward_per_prompt(ray_pool):
    import ray

    B, G = 4, 8
    prompts = [f"GRPO prompt {k}: what is {k} * 7?" for k in range(B)]
    request = [p for p in prompts for _ in range(G)]
    before = ray_pool.stats
    worker_before = [info["forwards"] for info in ray.get([w.info.remote() for w in ray_pool.workers])]
    out = ray_pool.encode(request)
    after = ray_pool.stats
    assert delta(after, before, "forwards") == [B] * 3
    assert delta(after, before, "misses") == [B] * 3
    assert delta(after, before, "hits") == [B * (G - 1)] * 3
    worker_after = [info["forwards"] for info in ray.get([w.info.remote() for w in ray_pool.workers])]
    assert [a - b for a, b in zip(worker_after, worker_before)] == [B] * 3  # counted by the models
    for states in out:
        assert states.shape[0] == B * G
        assert torch.equal(states.view(B, G, -1), states[::G].unsqueeze(1).expand(B, G, -1))
    again = ray_pool.encode(request)  # a later visit: all hits
    assert delta(ray_pool.stats, after, "forwards") == [0] * 3
    assert delta(ray_pool.stats, after, "hits") == [B * G] * 3
    assert all(torch.equal(a, b) for a, b in zip(out, again))


def test_disk_cache_survives_a_new_pool(tmp_path, monkeypatch):
    import experts.cache

    experts_ = [EXPERTS[0], EXPERTS[2]]
    request = [q for q in QUESTIONS[:3] for _ in range(4)]
    with ExpertPool(team(experts=experts_, cache_dir=str(tmp_path)), SYSTEM, seed=SEED) as first:
        want = first.encode(request)
        first.encode(["one more prompt"])
        assert [s["forwards"] for s in first.stats.values()] == [4, 4]
    shards = sorted(tmp_path.rglob("*.safetensors"))
    assert len(shards) == 4 and not list(tmp_path.rglob("*.tmp"))
    (shards[0].parent / "corrupt.safetensors").write_bytes(b"not a shard")  # skipped, not fatal
    monkeypatch.setattr(experts.cache, "MERGE_AT", 2)  # ... and then merged with the others
    with ExpertPool(team(experts=experts_, cache_dir=str(tmp_path)), SYSTEM, seed=SEED) as second:
        assert [s["loaded_from_disk"] for s in second.stats.values()] == [4, 4]
        got = second.encode(request)
        assert [s["forwards"] for s in second.stats.values()] == [0, 0]
        assert [s["hits"] for s in second.stats.values()] == [12, 12]
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert len(sorted(tmp_path.rglob("*.safetensors"))) == 2  # one merged shard per expert
    with ExpertPool(team("first_token", experts=experts_, cache_dir=str(tmp_path)), SYSTEM, seed=SEED) as other:
        other.encode(request)  # another pooling is another cache
        assert [s["forwards"] for s in other.stats.values()] == [3, 3]


# ----------------------------------------------------------------------------- faults


def test_killed_actor_is_restarted_and_the_call_retried(ray_pool, local_pool):
    import ray

    ray.kill(ray_pool.workers[0], no_restart=False)  # Ray's own kill, restart allowed
    questions = ["asked after a ray.kill", "and another"]
    for got, want in zip(ray_pool.encode(questions), local_pool.encode(questions)):
        assert torch.equal(got, want)
    pid = ray.get(ray_pool.workers[2].info.remote())["pid"]
    os.kill(pid, signal.SIGKILL)  # the process dies under the next call
    questions = ["asked after a SIGKILL"]
    for got, want in zip(ray_pool.encode(questions), local_pool.encode(questions)):
        assert torch.equal(got, want)
    assert ray.get(ray_pool.workers[2].info.remote())["pid"] != pid


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_bad_model_fails_start_with_one_line_naming_the_expert(tmp_path, backend, request):
    if backend == "ray":
        request.getfixturevalue("ray_session")  # join the module's Ray instead of starting one
    broken = ExpertConfig("broken-expert", str(tmp_path), dtype="float32")  # a folder without a model
    with pytest.raises(ExpertLoadError) as caught:
        ExpertPool(team(experts=[EXPERTS[2], broken], backend=backend), SYSTEM)
    message = str(caught.value)
    assert "\n" not in message and "broken-expert" in message and "cannot load model" in message
    if backend == "ray":
        import ray

        assert ray.is_initialized()  # the failed pool did not own (or stop) the caller's Ray


def test_missing_gpus_fail_start_instead_of_hanging(ray_session):
    gpu_expert = replace(EXPERTS[2], num_gpus=0.5)
    import ray

    if ray.cluster_resources().get("GPU", 0) >= 0.5:
        pytest.skip("this machine has a GPU")
    with pytest.raises(ExpertLoadError, match="need 0.5 GPU"):
        ExpertPool(team(experts=[gpu_expert], backend="ray"), SYSTEM)


SHUTDOWN_SCRIPT = r"""
import json, time, psutil, torch, ray
torch.set_num_threads(1)
from experts import ExpertPool
from experts.config import ExpertConfig, TeamConfig

def alive(proc):
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False

def wait_gone(procs, timeout=30):
    end = time.time() + timeout
    while time.time() < end and any(alive(p) for p in procs):
        time.sleep(0.2)
    return [p.name() for p in procs if alive(p)]

team = TeamConfig(name="t", backend="ray", experts=[
    ExpertConfig("q", "random:qwen2:hidden_size=32,tokenizer=chars", dtype="float32")])
owner = ExpertPool(team, None)                # starts Ray (no system prompt)
guest = ExpertPool(team, None)                # joins it
guest_proc = psutil.Process(guest.infos[0]["pid"])
guest.encode(["hi"])
guest.shutdown()
report = {"guest_left": wait_gone([guest_proc]), "ray_after_guest": ray.is_initialized()}
owner.encode(["hi"])
procs = psutil.Process().children(recursive=True)
report["ray_processes"] = len(procs)
owner.shutdown()
report["ray_after_owner"] = ray.is_initialized()
report["left"] = wait_gone(procs)
print("REPORT " + json.dumps(report))
"""


def test_shutdown_leaves_no_processes(tmp_path):
    """In a fresh process: a pool that started Ray stops it; a pool that joined kills only its actors."""
    log = tmp_path / "log.txt"
    with open(log, "w") as out:  # a file, not a pipe: a leaked Ray daemon would hold a pipe open forever
        proc = subprocess.Popen([sys.executable, "-c", SHUTDOWN_SCRIPT], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child and whatever it started
            proc.wait()
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, text[-3000:]
    report = json.loads(lines[-1][len("REPORT "):])
    assert report["guest_left"] == [] and report["ray_after_guest"]  # a guest kills only its actors
    assert report["ray_processes"] > 0
    assert not report["ray_after_owner"] and report["left"] == []


# ----------------------------------------------------------------------------- hints, probe, teams


@pytest.mark.parametrize("max_new_tokens", [1, 6])
def test_hints_are_at_most_n_expert_tokens(local_pool, max_new_tokens):
    hints = local_pool.generate_hints(QUESTIONS, max_new_tokens)
    assert len(hints) == 3 and all(len(h) == len(QUESTIONS) for h in hints)
    for worker, texts in zip(local_pool.workers, hints):
        for text in texts:
            assert len(worker.tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_new_tokens
    assert local_pool.generate_hints(QUESTIONS, max_new_tokens) == hints  # greedy and cached


def test_probe_describes_every_expert():
    rows = probe_team(team(experts=EXPERTS[:1] + EXPERTS[2:]), SYSTEM, repeats=1)
    assert [r["name"] for r in rows] == ["llama-bytes", "qwen2-chars"]
    assert [r["hidden_size"] for r in rows] == [48, 80]
    assert all(r["parameters"] > 0 and r["latency_ms"] > 0 and r["vocab_size"] > 0 for r in rows)
    text = format_probe(rows)
    assert "llama-bytes" in text and "qwen2-chars" in text and "ms/batch" in text


@pytest.mark.parametrize("name", ["default", "generalist", "naive", "llm", "embedded"])
def test_every_team_file_resolves(name):
    from musketeers.config import load_run_config
    from experts.models import parse_model_ref

    cfg = load_run_config("arithmetic", [f"team={name}"])
    assert cfg.team.experts
    kinds = {parse_model_ref(e.model).kind for e in cfg.team.experts}
    assert kinds <= ({"embedded", "random"} if name == "embedded" else {"hub"})


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_the_pool_logs_each_expert_ready_and_a_conversion_in_an_actor_before_it_starts(backend, request, caplog, monkeypatch):
    """What `musketeers train` prints while experts load: an actor's own output never reaches the driver,
    so the pool says beforehand which expert converts an embedded model first."""
    import logging

    if backend == "ray":
        request.getfixturevalue("ray_session")
    monkeypatch.setattr("experts.pool.needs_conversion", lambda ref: ref == EXPERTS[2].model)
    caplog.set_level(logging.INFO, logger="experts")
    with ExpertPool(team(experts=EXPERTS[1:], backend=backend), SYSTEM):
        pass
    lines = [r.getMessage() for r in caplog.records if r.name == "experts.pool"]
    ready = sorted(line.split(":")[0] for line in lines if " ready: " in line)
    assert ready == ["expert gpt2-bpe ready", "expert qwen2-chars ready"]
    assert any(line.startswith("expert gpt2-bpe ready: gpt2 (GPT2LMHeadModel), ") and line.endswith(" s") for line in lines)
    converting = [line for line in lines if "converting" in line]
    if backend == "ray":
        assert lines[0] == "starting 2 expert(s) in Ray actors: gpt2-bpe, qwen2-chars"
        assert converting == [f"expert qwen2-chars: converting {EXPERTS[2].model} once inside its actor first "
                              "(under a minute on 2 cores; the actor prints nothing until it is ready)"]
    else:  # in this process the conversion logs itself (experts.embedded)
        assert converting == []
