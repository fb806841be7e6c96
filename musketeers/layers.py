"""The architecture of musketeers/, declared once: its modules in layers, lowest first.

A module may import modules of its own layer or of layers below it, never above, and no import circle
may form, counting imports inside functions and under `if TYPE_CHECKING:` (tests/test_layers.py reads
every import with `ast` and checks both). Every module of musketeers/ is in exactly one layer, so a new
module starts by saying where it belongs. experts/ and rewards/ lie below all of these and never
import musketeers (tests/test_imports.py). This module is data only and imports nothing.
"""

LAYERS: tuple[tuple[str, ...], ...] = (
    # 0: leaves, no project imports: errors, what each method is, what a run prints, routing metrics,
    #    the adapters g_phi, plotting primitives, this declaration ("__init__": the package itself)
    ("__init__", "layers", "errors", "method_traits", "console", "metrics", "adapters", "plotting"),
    # 1: the config: schema (pure data), checks, loader
    ("config_schema", "config_checks", "config"),
    # 2: files and data: the run directory, the run store, preemption, task data and splits, where C sits
    ("rundir", "run_store", "interruptions", "splits", "data", "context"),
    # 3: the methods (the registry that builds adapters and conditions the policy)
    ("methods",),
    # 4: from questions to context tokens: experts, adapter, router
    ("conditioning",),
    # 5: the policy loader and the one generation-and-scoring path that training and eval share
    ("policy", "generation"),
    # 6: the GRPO trainer, experiment trackers, runs read back, one run's curves
    ("trainer", "tracking", "runs", "curves"),
    # 7: the recipe and the commands' engines: train, eval, the report and its plots
    ("train", "evaluate", "plots", "report"),
    # 8: sweeps and the command line
    ("sweep_plan", "sweep_resources", "sweep_table", "sweep", "cli"),
)
