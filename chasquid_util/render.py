"""How chasquid-util shows lists: rich tables on a terminal, plain lines or JSON otherwise."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from chasquid_util.daemonless import Resolved
from chasquid_util.users import UserEntry


def use_rich(stream: TextIO, as_json: bool) -> bool:
    """Tables and colours only for a person at a terminal."""
    return not as_json and stream.isatty()


def _json(objects: Iterable[dict[str, Any]]) -> str:
    return json.dumps(list(objects), ensure_ascii=False, indent=2)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]], stream: TextIO) -> None:
    """A rich table of plain-text cells on stream."""
    table = Table(*headers)
    for row in rows:
        # Text, not str: rich would read "[...]" in an address or a remote server's
        # error as markup, and a stray closing tag makes it raise.
        table.add_row(*(Text(cell) for cell in row))
    Console(file=stream).print(table)


def resolution_json(recipients: Sequence[Resolved]) -> str:
    """aliases-resolve --json: a list of {type, address, via} objects."""
    return _json({"type": r.kind, "address": r.address, "via": list(r.via)} for r in recipients)


def resolution_plain(recipients: Sequence[Resolved]) -> str:
    """aliases-resolve's classic output: `<type>  <address>` per line."""
    return "".join(f"{r.label}  {r.address}\n" for r in recipients)


def resolution_table(recipients: Sequence[Resolved], stream: TextIO) -> None:
    """aliases-resolve on a terminal."""
    rows = ((r.label, r.address, ", ".join(r.via)) for r in recipients)
    print_table(("type", "address", "via"), rows, stream)


def users_json(entries: Sequence[UserEntry]) -> str:
    """user-list --json: a list of {address, user, domain, receive_only} objects."""
    return _json(
        {"address": e.address, "user": e.user, "domain": e.domain, "receive_only": e.receive_only}
        for e in entries
    )


def users_plain(entries: Sequence[UserEntry]) -> str:
    """user-list when piped: one `user@domain` per line."""
    return "".join(f"{e.address}\n" for e in entries)


def users_table(entries: Sequence[UserEntry], stream: TextIO) -> None:
    """user-list on a terminal."""
    rows = ((e.user, e.domain, "yes" if e.receive_only else "") for e in entries)
    print_table(("user", "domain", "receive only"), rows, stream)
