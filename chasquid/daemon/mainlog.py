"""The main (debug) log of the daemon: format, destinations and reopening.

Every module logs through the standard :mod:`logging` module; this module only
decides how records look and where they go. Levels follow chasquid's: fatal
(``logging.CRITICAL``), error (``ERROR``; ``WARNING`` is shown as an error),
info (``INFO``) and debug (``DEBUG``).
"""

from __future__ import annotations

import datetime
import logging
import logging.handlers
import os
import sys
import threading
from dataclasses import dataclass
from typing import IO

from chasquid.errors import ChasquidError, os_reason
from chasquid.logtext import escape

#: Width of the source-location column.
LOCATION_WIDTH = 18


class MainLogError(ChasquidError):
    """The main log could not be opened or reopened."""


@dataclass(frozen=True)
class LogOptions:
    """Where and how the main log is written, as given on the command line."""

    verbosity: int = 0
    logfile: str = ""
    logtime: bool = False
    logtosyslog: str = ""
    alsologtostderr: bool = False


def level_marker(levelno: int) -> str:
    """The one-character level marker of a record: ☠ fatal, E error, _ info, . debug."""
    if levelno >= logging.CRITICAL:
        return "☠"
    if levelno >= logging.WARNING:
        return "E"
    if levelno >= logging.INFO:
        return "_"
    return "."


def threshold_for_verbosity(verbosity: int) -> int:
    """The logging level ``-v=<verbosity>`` lets through (fatal -2, error -1, info 0, debug 1)."""
    if verbosity >= 1:
        return logging.DEBUG
    if verbosity == 0:
        return logging.INFO
    if verbosity == -1:
        return logging.WARNING
    return logging.CRITICAL


def format_location(filename: str, lineno: int) -> str:
    """``file:line`` padded or cut to the column width; a cut keeps the end (the line number)."""
    loc = f"{filename}:{lineno}"
    if len(loc) > LOCATION_WIDTH:
        return loc[-LOCATION_WIDTH:]
    return loc.ljust(LOCATION_WIDTH)


def format_timestamp(created: float) -> str:
    """Local time with microseconds, as in ``2025-01-02 10:00:00.000001``."""
    return datetime.datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M:%S.%f")


class MainLogFormatter(logging.Formatter):
    """Renders ``[<timestamp> ]<L> <location> <message>``.

    This is the one place every main-log line passes through: the message is
    escaped (``chasquid.logtext.escape``), so text a client or a remote
    server chose (an EHLO name, a reply) can never start a line of its own.
    A traceback keeps its lines, but each is escaped and begins with the
    record's own prefix and ``| ``: nothing in it can pass for an entry.
    """

    def __init__(self, with_time: bool) -> None:
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        """Render one record: one line, plus one prefixed line per traceback line."""
        head = f"{level_marker(record.levelno)} {format_location(record.filename, record.lineno)}"
        if self.with_time:
            head = f"{format_timestamp(record.created)} {head}"
        line = f"{head} {escape(record.getMessage())}"
        extra = []
        if record.exc_info:
            extra.append(self.formatException(record.exc_info))
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        for text in extra:
            line += "".join(f"\n{head} | {escape(part)}" for part in text.splitlines())
        return line


class ReopenableFileHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Appends to a file (created 0640) and reopens it on request, for log rotation."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        super().__init__(self._open())

    def _open(self) -> IO[str]:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            raise MainLogError(f"open {self.path}: {os_reason(e)}") from e
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")

    def reopen(self) -> None:
        """Open the path again (after the old file was renamed) and close the old stream."""
        new = self._open()
        with self._lock_ctx():
            old = self.setStream(new)
        if old is not None:
            old.close()

    def _lock_ctx(self) -> threading.RLock:
        assert self.lock is not None
        return self.lock

    def close(self) -> None:
        """Close the file as well as the handler."""
        with self._lock_ctx():
            try:
                self.flush()
                self.stream.close()
            finally:
                super().close()


class _InfoSysLogHandler(logging.handlers.SysLogHandler):
    """Sends every level at priority INFO, as chasquid does."""

    def mapPriority(self, levelName: str) -> str:
        """Always ``info``."""
        return "info"


class MainLog:
    """The handlers installed on the root logger, kept so SIGHUP can reopen the file."""

    def __init__(self, options: LogOptions, handlers: list[logging.Handler]) -> None:
        self.options = options
        self.handlers = handlers

    @classmethod
    def setup(cls, options: LogOptions) -> MainLog:
        """Install the handlers the options ask for on the root logger; replaces earlier ones."""
        handlers: list[logging.Handler] = []
        to_stderr = True
        if options.logtosyslog:
            syslog = _InfoSysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
            syslog.ident = f"{options.logtosyslog}: "
            syslog.setFormatter(MainLogFormatter(with_time=options.logtime))
            handlers.append(syslog)
            to_stderr = options.alsologtostderr
        elif options.logfile:
            filehandler = ReopenableFileHandler(options.logfile)
            filehandler.setFormatter(MainLogFormatter(with_time=True))
            handlers.append(filehandler)
            to_stderr = options.alsologtostderr
        if to_stderr:
            stderr = logging.StreamHandler(sys.stderr)
            stderr.setFormatter(MainLogFormatter(with_time=options.logtime))
            handlers.append(stderr)

        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
            old.close()
        for h in handlers:
            root.addHandler(h)
        root.setLevel(threshold_for_verbosity(options.verbosity))
        # aiosmtpd narrates every session at INFO; only its problems belong in
        # our log unless the operator asked for a very verbose one.
        logging.getLogger("mail.log").setLevel(
            logging.DEBUG if options.verbosity >= 2 else logging.WARNING
        )
        logging.getLogger("asyncio").setLevel(
            logging.DEBUG if options.verbosity >= 2 else logging.WARNING
        )
        return cls(options, handlers)

    def reopen(self) -> None:
        """Reopen the log file, if logging to one (SIGHUP, for log rotation)."""
        for h in self.handlers:
            if isinstance(h, ReopenableFileHandler):
                h.reopen()

    def close(self) -> None:
        """Flush and detach every handler this object installed."""
        root = logging.getLogger()
        for h in self.handlers:
            root.removeHandler(h)
            h.close()
