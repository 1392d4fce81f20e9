"""The ``chasquid`` command: Go-style flags, then the daemon as this process.

The process-wide steps are here and nowhere else: the open-files limit, the
loop's executor, changing into the config dir and the signal handlers
(SIGHUP reloads, SIGTERM and SIGINT stop gracefully). chasquid.daemon.app
builds and runs the daemon itself, in whatever loop it is given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import resource
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import click

from chasquid.durations import DurationError, format_duration, parse_duration
from chasquid.errors import ChasquidError, os_reason
from chasquid.goquote import go_quote
from chasquid.version import version_option

if TYPE_CHECKING:
    from chasquid.daemon.app import DaemonOptions
    from chasquid.daemon.mainlog import MainLog
    from chasquid.daemon.monitoring.sources import Flag

log = logging.getLogger("chasquid.daemon")

#: Boolean flags, which Go lets one write ``-name``, ``-name=true`` or ``-name=false``.
BOOL_FLAGS = ("version", "logtime", "alsologtostderr")

_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
F = TypeVar("F", bound=Callable[..., Any])

_ASSIGNMENT = re.compile(r"^(--?)([A-Za-z0-9_-]+)=(.*)$", re.DOTALL)


def go_style_argv(args: Sequence[str]) -> list[str]:
    """Rewrite the Go spellings click does not know into ones it does.

    ``-flag=true`` becomes ``--flag``; ``-flag=false`` is dropped with every
    earlier spelling of the flag (the last one wins, as in Go), so the help
    needs no ``--no-flag`` forms. ``-v=N`` becomes ``--v=N`` and ``-C=DIR``
    becomes ``-C DIR``; everything else is passed through unchanged. Parsing
    stops rewriting after ``--``.
    """
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            out.extend(args[i:])
            break
        m = _ASSIGNMENT.match(arg)
        if not m:
            out.append(arg)
            continue
        name, value = m.group(2), m.group(3)
        if name in BOOL_FLAGS:
            if value in _GO_TRUE:
                out.append(f"--{name}")
            elif value in _GO_FALSE:
                out = [a for a in out if a not in (f"-{name}", f"--{name}")]
            else:
                raise click.UsageError(f'invalid boolean value "{value}" for -{name}: parse error')
        elif name == "v":
            out.append(f"--v={value}")
        elif name == "C":
            # click would keep the "=" as part of a short option's value.
            out.extend(["-C", value])
        else:
            out.append(arg)
    return out


def _duration(ctx: click.Context, param: click.Parameter, value: str | float) -> float:
    """Click callback turning a positive Go duration (``30s``, ``1m30s``) into seconds."""
    if isinstance(value, float | int):
        return float(value)
    try:
        seconds = parse_duration(value)
    except DurationError as e:
        raise click.BadParameter(str(e), ctx, param) from None
    if seconds <= 0:
        # asyncio.sleep would not wait at all: the daemon would reload in a busy loop.
        raise click.BadParameter(f"{value!r}: must be greater than 0", ctx, param)
    return seconds


def _names(name: str, *extra: str) -> list[str]:
    """Declarations for one flag in every spelling: ``-name``, ``--name`` and ``--na-me``."""
    decls = [f"-{name}", f"--{name}"]
    dashed = name.replace("_", "-")
    if dashed != name:
        decls.append(f"--{dashed}")
    decls.extend(extra)
    decls.append(name)
    return decls


def _text_flag(name: str, metavar: str, help: str, default: str = "") -> Callable[[F], F]:
    """A flag taking a string, in every spelling of `_names`."""
    return click.option(*_names(name), default=default, metavar=metavar, help=help)


def _bool_flag(name: str, help: str) -> Callable[[F], F]:
    """A Go boolean flag: ``-name`` or ``--name`` (``-name=false`` is handled by go_style_argv)."""
    return click.option(f"-{name}", f"--{name}", name, is_flag=True, default=False, help=help)


@click.command(
    context_settings={"help_option_names": ["-h", "-help", "--help"]},
    help="An SMTP server for small mail servers: easy to configure, hard to misconfigure.\n\n"
    "It receives mail for the domains under the config dir's domains/, delivers it to "
    "local users or on to other servers, and lets its users send mail after "
    "authenticating. The configuration is chasquid.conf in the config dir.",
)
@click.option(
    *_names("config_dir", "-C"),
    default="/etc/chasquid",
    show_default=True,
    metavar="DIR",
    help="Configuration directory.",
)
@_text_flag(
    "config_overrides",
    "TEXT",
    "Configuration text overlaid on chasquid.conf (same syntax; newlines or a YAML flow "
    'mapping such as {hostname: "a", max_data_size_mb: 10} give several keys).',
)
@version_option("chasquid", "-version", "--version")
@click.option(
    "-v",
    "--v",
    "v",
    type=int,
    default=0,
    show_default=True,
    metavar="LEVEL",
    help="Log verbosity: -2 fatal, -1 error, 0 info, 1 debug (and trace events).",
)
@_text_flag(
    "logfile",
    "PATH",
    "Write the main log to this file (appended, with timestamps; reopened on SIGHUP).",
)
@_bool_flag("logtime", "Prefix log lines written to stderr with timestamps.")
@_text_flag(
    "logtosyslog",
    "TAG",
    "Write the main log to syslog with this tag; takes precedence over --logfile.",
)
@_bool_flag("alsologtostderr", "When logging to a file or syslog, also copy every line to stderr.")
@click.option(
    *_names("testing__reload_every"),
    callback=_duration,
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="For tests only: how often users and aliases are reloaded (Go duration, e.g. 30s).",
)
@click.option(
    *_names("testing__max_received_headers"),
    type=int,
    default=50,
    show_default=True,
    metavar="N",
    help="For tests only: Received: header count above which a message is a loop.",
)
@_text_flag(
    "testing__retry_schedule",
    "DURATIONS",
    "For tests only: delivery retry delays, comma-separated Go durations (e.g. 1s,2s,3s); "
    "the default is 1m,5m,10m,20m.",
)
@click.option(
    *_names("testing__shutdown_grace"),
    callback=_duration,
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="For tests only: how long a stop lets transactions and deliveries in progress go on.",
)
def command(
    config_dir: str,
    config_overrides: str,
    v: int,
    logfile: str,
    logtime: bool,
    logtosyslog: str,
    alsologtostderr: bool,
    testing__reload_every: float,
    testing__max_received_headers: int,
    testing__retry_schedule: str,
    testing__shutdown_grace: float,
) -> None:
    """Run the daemon (the docstring is not shown: click uses the help= text)."""
    from chasquid.daemon.app import DaemonOptions
    from chasquid.daemon.mainlog import LogOptions, MainLog, MainLogError

    log_options = LogOptions(
        verbosity=v,
        logfile=logfile,
        logtime=logtime,
        logtosyslog=logtosyslog,
        alsologtostderr=alsologtostderr,
    )
    try:
        mainlog = MainLog.setup(log_options)
    except MainLogError as e:
        click.echo(f"Error opening log: {e}", err=True)
        sys.exit(1)
    options = DaemonOptions(
        config_dir=config_dir,
        config_overrides=config_overrides,
        reload_every=testing__reload_every,
        max_received_headers=testing__max_received_headers,
        retry_schedule=_retry_schedule(testing__retry_schedule),
        shutdown_grace=testing__shutdown_grace,
        flags=given_flags(click.get_current_context()),
    )
    sys.exit(run(options, mainlog))


#: Worker threads of the loop's default executor: the queue's fsyncs, scrypt
#: checks and SPF look-ups, and programs that cannot be started from the loop.
WORKER_THREADS = 64


def run(options: DaemonOptions, mainlog: MainLog) -> int:
    """Run the daemon as this process until SIGTERM/SIGINT; the exit status (0, or 1 when fatal)."""
    raise_fd_limit()
    try:
        return asyncio.run(_serve(options, mainlog))
    except ChasquidError as e:
        # FatalError carries the line to log; any other library error that
        # reaches here still ends the daemon with one fatal line, not a traceback.
        log.critical("%s", e)
        return 1
    finally:
        logging.shutdown()


async def _serve(options: DaemonOptions, mainlog: MainLog) -> int:
    from chasquid import __version__
    from chasquid.daemon.app import Daemon, load_config, log_config

    log.info("chasquid starting (version %s)", __version__)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="chasquid-worker")
    )
    config = load_config(options)
    log_config(config)
    enter_config_dir(options.config_dir)
    # From here on every relative path is relative to the config dir, as in
    # chasquid; programs run in it, which lets them start from the loop.
    options = dataclasses.replace(options, config_dir=".")

    stop = asyncio.Event()
    started: list[Daemon] = []

    def on_exit_signal(name: str) -> None:
        if not stop.is_set():
            log.info("Got signal to exit: %s", name)
            stop.set()

    def on_sighup() -> None:
        if not started:
            log.info("Received SIGHUP during start-up, ignored")
            return
        log.info("Received SIGHUP, reloading")
        started[0].reload_in_background(full=True)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    loop.add_signal_handler(signal.SIGTERM, on_exit_signal, "terminated")
    loop.add_signal_handler(signal.SIGINT, on_exit_signal, "interrupt")
    daemon = await Daemon.start(options, config, mainlog=mainlog, exit_requested=stop)
    started.append(daemon)
    await stop.wait()
    await daemon.stop()
    return 0


def enter_config_dir(config_dir: str) -> None:
    """Change into the config dir; FatalError saying why not."""
    from chasquid.daemon.app import FatalError

    try:
        os.chdir(config_dir)
    except OSError as e:
        raise FatalError(
            f"Error changing to config dir {go_quote(config_dir)}: "
            f"chdir {config_dir}: {os_reason(e)}"
        ) from None


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: each connection costs a descriptor.

    The usual soft limit of 1024 would refuse a burst of a thousand
    connections (plus queue files, hooks and listeners).
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as e:
        log.info("Could not raise the open files limit: %s", e)


def given_flags(ctx: click.Context) -> tuple[Flag, ...]:
    """Every flag's value as a command line spells it, and whether it was on the command line."""
    from chasquid.daemon.monitoring.sources import Flag

    flags = []
    for param in ctx.command.params:
        name = param.name
        if not isinstance(param, click.Option) or name is None or name not in ctx.params:
            continue
        value = ctx.params[name]
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):  # the durations, parsed to seconds
            text = format_duration(value)
        else:
            text = str(value)
        given = ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        flags.append(Flag(name, text, given))
    return tuple(flags)


def _retry_schedule(text: str) -> tuple[float, ...]:
    """The --testing__retry_schedule value; () (the default schedule) when empty."""
    if not text:
        return ()
    from chasquid.daemon.queue.delivery import parse_retry_schedule

    try:
        return parse_retry_schedule(text)
    except (ValueError, DurationError) as e:
        raise click.BadParameter(str(e), param_hint="--testing__retry_schedule") from None


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rewritten = go_style_argv(args)
    except click.UsageError as e:
        e.show()
        sys.exit(2)
    command.main(args=rewritten, prog_name="chasquid")
