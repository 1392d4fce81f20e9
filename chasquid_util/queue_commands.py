"""``chasquid-util queue``: list, show, flush and remove queued mail through the running daemon.

Every command goes through the local RPC and never touches the queue files:
the daemon owns them while it runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import click

from chasquid.durations import format_duration
from chasquid.errors import ChasquidError
from chasquid.localrpc import queueadmin as admin
from chasquid.localrpc.protocol import DaemonNotRunningError
from chasquid.localrpc.queueadmin import ItemView
from chasquid_util.daemonrpc import socket_path
from chasquid_util.options import common_options, current_config_dir, reporting_errors
from chasquid_util.render import print_table


def _socket() -> Path:
    return socket_path(current_config_dir())


def _describe(e: ChasquidError) -> str:
    if isinstance(e, DaemonNotRunningError):
        return f"Error: chasquid is not running ({e}); the queue commands need the daemon"
    return f"Error: {e}"


_reports_errors = reporting_errors(_describe)


def _age(view: ItemView, now: datetime) -> str:
    return format_duration(float(int(view.age(now))))


def _view_json(view: ItemView, now: datetime) -> dict[str, Any]:
    return {
        "id": view.id,
        "from": view.sender,
        "to": list(view.to),
        "created_at": view.created_at.isoformat(),
        "age_seconds": round(view.age(now), 3),
        "size": view.size,
        "next_attempt": view.next_attempt.isoformat() if view.next_attempt else None,
        "rcpts": [
            {
                "address": r.address,
                "type": r.type,
                "status": r.status,
                "last_failure_message": r.last_failure_message,
                "original_address": r.original_address,
                "via": list(r.via),
            }
            for r in view.rcpts
        ],
    }


def _rcpt_line(r: admin.RecipientView) -> str:
    line = f"{r.status.upper()} {r.address} ({r.type.upper()})"
    if r.original_address and r.original_address != r.address:
        line += f" from {r.original_address}"
    return line


def _error_text(message: str) -> str:
    return " ".join(message.split())


def render_plain(views: Sequence[ItemView], now: datetime) -> str:
    """One line per item (id, age, sender), then one indented line per recipient."""
    out: list[str] = []
    for v in views:
        out.append(f"{v.id}  {_age(v, now)}  {v.sender}")
        for r in v.rcpts:
            out.append(f"    {_rcpt_line(r)}")
            if r.last_failure_message:
                out.append(f"        last error: {_error_text(r.last_failure_message)}")
    return "".join(line + "\n" for line in out)


def render_table(views: Sequence[ItemView], now: datetime, stream: TextIO) -> None:
    """The queue as a rich table, for a person at a terminal."""
    rows = (
        (
            v.id,
            _age(v, now),
            v.sender,
            "\n".join(_rcpt_line(r) for r in v.rcpts),
            "\n".join(_error_text(r.last_failure_message) or "-" for r in v.rcpts),
        )
        for v in views
    )
    print_table(("id", "age", "from", "recipients", "last error"), rows, stream)


def render_show(v: ItemView, now: datetime) -> str:
    """Everything known about one item."""
    lines = [
        f"ID: {v.id}",
        f"From: {v.sender}",
        f"To: {' '.join(v.to)}",
        f"Created: {v.created_at.astimezone().isoformat(timespec='seconds')} ({_age(v, now)} ago)",
        f"Size: {v.size} bytes",
        "Next attempt: "
        + (v.next_attempt.astimezone().isoformat(timespec="seconds") if v.next_attempt else "-"),
        "Recipients:",
    ]
    for r in v.rcpts:
        lines.append(f"  {_rcpt_line(r)}")
        if r.via:
            lines.append(f"    via: {' '.join(r.via)}")
        if r.last_failure_message:
            lines.append(f"    last error: {_error_text(r.last_failure_message)}")
    lines.append("Headers:")
    lines.extend("  " + h for h in v.headers.splitlines())
    return "".join(line + "\n" for line in lines)


@click.group("queue")
@common_options
def queue(**_: Any) -> None:
    """Look at and act on the running daemon's queue."""


@queue.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@common_options
@_reports_errors
def queue_list(as_json: bool, **_: Any) -> None:
    """List the queued items: id, age, sender, recipients with status and last error."""
    views = admin.list_items(_socket())
    now = datetime.now(UTC)
    if as_json:
        click.echo(json.dumps([_view_json(v, now) for v in views], ensure_ascii=False, indent=2))
    elif sys.stdout.isatty():
        render_table(views, now, sys.stdout)
    else:
        click.echo(render_plain(views, now), nl=False)


@queue.command("show")
@click.argument("item_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@common_options
@_reports_errors
def queue_show(item_id: str, as_json: bool, **_: Any) -> None:
    """Show one item: envelope, recipients and the message's headers."""
    view = admin.show_item(_socket(), item_id)
    now = datetime.now(UTC)
    if as_json:
        d = _view_json(view, now)
        d["headers"] = view.headers
        click.echo(json.dumps(d, ensure_ascii=False, indent=2))
    else:
        click.echo(render_show(view, now), nl=False)


@queue.command("flush")
@click.argument("item_id", metavar="[ID]", required=False)
@common_options
@_reports_errors
def queue_flush(item_id: str | None, **_: Any) -> None:
    """Attempt delivery now: of one item, or of every item."""
    n = admin.flush(_socket(), item_id)
    click.echo(f"Flushed {n} item{'' if n == 1 else 's'}")


@queue.command("remove")
@click.argument("item_id", metavar="ID")
@click.option(
    "--no-dsn",
    "--no_dsn",
    "no_dsn",
    is_flag=True,
    help="Do not tell the sender (by default a DSN reports the undelivered recipients).",
)
@common_options
@_reports_errors
def queue_remove(item_id: str, no_dsn: bool, **_: Any) -> None:
    """Remove an item from the queue; its pending recipients are not delivered."""
    admin.remove(_socket(), item_id, dsn=not no_dsn)
    click.echo(f"Removed {item_id}")
