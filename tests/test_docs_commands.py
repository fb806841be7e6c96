"""Every `musketeers ...` command in a fenced block of README.md or docs/*.md still parses as written, and
where it names a run config (a task with overrides, a team) that config still resolves; files it names
under configs/ exist. Nothing runs: parsing and config loading are offline. Placeholders such as
`<run>` and shell variables such as "$RUN" stand for paths and parse as any path would. Every relative
link of those pages reaches its file and heading (sections moved out of the README stay reachable)."""
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from musketeers.cli import DEFAULT_TASK, parse_args
from musketeers.config import load_run_config
from musketeers.errors import MusketeersError

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
QUICKSTART = ("bash launch/setup.sh && .venv/bin/musketeers train",
              "bash launch/setup.sh && .venv/bin/python -m pytest -q")


def fenced_lines(path: Path):
    """(line number, text) of every line inside a ``` fence."""
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            yield number, line


def musketeers_argvs(line: str):
    """The argument lists of the `musketeers` invocations on a shell line (also `.venv/bin/musketeers`,
    after `&&`, `;`, `srun` or `then`); comments dropped, <placeholders> made plain words."""
    line = re.sub(r"<([^>]*)>", lambda m: re.sub(r"\W+", "_", m.group(1)) or "x", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    try:
        words = list(lexer)
    except ValueError:  # not shell (an output line with an unmatched quote)
        return
    command: list[str] = []
    for word in [*words, ";"]:
        if word and set(word) <= set(lexer.punctuation_chars):  # ; && || | ( ): one command ends
            found = [k for k, w in enumerate(command) if w == "musketeers" or w.endswith("/musketeers")]
            if found:
                yield command[found[0] + 1:]
            command = []
        else:
            command.append(word)


def documented_commands():
    for path in DOCS:
        for number, line in fenced_lines(path):
            for k, argv in enumerate(musketeers_argvs(line)):
                where = f"{path.relative_to(REPO)}:{number}" + (f"#{k + 1}" if k else "")
                yield pytest.param(where, argv, id=where)


COMMANDS = list(documented_commands())


def test_the_docs_hold_commands_and_the_quickstart_is_unchanged():
    assert len(COMMANDS) >= 15, [c.id for c in COMMANDS]  # the extraction still finds them
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert all(f"\n{command}\n" in readme for command in QUICKSTART)
    assert QUICKSTART[1] in (REPO / ".ci" / "run").read_text()  # CI runs exactly the README's test command


def run_config(args) -> tuple[str, list[str]] | None:
    """The (task, overrides) the command would load, as musketeers/cli.py's commands load them; None when it
    reads a run's own config (train --resume, eval) or none at all."""
    if args.command == "train":
        if args.resume:
            return None
        task, overrides = args.task, list(args.overrides)
        if task is not None and "=" in task:  # `musketeers train key=value ...`: the demo, overridden
            task, overrides = None, [task, *overrides]
        return task or DEFAULT_TASK, overrides
    if args.command == "experts" and args.action == "probe":
        return args.task, [f"team={args.team}", *args.overrides]
    if hasattr(args, "task") and hasattr(args, "overrides"):  # config show, data show/check, experts precompute
        return args.task, list(args.overrides)
    return None


@pytest.mark.parametrize("where,argv", COMMANDS)
def test_a_documented_command_parses_and_its_config_resolves(where, argv):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `musketeers {shlex.join(argv)}` does not parse: {stderr.getvalue().strip().splitlines()[-1]}")
    missing = [a for a in argv if a.startswith("configs/") and not (REPO / a).exists()]
    assert not missing, f"{where}: `musketeers {shlex.join(argv)}` names {missing}, which do not exist"
    config = run_config(args)
    if config is not None:
        try:
            load_run_config(*config)
        except MusketeersError as e:  # a renamed key, task or team: the command no longer runs as written
            pytest.fail(f"{where}: `musketeers {shlex.join(argv)}`: its config does not resolve: {e}")


def unfenced_lines(path: Path):
    fenced = dict(fenced_lines(path))
    return [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if n not in fenced and not line.lstrip().startswith("```")]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = [line.lstrip("#").strip() for _, line in unfenced_lines(path) if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_in_the_docs_reaches_its_file_and_heading():
    """Sections moved from the README into docs/: a link left pointing at the old place fails here."""
    broken = []
    for path in DOCS:
        for number, line in unfenced_lines(path):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", target):  # https:, mailto:
                    continue
                file, _, anchor = target.partition("#")
                linked = (path.parent / file).resolve() if file else path
                if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
                    broken.append(f"{path.relative_to(REPO)}:{number}: {target}")
    assert not broken, broken
