"""A client of Dovecot's authentication service: does a user exist, is a password right.

Dovecot is the fallback behind the domains' own users databases (docs/dovecot.md):
RCPT asks it whether a local user exists, AUTH whether a password is right.
Each question is one connection to one of Dovecot's unix sockets:

* the userdb socket (``auth-userdb`` protocol): the server greets with
  ``VERSION\\t1\\t...`` and ``SPID\\t...``; we send ``VERSION\\t1\\t1`` and
  ``USER\\t1\\t<user>\\tservice=smtp``; it answers ``USER\\t1\\t...`` (exists)
  or ``NOTFOUND\\t...`` (does not);
* the client socket (``auth-client`` protocol): we send ``VERSION\\t1\\t1``
  and ``CPID\\t<pid>`` at once, skip the server's handshake lines up to
  ``DONE``, then send one ``AUTH`` request for PLAIN with the base64 of
  ``user NUL user NUL password``; it answers ``OK\\t1...`` or ``FAIL\\t1...``.
  The request claims ``secured`` because the daemon takes AUTH only over TLS,
  and ``no-penalty`` because the daemon pads and rate-limits on its own.

Every exchange is bounded: the connection must open within CONNECT_TIMEOUT
and the exchange finish within EXCHANGE_TIMEOUT after that; a line longer
than MAX_LINE or a handshake longer than MAX_HANDSHAKE_LINES is an error.
Anything that is not a clear yes or no raises DovecotError, which callers
turn into a temporary failure: Dovecot being down, slow or confused must
never let a wrong password in nor make a user who may exist unknown.

Empty socket paths are found by trying the usual locations in order; the
first that accepts a connection is kept for the life of the process, and
until one is found every question looks again (Dovecot may start after us).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from chasquid.errors import ChasquidError, os_reason
from chasquid.goquote import go_quote

USERDB_CANDIDATES = (
    "/var/run/dovecot/auth-chasquid-userdb",
    "/var/run/dovecot/auth-userdb",
)
CLIENT_CANDIDATES = (
    "/var/run/dovecot/auth-chasquid-client",
    "/var/run/dovecot/auth-client",
)

CONNECT_TIMEOUT = 5.0
EXCHANGE_TIMEOUT = 5.0
#: Dovecot's lines are short (its longest are userdb replies with a few fields).
MAX_LINE = 16 * 1024
MAX_HANDSHAKE_LINES = 100
# Error messages quote at most this much of what the server sent.
_QUOTED = 200

T = TypeVar("T")


class DovecotError(ChasquidError):
    """Dovecot could not give an answer (callers reply with a temporary error)."""


class _ReadError(Exception):
    """Reading a line failed; the message is the reason (``EOF``, ...)."""


@dataclass(frozen=True)
class Limits:
    """The bounds of one exchange (tests shrink them)."""

    connect: float = CONNECT_TIMEOUT
    exchange: float = EXCHANGE_TIMEOUT
    max_line: int = MAX_LINE


class _Lines:
    """Lines from the server: LF or CRLF terminated, bounded in length."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    async def next(self) -> str:
        try:
            raw = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise _ReadError("EOF") from None
        except asyncio.LimitOverrunError:
            raise _ReadError("line too long") from None
        except OSError as e:
            raise _ReadError(os_reason(e)) from None
        return raw.rstrip(b"\n").removesuffix(b"\r").decode("utf-8", "replace")


def _quoted(line: str) -> str:
    if len(line) > _QUOTED:
        return go_quote(line[:_QUOTED]) + "..."
    return go_quote(line)


def check_username(user: str) -> None:
    """Refuse names that would break the tab-separated lines or the PLAIN response."""
    if any(c.isspace() for c in user):
        raise DovecotError("username not safe (contains spaces)")
    if any(ord(c) < 0x20 or c == "\x7f" for c in user):
        raise DovecotError("username not safe (contains control characters)")


class DovecotAuth:
    """Asks a Dovecot about users and passwords; safe to share between sessions."""

    def __init__(
        self,
        userdb_path: str = "",
        client_path: str = "",
        *,
        limits: Limits | None = None,
        userdb_candidates: Sequence[str] = USERDB_CANDIDATES,
        client_candidates: Sequence[str] = CLIENT_CANDIDATES,
    ) -> None:
        self.userdb_path = userdb_path
        self.client_path = client_path
        self.limits = limits or Limits()
        self._candidates = {"userdb": tuple(userdb_candidates), "client": tuple(client_candidates)}
        # Each written once, when discovery first succeeds; every later use reads it.
        self._found = {"userdb": userdb_path or None, "client": client_path or None}

    def __str__(self) -> str:
        return f"DovecotAuth({go_quote(self.userdb_path)}, {go_quote(self.client_path)})"

    async def exists(self, user: str) -> bool:
        """Whether Dovecot's userdb knows ``user`` (``user@domain`` or a bare name)."""
        check_username(user)
        path = await self._socket("userdb")
        return await self._exchange(path, lambda r, w: self._user_lookup(r, w, user))

    async def authenticate(self, user: str, password: str) -> bool:
        """Whether ``password`` is right for ``user``."""
        check_username(user)
        # As chasquid does: the userdb socket is found first, even to authenticate.
        await self._socket("userdb")
        path = await self._socket("client")
        return await self._exchange(path, lambda r, w: self._auth(r, w, user, password))

    async def probe(self) -> None:
        """Find both sockets and connect to each once; DovecotError if that fails."""
        for path in (await self._socket("userdb"), await self._socket("client")):
            try:
                await self._exchange(path, _nothing)
            except DovecotError as e:
                raise DovecotError(f"failed to connect to dovecot: {e}") from None

    async def _socket(self, kind: str) -> str:
        """The path of the ``userdb`` or ``client`` socket, looking for it if still unknown."""
        found = self._found[kind]
        if found is None:
            found = await self._discover(self._candidates[kind])
            if found is None:
                raise DovecotError(f"unable to find {kind} socket")
            self._found[kind] = found
        return found

    async def _discover(self, candidates: Sequence[str]) -> str | None:
        for path in candidates:
            try:
                await self._exchange(path, _nothing)
            except DovecotError:
                continue
            return path
        return None

    async def _exchange(
        self,
        path: str,
        talk: Callable[[_Lines, asyncio.StreamWriter], Awaitable[T]],
    ) -> T:
        """Connect to ``path`` and run ``talk`` on the connection, both within their bounds."""
        try:
            async with asyncio.timeout(self.limits.connect):
                reader, writer = await asyncio.open_unix_connection(
                    path, limit=self.limits.max_line
                )
        except TimeoutError:
            raise DovecotError(f"dial unix {path}: timed out") from None
        except OSError as e:
            raise DovecotError(f"dial unix {path}: connect: {os_reason(e)}") from None
        try:
            async with asyncio.timeout(self.limits.exchange):
                return await talk(_Lines(reader), writer)
        except TimeoutError:
            raise DovecotError(f"no answer from {path} within {self.limits.exchange:g}s") from None
        except OSError as e:
            raise DovecotError(f"talking to {path}: {os_reason(e)}") from None
        finally:
            writer.close()

    @staticmethod
    async def _user_lookup(lines: _Lines, writer: asyncio.StreamWriter, user: str) -> bool:
        for step, prefix in (("version", "VERSION\t1"), ("SPID", "SPID\t")):
            try:
                line = await lines.next()
            except _ReadError as e:
                raise DovecotError(f"error receiving {step}: {e}") from None
            if not line.startswith(prefix):
                raise DovecotError(f"error receiving {step}: got {_quoted(line)}")
        writer.write(f"VERSION\t1\t1\nUSER\t1\t{user}\tservice=smtp\n".encode())
        await writer.drain()
        return await _yes_or_no(lines, yes="USER\t1\t", no="NOTFOUND\t")

    @staticmethod
    async def _auth(lines: _Lines, writer: asyncio.StreamWriter, user: str, password: str) -> bool:
        writer.write(f"VERSION\t1\t1\nCPID\t{os.getpid()}\n".encode())
        await writer.drain()
        for _ in range(MAX_HANDSHAKE_LINES):
            try:
                line = await lines.next()
            except _ReadError as e:
                raise DovecotError(f"error receiving handshake: {e}") from None
            if line == "DONE":
                break
        else:
            raise DovecotError(f"error receiving handshake: more than {MAX_HANDSHAKE_LINES} lines")
        plain = f"{user}\0{user}\0{password}".encode("utf-8", "surrogateescape")
        resp = base64.b64encode(plain).decode("ascii")
        writer.write(
            f"AUTH\t1\tPLAIN\tservice=smtp\tsecured\tno-penalty\tnologin\tresp={resp}\n".encode()
        )
        await writer.drain()
        return await _yes_or_no(lines, yes="OK\t1", no="FAIL\t1")


async def _yes_or_no(lines: _Lines, *, yes: str, no: str) -> bool:
    """The answer line: True if it starts with ``yes``, False with ``no``; else an error."""
    try:
        line = await lines.next()
    except _ReadError as e:
        raise DovecotError(f"error receiving response: {e}") from None
    if line.startswith(yes):
        return True
    if line.startswith(no):
        return False
    raise DovecotError(f"invalid response: {_quoted(line)}")


async def _nothing(lines: _Lines, writer: asyncio.StreamWriter) -> None:
    """An exchange that only opens the connection (discovery and the start-up probe)."""
