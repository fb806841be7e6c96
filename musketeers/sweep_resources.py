"""What one run of a sweep asks of Ray: the run task's resources, the placement-group bundle it shares with
its experts (team.placement together) or none (apart), and a check, before anything is queued, that some
node of the cluster can hold each run and each of its experts (musketeers/sweep.py's docstring: Placement).

It reads the planned jobs (sweep_plan.Job) and the method traits; sweep.py imports it.
"""

from __future__ import annotations

from musketeers.method_traits import METHOD_TRAITS
from musketeers.sweep_plan import Job, SweepError


# A Ray started for a sweep declares this many of RUN_SLOT and each run takes one, so that runs share the cores
# no more than their threads allow: that Ray's logical CPUs are raised until a run's expert actors fit
# (experts.pool.init_ray), which on 2 cores let two 2-thread `single` runs start at once (15 s a step each,
# against 4 s for one alone). A cluster joined with --address declares none: Ray's CPUs place runs there.
RUN_SLOT = "musketeers_run_slot"


def local_run_slots(run_cpus: float, cores: int | None) -> int:
    """Policy runs a sweep's own Ray may hold at once: each gets run_cpus cores' worth of threads, at least one run."""
    return max(1, int((cores or 1) // max(run_cpus, 1.0)))


def with_run_slot(resources: dict, cluster: dict) -> dict:
    """The sweep's run resources, plus one RUN_SLOT when the cluster declares run slots."""
    if not cluster.get(RUN_SLOT):
        return resources
    return {**resources, "custom": {**resources["custom"], RUN_SLOT: 1.0}}


def _ray_experts(cfg: dict) -> list[dict]:
    """The experts a run starts as Ray actors (none for `single` or an in-process team)."""
    team = cfg["team"]
    return team["experts"] if METHOD_TRAITS[cfg["method"]].experts and team["backend"] == "ray" else []


def run_demand(job: Job, resources: dict, cluster_gpus: float) -> tuple[dict, dict | None]:
    """(the run task's Ray resource options, its placement-group bundle or None when its experts go apart)."""
    gpus = resources["num_gpus"] if resources["num_gpus"] != "auto" else float(cluster_gpus > 0)
    task = {"num_cpus": resources["num_cpus"], "num_gpus": gpus, "resources": dict(resources["custom"])}
    experts = _ray_experts(job.config)
    if not experts or job.config["team"]["placement"] == "apart":
        return task, None
    expert_gpus = sum(e["num_gpus"] for e in experts)
    if gpus and gpus <= expert_gpus:
        raise SweepError(f"{job.name}: its experts ask for {expert_gpus:g} GPU of the run's {gpus:g} "
                         f"(team.placement together); lower their num_gpus or raise resources.num_gpus")
    bundle = {"CPU": cpu_demand(job, resources), "GPU": max(gpus, expert_gpus)}
    for extra in (task["resources"], *(e["resources"] for e in experts)):
        for key, amount in extra.items():
            bundle[key] = bundle.get(key, 0.0) + amount
    task.update(num_gpus=gpus - expert_gpus if gpus else 0.0, resources={})  # the rest of the bundle is the experts'
    return task, {k: v for k, v in bundle.items() if v > 0}


def cpu_demand(job: Job, resources: dict) -> float:
    """CPUs one run holds at once (policy and experts): a local Ray must have at least this many."""
    return resources["num_cpus"] + sum(e["num_cpus"] for e in _ray_experts(job.config))


def check_fits(jobs: list[Job], demands: dict[str, tuple[dict, dict | None]], nodes: list[dict]) -> None:
    """Fail now, not wait forever, when no node of the cluster can hold a run (or one of its experts)."""
    def fits(need: dict) -> bool:
        return any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in need.items() if v) for node in nodes)

    for job in jobs:
        task, bundle = demands[job.name]
        need = bundle or {"CPU": task["num_cpus"], "GPU": task["num_gpus"], **task["resources"]}
        wants = [("the run", need)] + ([] if bundle else [
            (f"expert {e['name']!r}", {"CPU": e["num_cpus"], "GPU": e["num_gpus"], **e["resources"]})
            for e in _ray_experts(job.config)])
        for who, want in wants:
            if not fits(want):
                have = "; ".join(", ".join(f"{k} {v:g}" for k, v in sorted(n.items()) if not k.startswith("node:")
                                           and k not in ("memory", "object_store_memory")) for n in nodes)
                raise SweepError(f"{job.name}: {who} asks for {want} and no node of the Ray cluster has that "
                                 f"(nodes: {have or 'none'}); change resources in the sweep file or the team file")
