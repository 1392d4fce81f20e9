"""The docs and the tools agree: what the docs' code blocks (and the units) run exists.

Every command line in a fenced code block of README.md and docs/*.md that
runs one of the four tools is checked: each subcommand must exist (its
``--help`` is run and must succeed) and each flag must appear in the
``--help`` of the command it is given to. The command tables of
docs/chasquid-util.md count as ``chasquid-util`` command lines, and so do
the systemd units' ``Exec*=`` lines. Make targets,
systemd units and repository paths the blocks use must exist too.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from chasquid_util.completions import TOOLS

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOOL_COMMANDS = {t.prog: t for t in TOOLS}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&"}
_FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
# A synopsis wrapped onto an indented line that starts with "[" or "-".
_WRAPPED = re.compile(r"\n[ \t]+(?=[\[-])")
_TABLE_COMMAND = re.compile(r"^\| `([a-z][^`]*)`", re.M)
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_@.-]*$|^<.*>$|^\.\.\.$")


@dataclass(frozen=True)
class CommandLine:
    """One command line of the docs and where it is."""

    doc: str
    line: str

    def __str__(self) -> str:
        return f"{self.doc}: {self.line}"


def command_lines() -> Iterator[CommandLine]:
    """Every command line of the fenced code blocks (continuations joined, comments dropped)."""
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        name = str(doc.relative_to(ROOT))
        for block in _FENCE.findall(text):
            for line in _WRAPPED.sub(" ", block.replace("\\\n", " ")).splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    yield CommandLine(name, line.strip())
        if doc.name == "chasquid-util.md":
            for synopsis in _TABLE_COMMAND.findall(text):
                yield CommandLine(name, f"chasquid-util {synopsis}")
    # The shipped units' command lines, commented-out examples included.
    for unit in sorted((ROOT / "etc" / "systemd" / "system").glob("*.service")):
        for m in re.finditer(r"^#?Exec\w+=(.*)$", unit.read_text(), re.M):
            yield CommandLine(str(unit.relative_to(ROOT)), m.group(1))


def words(line: str) -> list[list[str]]:
    """The simple commands of a shell line, as word lists.

    Square brackets mark optional parts of a synopsis: they are dropped, and
    a ``|`` inside them separates alternatives, not commands.
    """
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return []
    commands: list[list[str]] = [[]]
    depth = 0
    for token in tokens:
        if token in SHELL_OPERATORS and depth == 0:
            commands.append([])
            continue
        depth += token.count("[") - token.count("]")
        bare = token.replace("[", "").replace("]", "")
        if bare and bare != "|":
            commands[-1].append(bare)
    return [c for c in commands if c]


@functools.cache
def run_help(prog: str, *path: str) -> subprocess.CompletedProcess[str]:
    """``prog path... --help``, run once per command."""
    exe = Path(sys.executable).parent / prog
    return subprocess.run([str(exe), *path, "--help"], capture_output=True, text=True, timeout=60)


def _option(cmd: click.Command, name: str) -> click.Option | None:
    for param in cmd.params:
        if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
            return param
    return None


def check_tool(prog: str, args: list[str]) -> list[str]:
    """What is wrong with one invocation of a tool: unknown commands and flags."""
    cmd = TOOL_COMMANDS[prog].command()
    path: list[str] = []
    problems: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg.startswith("-") and arg != "-":
            name, eq, _ = arg.partition("=")
            helped = run_help(prog, *path)
            for flag in name.split("/"):
                if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helped.stdout):
                    problems.append(f"{flag} is not in `{' '.join([prog, *path])} --help`")
            option = _option(cmd, name.split("/")[0])
            if option is not None and not option.is_flag and not option.count and not eq:
                i += 1  # the value is the next word
            continue
        if isinstance(cmd, click.Group):
            if _PLACEHOLDER.match(arg):
                break  # COMMAND: nothing more can be checked
            sub = cmd.get_command(click.Context(cmd), arg)
            if sub is None:
                problems.append(f"{prog} has no command {' '.join([*path, arg])}")
                break
            helped = run_help(prog, *path, arg)
            if helped.returncode != 0 or "Usage:" not in helped.stdout:
                problems.append(f"`{' '.join([prog, *path, arg])} --help` failed")
                break
            cmd, path = sub, [*path, arg]
    return problems


def check_other(argv: list[str]) -> list[str]:
    """Make targets, systemd units and repository files that a command line names."""
    problems = []
    if argv[0] == "make":
        makefile = (ROOT / "Makefile").read_text()
        for target in (a for a in argv[1:] if "=" not in a and not a.startswith("-")):
            if not re.search(rf"^{re.escape(target)}:", makefile, re.M):
                problems.append(f"the Makefile has no target {target}")
    if argv[0] == "systemctl" and len(argv) > 1 and argv[1] in ("enable", "start"):
        for unit in (a for a in argv[2:] if not a.startswith("-")):
            name = unit if "." in unit else f"{unit}.service"
            if not (ROOT / "etc" / "systemd" / "system" / name).is_file():
                problems.append(f"no unit etc/systemd/system/{name}")
    for arg in argv[1:]:
        if re.match(r"^(etc|completions|docs|bench|tests)/", arg) and not list(ROOT.glob(arg)):
            problems.append(f"{arg} does not exist in the repository")
    return problems


def invocations() -> Iterator[tuple[CommandLine, list[str]]]:
    """Each simple command of the docs with the line it comes from."""
    for cl in command_lines():
        for argv in words(cl.line):
            yield cl, argv


def _tool_of(argv: list[str]) -> tuple[str, list[str]] | None:
    """(tool, its arguments) when the command runs one of the tools (by name or by path)."""
    i = 0
    while i < len(argv) and (argv[i] in ("sudo", "env", "exec") or "=" in argv[i]):
        i += 1
    if i < len(argv) and (prog := argv[i].rsplit("/", 1)[-1]) in TOOL_COMMANDS:
        return prog, argv[i + 1 :]
    return None


def test_the_docs_run_the_tools() -> None:
    # The check itself must see the tools in the docs, or it would pass on nothing.
    seen = {found[0] for _, argv in invocations() if (found := _tool_of(argv))}
    assert {"chasquid", "chasquid-util"} <= seen, seen


def test_every_command_and_flag_in_the_docs_exists() -> None:
    problems = []
    for cl, argv in invocations():
        found = _tool_of(argv)
        found_problems = check_tool(*found) if found else check_other(argv)
        problems += [f"{cl}\n    {p}" for p in found_problems]
    assert not problems, "docs and tools disagree:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("chasquid-util user-frobnicate x@y", "chasquid-util has no command user-frobnicate"),
        ("chasquid-util user-add a@b --no-such-flag", "--no-such-flag is not in"),
        ("chasquid -C /etc/chasquid --frob=1", "--frob is not in `chasquid --help`"),
        ("chasquid-util queue drop ID", "chasquid-util has no command queue drop"),
        ("chasquid-util --configdir=/x print-config", "--configdir is not in"),
        ("make no-such-target", "the Makefile has no target no-such-target"),
        ("systemctl enable --now chasquid-nope.socket", "no unit"),
        ("cp etc/nothing/here /etc/", "etc/nothing/here does not exist"),
    ],
)
def test_the_check_catches_drift(line: str, problem: str) -> None:
    [argv] = words(line)
    found = _tool_of(argv)
    problems = check_tool(*found) if found else check_other(argv)
    assert any(problem in p for p in problems), problems


def test_synopsis_brackets_and_alternatives() -> None:
    line = "chasquid [--logfile=PATH | --logtosyslog=TAG] [-v=LEVEL] | tee x && make run"
    assert words(line) == [
        ["chasquid", "--logfile=PATH", "--logtosyslog=TAG", "-v=LEVEL"],
        ["tee", "x"],
        ["make", "run"],
    ]
    argv = words("chasquid-util -C /etc/chasquid user-add you@example.com --receive_only")[0]
    assert check_tool("chasquid-util", argv[1:]) == []
