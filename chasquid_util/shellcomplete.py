"""Answering the shell's completion requests with the arguments normalised first.

click's own handler would read `-C=DIR` as the value `=DIR` (and bash even
splits it into three words), so completions would ignore the config dir.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import click
from click.shell_completion import BashComplete, FishComplete, ShellComplete, ZshComplete

Normalizer = Callable[[Sequence[str]], list[str]]

SHELLS: dict[str, type[ShellComplete]] = {
    "bash": BashComplete,
    "zsh": ZshComplete,
    "fish": FishComplete,
}


def completion_source(cli: click.Command, prog_name: str, complete_var: str, shell: str) -> str:
    """The completion script click generates for shell (what `make completions` checks in)."""
    return SHELLS[shell](cli, {}, prog_name, complete_var).source()


def run_completion(
    cli: click.Command,
    prog_name: str,
    complete_var: str,
    instruction: str,
    normalize: Normalizer,
) -> int:
    """Handle `<shell>_source` / `<shell>_complete` like click, normalising the words first."""
    shell, _, action = instruction.partition("_")
    base = SHELLS.get(shell)
    if base is None:
        return 1

    class Normalized(base):  # type: ignore[valid-type,misc]
        def get_completion_args(self) -> tuple[list[str], str]:
            args, incomplete = super().get_completion_args()
            return normalize(args), incomplete

    comp = Normalized(cli, {}, prog_name, complete_var)
    if action == "source":
        click.echo(comp.source(), nl=False)
        return 0
    if action == "complete":
        click.echo(comp.complete())
        return 0
    return 1
