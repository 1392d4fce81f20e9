"""The version of this chasquid and the date of its source, for --version, logs and monitoring."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

import chasquid

F = TypeVar("F", bound=Callable[..., Any])


def source_date() -> datetime.datetime:
    """When the source was last changed: SOURCE_DATE_EPOCH, else the package's newest file."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch.isdigit():
        ts = float(epoch)
    else:
        package = Path(chasquid.__file__).parent
        ts = max((p.stat().st_mtime for p in package.rglob("*.py")), default=0.0)
    return datetime.datetime.fromtimestamp(ts).astimezone()


def format_source_date(when: datetime.datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS ±hhmm ZONE``, as Go renders a time."""
    return when.strftime("%Y-%m-%d %H:%M:%S %z %Z")


def version_line(prog: str = "chasquid") -> str:
    """What ``<prog> --version`` prints."""
    return f"{prog} {chasquid.__version__} (source date: {format_source_date(source_date())})"


def version_option(prog: str, *decls: str) -> Callable[[F], F]:
    """A click ``--version`` flag (or the given spellings): print `version_line` and exit 0.

    It is eager, so it answers before any other option is checked or any
    configuration is read.
    """

    def show(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(version_line(prog))
            ctx.exit()

    return click.option(
        *(decls or ("--version",)),
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=show,
        help="Print the version and exit.",
    )
