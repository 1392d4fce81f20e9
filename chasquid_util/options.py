"""Options every chasquid-util command accepts, and how their errors are reported."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from chasquid.errors import ChasquidError

DEFAULT_CONFIG_DIR = "/etc/chasquid"

F = TypeVar("F", bound=Callable[..., Any])


def _warn_configdir(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not ctx.resilient_parsing:
        click.echo("Option --configdir is deprecated, use --config_dir instead", err=True)
    return value


def verbose_option(f: F) -> F:
    """The global -v: more detail from the DKIM commands, accepted everywhere."""
    return click.option(
        "-v",
        "--verbose",
        "verbose",
        is_flag=True,
        default=None,
        help="Verbose output; accepted by every command, none prints more yet "
        "(the DKIM commands that do are not there yet).",
    )(f)


def common_options(f: F) -> F:
    """-C/--config_dir/--config-dir, deprecated --configdir and -v: on the group and each command.

    Accepting them after the subcommand keeps chasquid's "options anywhere" rule.
    """
    f = verbose_option(f)
    f = click.option(
        "--configdir",
        "deprecated_config_dir",
        metavar="DIR",
        hidden=True,
        callback=_warn_configdir,
        expose_value=True,
    )(f)
    f = click.option(
        "-C",
        "--config_dir",
        "--config-dir",
        "config_dir",
        metavar="DIR",
        default=None,
        help=f"Configuration directory (default {DEFAULT_CONFIG_DIR}).",
    )(f)
    return f


def resolve_config_dir(ctx: click.Context) -> Path:
    """The effective config dir: the command's options over the group's; --configdir first."""
    c: click.Context | None = ctx
    while c is not None:
        for key in ("deprecated_config_dir", "config_dir"):
            value = c.params.get(key)
            if value is not None:
                return Path(value)
        c = c.parent
    return Path(DEFAULT_CONFIG_DIR)


def is_verbose(ctx: click.Context) -> bool:
    """Whether -v was given, before or after the command."""
    c: click.Context | None = ctx
    while c is not None:
        if c.params.get("verbose"):
            return True
        c = c.parent
    return False


def current_config_dir() -> Path:
    """The effective config dir of the command being run."""
    return resolve_config_dir(click.get_current_context())


def reporting_errors(describe: Callable[[ChasquidError], str] = str) -> Callable[[F], F]:
    """Turn library errors into one sentence on stderr (worded by `describe`) and exit 1."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except ChasquidError as e:
                click.secho(describe(e), fg="red", err=True)
                sys.exit(1)

        return wrapper  # type: ignore[return-value]

    return decorate


def reports_errors(f: F) -> F:
    """Turn library errors into their own sentence on stderr and exit status 1."""
    return reporting_errors()(f)
