"""The mail log: one stable, machine-parsed line per mail event.

Destinations: the system log (``<syslog>``), ``<stdout>``, ``<stderr>`` or a
file (created 0640: it holds addresses, client IPs and login names). Except
for syslog, every line starts with the local time as
``YYYY-MM-DD HH:MM:SS.ffffff`` and one space.

Every entry passes through ``MailLog._write``, which escapes line breaks,
control characters and undecodable bytes (``chasquid.logtext.escape``): a
remote server's multi-line reply or a client's chosen address stays inside
its own line and cannot forge entries.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Protocol

from chasquid.durations import format_duration
from chasquid.errors import ChasquidError
from chasquid.goquote import go_list_plain
from chasquid.logtext import escape

log = logging.getLogger("chasquid.maillog")

SYSLOG = "<syslog>"
STDOUT = "<stdout>"
STDERR = "<stderr>"
#: The destinations that are not file paths.
SPECIAL_DESTINATIONS = (SYSLOG, STDOUT, STDERR)
DEFAULT_SYSLOG_SOCKET = "/dev/log"

# Facility MAIL (2) * 8 + severity INFO (6).
_SYSLOG_PRIORITY = 2 * 8 + 6
_SYSLOG_TAG = "chasquid"

#: A client address: already rendered, or a socket address tuple (host, port[, flow, scope]).
Client = str | tuple[str, int] | tuple[str, int, int, int]


class MailLogError(ChasquidError):
    """The mail log destination could not be opened."""


def format_client(client: Client) -> str:
    """Render a client address as ``ip:port`` (``[v6]:port``; IPv4-mapped shown as IPv4)."""
    if isinstance(client, str):
        return client
    host, port = client[0], client[1]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return f"{host}:{port}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"{ip.ipv4_mapped}:{port}"
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class _Sink(Protocol):
    timestamps: bool

    def write(self, data: bytes) -> None: ...

    def reopen(self) -> None: ...

    def close(self) -> None: ...


class _StreamSink:
    timestamps = True

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, data: bytes) -> None:
        buffer = getattr(self._stream, "buffer", None)
        if buffer is not None:
            self._stream.flush()
            buffer.write(data)
            buffer.flush()
        else:
            self._stream.write(data.decode("utf-8", "replace"))
            self._stream.flush()

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


def _make_parents(directory: Path) -> None:
    # os.makedirs gives intermediate directories the default mode; every
    # directory created here must be 0775. Errors are ignored: opening the
    # file reports the useful one.
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for d in reversed(missing):
        with contextlib.suppress(OSError):
            d.mkdir(mode=0o775)


class _FileSink:
    timestamps = True

    def __init__(self, path: Path) -> None:
        self._path = path
        # Errors are ignored here: the open below reports the useful one.
        _make_parents(path.parent)
        self._fd = self._open()

    def _open(self) -> int:
        try:
            return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise MailLogError(
                f"cannot open mail log file {self._path}: {e.strerror or e}"
            ) from None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def reopen(self) -> None:
        fd = self._open()
        old, self._fd = self._fd, fd
        os.close(old)

    def close(self) -> None:
        os.close(self._fd)


class _SyslogSink:
    timestamps = False

    def __init__(self, socket_path: str) -> None:
        self._path = socket_path
        if not os.path.exists(socket_path):
            raise MailLogError(
                f"cannot open syslog: {socket_path} does not exist (is a syslog daemon"
                " or journald running?); set mail_log_path to a file, <stdout> or <stderr>"
            )
        self._sock, self._stream = self._connect()

    def _connect(self) -> tuple[socket.socket, bool]:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
            try:
                sock.connect(self._path)
            except OSError as e:
                sock.close()
                if e.errno == errno.EPROTOTYPE:
                    continue
                raise MailLogError(
                    f"cannot open syslog at {self._path}: {e.strerror or e}"
                ) from None
            return sock, kind == socket.SOCK_STREAM
        raise MailLogError(f"cannot open syslog at {self._path}: unsupported socket type")

    def write(self, data: bytes) -> None:
        stamp = time.strftime("%b %e %H:%M:%S").encode("ascii")
        header = b"<%d>%s %s[%d]: " % (_SYSLOG_PRIORITY, stamp, _SYSLOG_TAG.encode(), os.getpid())
        msg = header + data
        try:
            self._send(msg)
        except OSError:
            # The syslog daemon may have restarted: reconnect once and retry.
            self.reopen()
            self._send(msg)

    def _send(self, msg: bytes) -> None:
        if self._stream:
            self._sock.sendall(msg)
        else:
            self._sock.send(msg)

    def reopen(self) -> None:
        self._sock.close()
        self._sock, self._stream = self._connect()

    def close(self) -> None:
        self._sock.close()


class MailLog:
    """Writes mail events to one destination; safe to call from any thread."""

    def __init__(self, sink: _Sink, clock: Callable[[], datetime] = datetime.now) -> None:
        self._sink = sink
        self._clock = clock
        self._lock = threading.Lock()
        self._failure_reported = False

    @classmethod
    def open(
        cls,
        dest: str,
        *,
        syslog_socket: str = DEFAULT_SYSLOG_SOCKET,
        clock: Callable[[], datetime] = datetime.now,
    ) -> MailLog:
        """Open ``<syslog>``, ``<stdout>``, ``<stderr>`` or a file path (resolved by the caller).

        Raises MailLogError naming the destination when it cannot be opened.
        """
        sink: _Sink
        if dest == SYSLOG:
            sink = _SyslogSink(syslog_socket)
        elif dest == STDOUT:
            sink = _StreamSink(sys.stdout)
        elif dest == STDERR:
            sink = _StreamSink(sys.stderr)
        else:
            sink = _FileSink(Path(dest))
        return cls(sink, clock)

    def reopen(self) -> None:
        """Reopen the destination (log rotation on SIGHUP); a no-op for streams."""
        with self._lock:
            try:
                self._sink.reopen()
            except OSError as e:
                raise MailLogError(f"cannot reopen mail log: {e.strerror or e}") from None

    def close(self) -> None:
        """Release the destination."""
        with self._lock:
            self._sink.close()

    def _write(self, entry: str) -> None:
        # The one place every entry passes: whatever its fields hold, it is one line.
        entry = escape(entry)
        if self._sink.timestamps:
            entry = self._clock().strftime("%Y-%m-%d %H:%M:%S.%f ") + entry
        data = (entry + "\n").encode("utf-8")
        with self._lock:
            try:
                self._sink.write(data)
            except (OSError, ValueError, MailLogError) as e:
                if not self._failure_reported:
                    self._failure_reported = True
                    log.error("failed to write to maillog: %s", e)
                    log.error("(will not report this again)")

    # Reception events.

    def listening(self, addr: Client) -> None:
        """A listener started on addr (the configured string or the socket address)."""
        self._write(f"daemon listening on {format_client(addr)}")

    def auth(self, client: Client, user: str, ok: bool) -> None:
        """An AUTH attempt; user is the normalized identity ``user@domain`` (``user@`` if none)."""
        result = "succeeded" if ok else "failed"
        self._write(f"{format_client(client)} auth {result} for {user}")

    def rejected(self, client: Client, sender: str, rcpts: Sequence[str], reason: str) -> None:
        """A rejected sender, recipient or message."""
        parts = [format_client(client), "rejected"]
        if sender:
            parts.append(f"from={sender}")
        if rcpts:
            parts.append(f"to={go_list_plain(rcpts)}")
        self._write(" ".join(parts) + f" - {reason}")

    def queued(self, client: Client, sender: str, rcpts: Sequence[str], item_id: str) -> None:
        """A message accepted into the queue; rcpts are the RCPT addresses."""
        self._write(
            f"{item_id} from={sender} queued ip={format_client(client)} to={go_list_plain(rcpts)}"
        )

    # Queue events.

    def sent(self, item_id: str, sender: str, to: str) -> None:
        """A recipient was delivered."""
        self._write(f"{item_id} from={sender} to={to} sent")

    def failed(self, item_id: str, sender: str, to: str, error: str, permanent: bool) -> None:
        """A delivery attempt failed; a multi-line error stays on this line, escaped."""
        kind = "permanent" if permanent else "temporary"
        self._write(f"{item_id} from={sender} to={to} failed ({kind}): {error}")

    def queue_loop(self, item_id: str, sender: str, next_delay: float) -> None:
        """An item finished a delivery round and waits next_delay seconds."""
        self._write(
            f"{item_id} from={sender} completed loop, next in {format_duration(next_delay)}"
        )

    def all_done(self, item_id: str, sender: str) -> None:
        """An item is finished and leaves the queue."""
        self._write(f"{item_id} from={sender} all done")
