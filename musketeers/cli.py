"""The `musketeers` command line. Every bad input ends as one line on stderr and exit code 2; a run stopped
by preemption or a full disk ends as one line and exit code 75 or 74 (musketeers/interruptions.py).

It sits on top of musketeers/layers.py and may import any module; each command registers its parser
from its own module.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import yaml

from musketeers.config import RunConfig, load_run_config
from musketeers.errors import MusketeersError

TASK_HELP = "a task family by name (arithmetic, algorithmic, logic, gsm8k) or a path to a task YAML"
DEFAULT_TASK = "demo"  # the embedded CPU demo: configs/tasks/demo.yaml
OVERRIDES_HELP = "config overrides as dotted key=value, e.g. team=naive seed=1 training.max_steps=10"


class UsageError(MusketeersError, ValueError):
    """A bad command-line argument."""


def _config(args: argparse.Namespace) -> RunConfig:
    return load_run_config(args.task, args.overrides)


# ----------------------------------------------------------------------------- config


def cmd_config_show(args: argparse.Namespace) -> None:
    print(yaml.safe_dump(_config(args).to_dict(), sort_keys=False), end="")


# ----------------------------------------------------------------------------- data


def cmd_data_show(args: argparse.Namespace) -> None:
    from experts.models import ModelLoadError, ModelRefError, load_tokenizer
    from musketeers.data import build_prompt, load_split
    from rewards import reference_completion, score_completion

    if args.n < 1:
        raise UsageError(f"-n must be at least 1, got {args.n}")
    cfg = _config(args)
    rows = load_split(cfg.task, args.split)
    try:
        tokenizer = load_tokenizer(cfg.policy.model, trust_remote_code=cfg.policy.trust_remote_code)
    except ModelRefError:  # a malformed or unknown reference is a mistake to fix, not a missing download
        raise
    except ModelLoadError as e:  # e.g. a hub model offline: the data is still worth seeing
        tokenizer = None
        print(f"musketeers: note: {str(e).rstrip('.')}; the prompts below use the plain layout, not the policy's chat template",
              file=sys.stderr)
    if tokenizer is not None:
        from experts.prompt import chat_format

        chat_format(tokenizer, cfg.team.template_date)  # the date the policy's template reads, as in training
    for k in range(min(args.n, len(rows))):
        row = rows[k]
        gold = reference_completion(row, prefill=cfg.task.assistant_prefill)
        reward = score_completion(gold, row["answer"], row["task"], row["entry"], prefill=cfg.task.assistant_prefill)
        print(f"=== {args.split}[{k}]  dataset={row['task']}")
        print(build_prompt(row["question"], tokenizer, cfg.task))
        print(f"--- gold answer: {row['answer']!r}")
        print(f"--- reward of the gold answer: {reward:.3f}\n")


def cmd_data_check(args: argparse.Namespace) -> None:
    from musketeers.data import disjointness_report

    report = disjointness_report(_config(args).task)
    print(json.dumps(report, indent=2))
    if not report["disjoint"]:
        sys.exit(1)


# ----------------------------------------------------------------------------- experts


def cmd_experts_probe(args: argparse.Namespace) -> None:
    from experts.probe import format_inputs, format_probe, probe_team, read_inputs
    from musketeers.data import system_prompt

    cfg = load_run_config(args.task, [f"team={args.team}", *args.overrides])
    if args.show_input is not None:
        rows = read_inputs(cfg.team, system_prompt(cfg.task), args.show_input)
        print(format_inputs([*rows, _policy_input(cfg, args.show_input)]))
        return
    print(format_probe(probe_team(cfg.team, system_prompt(cfg.task), backend=args.backend)))


def _policy_input(cfg: RunConfig, question: str) -> dict:
    """What the policy reads for `question` (build_prompt, tokenised as TRL and evaluation tokenise
    prompts), in experts.probe.format_inputs' row form."""
    from experts.models import ModelLoadError, ModelRefError, load_tokenizer
    from experts.prompt import chat_format
    from musketeers.data import build_prompt

    row = {"who": "policy", "model": cfg.policy.model}
    try:
        tokenizer = load_tokenizer(cfg.policy.model, trust_remote_code=cfg.policy.trust_remote_code)
    except ModelRefError:
        raise
    except ModelLoadError as e:  # e.g. a hub policy offline: the experts' inputs are still worth seeing
        return {**row, "note": f"not shown: {str(e).rstrip('.')}"}
    chat = chat_format(tokenizer, cfg.team.template_date)
    text = build_prompt(question, tokenizer, cfg.task)
    return {**row, "chat": chat.describe(), "tokens": len(tokenizer(text=text)["input_ids"]), "text": text}


def cmd_experts_precompute(args: argparse.Namespace) -> None:
    from musketeers.conditioning import precompute_states

    cfg = _config(args)
    stats = precompute_states(cfg, batch_size=args.batch_size)
    print(json.dumps({"cache_dir": cfg.team.cache_dir, "team": cfg.team.name, **stats}, indent=1))


# ----------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> None:
    from musketeers.train import train

    if args.task is not None and "=" in args.task:  # `musketeers train key=value ...`: the demo, overridden
        args.task, args.overrides = None, [args.task, *args.overrides]
    if args.resume:
        if args.task or args.overrides:
            raise UsageError("--resume continues a run with its own config: give no task or overrides with it")
        train(resume=args.resume)
        return
    train(load_run_config(args.task or DEFAULT_TASK, args.overrides))


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="musketeers",
        description="Multi-expert RLVR: frozen experts, a Perceiver adapter and a LoRA policy trained with GRPO.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_task(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("task", help=TASK_HELP)
        p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
        return p

    train = commands.add_parser("train", help="run GRPO (no task: the embedded CPU demo, configs/tasks/demo.yaml)")
    train.add_argument("task", nargs="?", help=TASK_HELP)
    train.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    train.set_defaults(func=cmd_train)

    experts = commands.add_parser("experts", help="inspect expert teams").add_subparsers(dest="action", metavar="ACTION", required=True)
    probe = experts.add_parser("probe", help="load a team and print each expert's size, vocabulary, load time and latency")
    probe.add_argument("team", help="a team by name (default, generalist, naive, llm, embedded) or a path to a team YAML")
    probe.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    probe.add_argument("--task", default="arithmetic", help="the task whose system prompt experts read (default arithmetic)")
    probe.add_argument("--backend", choices=["ray", "local"], help="override the team's backend")
    probe.add_argument("--show-input", metavar="QUESTION",
                       help="print what each expert and the policy read for QUESTION (text and token count; loads tokenizers only)")
    probe.set_defaults(func=cmd_experts_probe)
    precompute = with_task(experts.add_parser(
        "precompute", help="compute every pooled state of a task's training and evaluation prompts into team.cache_dir"))
    precompute.add_argument("--batch-size", type=int, default=64, help="prompts per expert call (default 64)")
    precompute.set_defaults(func=cmd_experts_precompute)

    from musketeers.evaluate import add_eval_parser
    from musketeers.report import add_report_parser
    from musketeers.sweep import add_sweep_parser

    add_eval_parser(commands)
    add_report_parser(commands)
    add_sweep_parser(commands)

    config = commands.add_parser("config", help="show resolved configs").add_subparsers(dest="action", metavar="ACTION", required=True)
    with_task(config.add_parser("show", help="print the resolved config of a run")).set_defaults(func=cmd_config_show)

    data = commands.add_parser("data", help="inspect task data").add_subparsers(dest="action", metavar="ACTION", required=True)
    show = with_task(data.add_parser("show", help="print prompts, gold answers and the reward the gold answer earns "
                                                    "(the plain prompt layout, with a note, when the policy's tokenizer cannot be loaded)"))
    show.add_argument("--split", default="train", choices=["train", "validation", "test"])
    show.add_argument("-n", type=int, default=3, help="number of items (default 3)")
    show.set_defaults(func=cmd_data_show)
    check = with_task(data.add_parser("check", help="prove at full size that no held-out question is in training"))
    check.set_defaults(func=cmd_data_check)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, letting key=value overrides stand anywhere (also after options such as -n 3)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        args.func(args)
    except MusketeersError as e:
        stopped = getattr(e, "exit_code", None)  # musketeers.interruptions.RunStopped: preempted (75), disk full (74)
        print(f"musketeers: {e}" if stopped else f"musketeers: error: {e}", file=sys.stderr)
        sys.exit(stopped or 2)


if __name__ == "__main__":
    main()
