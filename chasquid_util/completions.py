"""Generate the shell completion scripts of the four tools (`make completions`).

Usage: python -m chasquid_util.completions DIR

Writes DIR/bash/<tool>, DIR/zsh/_<tool> and DIR/fish/<tool>.fish, the file
names the shells' completion directories expect. The scripts are click's:
they call the tool back with `_<TOOL>_COMPLETE=<shell>_complete`.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from chasquid_util.shellcomplete import SHELLS, completion_source


@dataclass(frozen=True)
class Tool:
    """A console script and where its click command lives."""

    prog: str
    module: str
    attribute: str

    @property
    def complete_var(self) -> str:
        """The environment variable click's scripts set: `_CHASQUID_UTIL_COMPLETE`."""
        return f"_{self.prog.replace('-', '_').upper()}_COMPLETE"

    def command(self) -> click.Command:
        """Import the tool's click command."""
        cmd = getattr(importlib.import_module(self.module), self.attribute)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{self.module}.{self.attribute} is not a click command")
        return cmd


TOOLS: tuple[Tool, ...] = (
    Tool("chasquid", "chasquid.daemon.cli", "command"),
    Tool("chasquid-util", "chasquid_util.cli", "cli"),
    Tool("smtp-check", "smtp_check.cli", "command"),
    Tool("mda-lmtp", "mda_lmtp.cli", "command"),
)


def script_path(shell: str, prog: str) -> Path:
    """Where a script goes, relative to the completions directory."""
    if shell == "zsh":
        return Path("zsh") / f"_{prog}"
    if shell == "fish":
        return Path("fish") / f"{prog}.fish"
    return Path(shell) / prog


def generate() -> dict[Path, str]:
    """Every script, keyed by its path relative to the completions directory."""
    scripts: dict[Path, str] = {}
    for tool in TOOLS:
        cmd = tool.command()
        for shell in SHELLS:
            text = completion_source(cmd, tool.prog, tool.complete_var, shell)
            scripts[script_path(shell, tool.prog)] = text if text.endswith("\n") else text + "\n"
    return scripts


def write(directory: Path) -> list[Path]:
    """Write every script under directory; return the paths written."""
    written = []
    for rel, text in generate().items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """`python -m chasquid_util.completions DIR`."""
    if len(argv) != 1:
        print("Usage: python -m chasquid_util.completions DIR", file=sys.stderr)
        return 2
    for path in write(Path(argv[0])):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
