"""mda-lmtp's flags, declared once, and a parser with Go's flag conventions.

The declarations feed both this parser (what every delivery runs: it costs
nothing to import) and the click command in cli.py (help text and shell
completion), so the two cannot disagree about which flags exist.

Go's conventions: ``-name`` and ``--name`` are the same flag; a value is
given as ``-name=value`` or ``-name value``; a boolean is ``-name`` or
``-name=true|false``; parsing stops at ``--`` or at the first argument that
is not a flag, and the remaining arguments are ignored; a repeated flag
keeps its last value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")
HELP_NAMES = ("h", "help")


class Flag(NamedTuple):
    """One flag: its Go name, what it is for, and its kind."""

    name: str
    help: str
    metavar: str = "STRING"
    is_bool: bool = False
    choices: tuple[str, ...] = ()


FLAGS = (
    Flag("addr", "LMTP server address (required): a unix socket path, or host:port.", "ADDRESS"),
    Flag(
        "addr_network",
        "unix or tcp; by default unix when the address starts with /, else tcp.",
        "NETWORK",
        choices=("unix", "tcp"),
    ),
    Flag("f", "Envelope sender; <> is the null sender.", "SENDER"),
    Flag("d", "Recipient; <> is an empty address.", "RECIPIENT"),
    Flag(
        "to_puny", "IDNA-encode (punycode) the sender and the recipient before use.", is_bool=True
    ),
)
_BY_NAME = {f.name: f for f in FLAGS}


class FlagError(Exception):
    """The command line does not parse; the message is one line for the user."""


class HelpRequested(Exception):
    """``-h`` or ``-help`` was given."""


class VersionRequested(Exception):
    """``-version`` was given."""


def parse(args: Sequence[str]) -> dict[str, str | bool]:
    """The value of every flag (defaults: "" and False) from the arguments after the program."""
    values: dict[str, str | bool] = {f.name: (False if f.is_bool else "") for f in FLAGS}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if len(arg) < 2 or arg[0] != "-":
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if not name or name[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}")
        name, eq, value = name.partition("=")
        if name == "version":
            if not eq or value in GO_TRUE:
                raise VersionRequested
            if value not in GO_FALSE:
                raise FlagError(f'invalid boolean value "{value}" for -{name}: parse error')
            continue
        flag = _BY_NAME.get(name)
        if flag is None:
            if name in HELP_NAMES:
                raise HelpRequested
            raise FlagError(f"flag provided but not defined: -{name}")
        if flag.is_bool:
            if not eq or value in GO_TRUE:
                values[name] = True
            elif value in GO_FALSE:
                values[name] = False
            else:
                raise FlagError(f'invalid boolean value "{value}" for -{name}: parse error')
            continue
        if not eq:
            if i >= len(args):
                raise FlagError(f"flag needs an argument: -{name}")
            value = args[i]
            i += 1
        if flag.choices and value and value not in flag.choices:
            allowed = ", ".join(flag.choices)
            raise FlagError(f'invalid value "{value}" for flag -{name}: must be one of {allowed}')
        values[name] = value
    return values
