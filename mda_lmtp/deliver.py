"""Hand one message to an LMTP server (RFC 2033): what ``mda-lmtp`` does.

This runs once per delivered message, so it is written to start fast: plain
blocking sockets, no asyncio, NamedTuples rather than dataclasses (whose
import costs more than the rest), and of the chasquid package only the wire
encoding until an error needs rendering (bench/mda_lmtp_wall.py measures
it). The message is streamed from a file descriptor to the server in chunks
(CRLF line ends and dot-stuffing by chasquid.smtpwire, as the daemon's own
LMTP and SMTP clients do), so its size does not matter to memory.

Each step has its own time bound (Timeouts); a failure anywhere is a
DeliveryFailure, which the command turns into exit status 75 (EX_TEMPFAIL)
so the calling MTA keeps the message and tries again. The message's end
(the lone dot) is sent only after all of it was read: a message cut short by
an error is never delivered truncated.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

from chasquid.smtpwire import WireEncoder

CHUNK = 64 * 1024
#: A reply line longer than this, or a reply with more lines, is not a real server's.
MAX_LINE = 64 * 1024
MAX_REPLY_LINES = 100


class UsageError(Exception):
    """The command line cannot be used (exit status 2); nothing was sent."""


class DeliveryFailure(Exception):
    """The message was not delivered (exit status 75); the message says why."""


class Timeouts(NamedTuple):
    """Seconds each step may take."""

    connect: float = 30.0
    reply: float = 60.0
    #: Writing one chunk of the message.
    write: float = 60.0
    #: Waiting for the next chunk of the message on stdin.
    read: float = 60.0
    #: The server's answer after the whole message (it stores the message meanwhile).
    final: float = 300.0


class Request(NamedTuple):
    """One delivery: where to, and the envelope."""

    addr: str
    network: str
    sender: str
    recipient: str


def request(addr: str, network: str, sender: str, recipient: str, to_puny: bool) -> Request:
    """Validate the command line's values into a Request; UsageError if they are unusable."""
    if not addr:
        raise UsageError("No LMTP server address given (use --addr)")
    if to_puny:
        try:
            sender = puny_encode(sender)
        except ValueError as e:
            raise UsageError(f"cannot puny-encode from: {e}") from None
        try:
            recipient = puny_encode(recipient)
        except ValueError as e:
            raise UsageError(f"cannot puny-encode recipient: {e}") from None
    if not network:
        # A path starts with /; anything else is host:port (so relative paths need -addr_network).
        network = "unix" if addr.startswith("/") else "tcp"
    return Request(
        addr=addr,
        network=network,
        sender="" if sender == "<>" else sender,
        recipient="" if recipient == "<>" else recipient,
    )


def puny_encode(value: str) -> str:
    """IDNA ToASCII without mapping: each non-ASCII dot-separated label becomes ``xn--...``.

    Applied to a whole value (an address, ``@`` and all), as Go's lenient
    Punycode profile does. An ``xn--`` label that is already there must be
    valid Punycode; ValueError says which one is not.
    """
    labels = []
    for label in value.split("."):
        if not label.isascii():
            label = "xn--" + label.encode("punycode").decode("ascii")
        elif label[:4].lower() == "xn--":
            try:
                label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                raise ValueError(f'idna: invalid label "{label[4:]}"') from None
        labels.append(label)
    return ".".join(labels)


class _IOFailure(Exception):
    """Talking to the server failed; the message is the reason (``EOF``, ``timed out``...)."""


class _Reply:
    def __init__(self, code: int, lines: list[str]) -> None:
        self.code = code
        self.lines = lines

    def __str__(self) -> str:
        return f"{self.code} {_quote(chr(10).join(self.lines))}"


class _Connection:
    """Lines in and bytes out over a blocking socket, each operation within a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""

    def _recv(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _IOFailure("timed out")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(CHUNK)
        except TimeoutError:
            raise _IOFailure("timed out") from None
        except OSError as e:
            raise _IOFailure(_os_reason(e)) from None
        if not data:
            raise _IOFailure("EOF")
        return data

    def _line(self, deadline: float) -> bytes:
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line, self._buf = self._buf[:end], self._buf[end + 1 :]
                return line.removesuffix(b"\r")
            if len(self._buf) > MAX_LINE:
                raise _IOFailure("reply line too long")
            self._buf += self._recv(deadline)

    def reply(self, timeout: float) -> _Reply:
        """One reply, multi-line or not."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        code = 0
        for _ in range(MAX_REPLY_LINES):
            raw = self._line(deadline)
            text = raw.decode("utf-8", "replace")
            if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
                raise _IOFailure(f"malformed reply {text[:100]!r}")
            if lines and int(text[:3]) != code:
                raise _IOFailure(f"reply code changed within a reply: {text[:100]!r}")
            code = int(text[:3])
            lines.append(text[4:])
            if text[3:4] != "-":
                return _Reply(code, lines)
        raise _IOFailure("reply too long")

    def send(self, data: bytes, timeout: float) -> None:
        """Write all of data."""
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise _IOFailure("timed out") from None
        except OSError as e:
            raise _IOFailure(_os_reason(e)) from None


def _os_reason(e: OSError) -> str:
    from chasquid.errors import os_reason

    return os_reason(e)


def connect(req: Request, timeout: float) -> socket.socket:
    """A connected socket to the server; DeliveryFailure if it cannot be had."""
    try:
        if req.network == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(req.addr)
            except BaseException:
                sock.close()
                raise
            return sock
        host, sep, port = req.addr.rpartition(":")
        if not sep or not port.isdigit():
            raise OSError(f"address {req.addr}: missing port in address")
        return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except TimeoutError:
        reason = "timed out"
    except OSError as e:
        reason = _os_reason(e)
    raise DeliveryFailure(f"Error connecting to ({req.network}, {req.addr}): {reason}")


def deliver(
    req: Request,
    stdin_fd: int,
    *,
    timeouts: Timeouts | None = None,
    hostname: Callable[[], str] = socket.gethostname,
) -> None:
    """Deliver the message read from ``stdin_fd``; DeliveryFailure if it was not delivered."""
    t = timeouts or Timeouts()
    sock = connect(req, t.connect)
    try:
        conn = _Connection(sock)
        try:
            _expect(conn, 220, t.reply)
        except _IOFailure as e:
            raise DeliveryFailure(f"Server greeting error: {e}") from None
        try:
            local_name = hostname()
        except OSError as e:
            raise DeliveryFailure(f"Could not get hostname: {_os_reason(e)}") from None
        for command, expected in (
            (f"LHLO {local_name}", 250),
            (f"MAIL FROM:<{req.sender}>", 250),
            (f"RCPT TO:<{req.recipient}>", 250),
            ("DATA", 354),
        ):
            _command(conn, command, expected, t.reply)
        _send_message(conn, stdin_fd, t)
        try:
            _expect(conn, 250, t.final)
        except _IOFailure as e:
            raise DeliveryFailure(f"Delivery failed remotely: {e}") from None
        _command(conn, "QUIT", 221, t.reply)
    finally:
        sock.close()


def _expect(conn: _Connection, code: int, timeout: float) -> None:
    """Read a reply that must have ``code``; _IOFailure saying what came instead."""
    reply = conn.reply(timeout)
    if reply.code != code:
        raise _IOFailure(str(reply))


def _command(conn: _Connection, command: str, expected: int, timeout: float) -> None:
    try:
        conn.send(command.encode("utf-8", "surrogateescape") + b"\r\n", timeout)
        _expect(conn, expected, timeout)
    except _IOFailure as e:
        raise DeliveryFailure(f"Sent {_quote(command)}, got {e}") from None


def _quote(text: str) -> str:
    """Go's %q, as chasquid's messages have it (imported only when a failure is told)."""
    from chasquid.goquote import go_quote

    return go_quote(text)


def _send_message(conn: _Connection, fd: int, t: Timeouts) -> None:
    encoder = WireEncoder(stuff=True)
    while True:
        try:
            chunk = _read_chunk(fd, t.read)
        except OSError as e:
            raise DeliveryFailure(f"Error reading the message: {_os_reason(e)}") from None
        out = encoder.feed(chunk) if chunk else encoder.end()
        try:
            if out:
                conn.send(out, t.write)
        except _IOFailure as e:
            raise DeliveryFailure(f"Error writing DATA: {e}") from None
        if not chunk:
            return


def _read_chunk(fd: int, timeout: float) -> bytes:
    """The next chunk of the message, b"" at its end; OSError if it does not come in time."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        raise TimeoutError(0, f"nothing to read for {timeout:g}s")
    return os.read(fd, CHUNK)
