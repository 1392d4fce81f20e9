"""Local delivery over LMTP (RFC 2033) with a pool of reused connections.

Set by the ``mail_lmtp_address`` key (a unix socket path or host:port): the
daemon hands local mail to an LMTP server (Dovecot, Cyrus, ...) instead of
spawning an MDA per recipient. One transaction carries several recipients;
after the data the server answers once per accepted recipient, and each
answer is that recipient's result: 2xx delivered, 5xx permanent, anything
else (and every connection problem) temporary.

A connection that breaks during a transaction is dropped and the
recipients without a result yet are tried once more on a fresh connection;
if that fails as well they get a temporary error. Recipients the server
already answered are never sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from chasquid.daemon.courier.base import DeliveryError, Results
from chasquid.errors import ChasquidError
from chasquid.msgbody import Body
from chasquid.normalize import NormalizationError, addr_to_ascii, split_addr
from chasquid.smtpwire import encoded_chunks

DEFAULT_TIMEOUT = 60.0
DEFAULT_POOL_SIZE = 4

# A reply longer than this many lines is not one a real server sends.
_MAX_REPLY_LINES = 128

_IO_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError)


class LMTPProtocolError(ChasquidError):
    """The server sent something that is not an LMTP reply."""


class _ConnectionBroken(ChasquidError):
    """The connection failed mid-way; the message says how."""


@dataclass(frozen=True)
class Reply:
    """One (possibly multi-line) server reply."""

    code: int
    lines: tuple[str, ...]

    def text(self) -> str:
        """`<code> <text>`, the lines of a multi-line reply joined by LF."""
        return f"{self.code} " + "\n".join(self.lines)

    def error(self, stage: str) -> DeliveryError:
        """The DeliveryError this reply means at stage (5xx permanent, else temporary)."""
        return DeliveryError(f"LMTP {stage}: {self.text()}", permanent=500 <= self.code <= 599)


def parse_address(address: str) -> tuple[str, int] | str:
    """A unix socket path (starting with /) as is, or host:port as (host, port)."""
    if address.startswith("/"):
        return address
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ChasquidError(f"LMTP address {address!r}: expected a unix socket path or host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class _Connection:
    """One LMTP session after LHLO; used by one transaction at a time."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.extensions: frozenset[str] = frozenset()

    async def read_reply(self) -> Reply:
        """One reply, within the time-out."""
        async with asyncio.timeout(self.timeout):
            return await self.read_reply_untimed()

    async def read_reply_untimed(self) -> Reply:
        """One reply, for callers that bound a whole exchange with one time-out.

        (asyncio.timeout, not wait_for, which makes a task per call.)
        """
        lines: list[str] = []
        code = 0
        while len(lines) < _MAX_REPLY_LINES:
            raw = await self.reader.readline()
            if not raw.endswith(b"\n"):
                raise asyncio.IncompleteReadError(raw, None)
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                raise LMTPProtocolError(f"malformed reply line {line[:100]!r}")
            if lines and int(line[:3]) != code:
                raise LMTPProtocolError(f"reply code changed within a reply: {line[:100]!r}")
            code = int(line[:3])
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(code, tuple(lines))
        raise LMTPProtocolError("reply too long")

    async def send(self, data: bytes) -> None:
        """Write data, within the time-out."""
        async with asyncio.timeout(self.timeout):
            await self.send_untimed(data)

    async def send_untimed(self, data: bytes) -> None:
        """Write data, for callers that bound a whole exchange with one time-out."""
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: str) -> Reply:
        await self.send(line.encode("utf-8", "surrogateescape") + b"\r\n")
        return await self.read_reply()

    def reusable(self) -> bool:
        """Whether an idle connection looks fit for another transaction.

        A server that closed it or said something unasked (a 421 before
        closing) is noticed here without a round trip; a drop not yet seen
        fails the first reply, and the courier retries on a new connection.
        """
        reader = self.reader
        return not (
            self.writer.is_closing()
            or reader.at_eof()
            or reader.exception() is not None
            or reader._buffer  # type: ignore[attr-defined]
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def quit(self) -> None:
        with contextlib.suppress(*_IO_ERRORS, LMTPProtocolError):
            await asyncio.wait_for(self.command("QUIT"), min(self.timeout, 5.0))
        self.close()


def _wire_rcpts(rcpts: Sequence[str], smtputf8: bool, results: Results) -> list[tuple[str, str]]:
    """(recipient, its RCPT form) for those that can be sent; the others get their error."""
    wires: list[tuple[str, str]] = []
    for r in rcpts:
        try:
            wires.append((r, _wire_address(r, smtputf8)))
        except DeliveryError as e:
            results[r] = e
    return wires


def _wire_address(addr: str, smtputf8: bool) -> str:
    """The address as sent in MAIL/RCPT; raises DeliveryError if it cannot be sent."""
    if addr in ("", "<>"):
        return ""
    if addr.isascii() or smtputf8:
        return addr
    user, _ = split_addr(addr)
    if not user.isascii():
        raise DeliveryError(
            "local part is not ASCII but the LMTP server does not support SMTPUTF8",
            permanent=True,
        )
    try:
        return addr_to_ascii(addr)
    except NormalizationError as e:
        raise DeliveryError(f"non-ASCII domain is not IDNA safe: {e}", permanent=True) from e


class LMTPCourier:
    """Delivers local mail to an LMTP server over pooled connections."""

    def __init__(
        self,
        address: str,
        lhlo_name: str,
        pool_size: int = DEFAULT_POOL_SIZE,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if pool_size < 1:
            raise ChasquidError(f"LMTP pool size must be at least 1, not {pool_size}")
        self.address = address
        self._target = parse_address(address)
        self.lhlo_name = lhlo_name
        self.pool_size = pool_size
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(pool_size)
        #: Connections opened so far (monitoring, tests).
        self.connections_opened = 0

    async def deliver(self, sender: str, rcpt: str, body: Body) -> None:
        """Deliver to one recipient; raise DeliveryError on failure."""
        error = (await self.deliver_many(sender, [rcpt], body))[rcpt]
        if error is not None:
            raise error

    async def deliver_many(self, sender: str, rcpts: Sequence[str], body: Body) -> Results:
        """Deliver to several recipients in one transaction; None means delivered."""
        results: Results = {}
        todo = list(dict.fromkeys(rcpts))
        if not todo:
            return results
        async with self._slots:
            for attempt in range(2):
                try:
                    conn = await self._get_connection()
                except (*_IO_ERRORS, LMTPProtocolError) as e:
                    failure = f"LMTP connecting to {self.address}: {_describe(e)}"
                else:
                    try:
                        await self._transaction(conn, sender, todo, body, results)
                    except _ConnectionBroken as e:
                        conn.close()
                        failure = str(e)
                    else:
                        self._put_back(conn)
                        return results
                todo = [r for r in todo if r not in results]
                if not todo or attempt == 1:
                    break
            for r in todo:
                results[r] = DeliveryError(failure, permanent=False)
        return results

    async def close(self) -> None:
        """Say QUIT on and close every idle connection."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.quit()

    async def _get_connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            # No RSET round trip: a connection goes back to the pool only after
            # a finished transaction or a successful RSET, so it holds no state.
            if conn.reusable():
                return conn
            conn.close()
        return await self._connect()

    async def _connect(self) -> _Connection:
        self.connections_opened += 1
        if isinstance(self._target, str):
            opening = asyncio.open_unix_connection(self._target)
        else:
            opening = asyncio.open_connection(*self._target)
        reader, writer = await asyncio.wait_for(opening, self.timeout)
        conn = _Connection(reader, writer, self.timeout)
        try:
            greeting = await conn.read_reply()
            if greeting.code != 220:
                raise LMTPProtocolError(f"unexpected greeting {greeting.text()!r}")
            hello = await conn.command(f"LHLO {self.lhlo_name}")
            if hello.code != 250:
                raise LMTPProtocolError(f"LHLO rejected: {hello.text()!r}")
        except BaseException:
            conn.close()
            raise
        conn.extensions = frozenset(
            line.split(" ", 1)[0].upper() for line in hello.lines[1:] if line
        )
        return conn

    def _put_back(self, conn: _Connection) -> None:
        if len(self._idle) < self.pool_size and not conn.writer.is_closing():
            self._idle.append(conn)
        else:
            conn.close()

    async def _transaction(
        self,
        conn: _Connection,
        sender: str,
        rcpts: list[str],
        body: Body,
        results: Results,
    ) -> None:
        """One MAIL/RCPT.../DATA exchange; fills results for every recipient it settles."""
        stage = "MAIL"
        try:
            offered_utf8 = "SMTPUTF8" in conn.extensions
            need_utf8 = offered_utf8 and not all(a.isascii() for a in [sender, *rcpts])
            try:
                mail_from = _wire_address(sender, offered_utf8)
            except DeliveryError as e:
                for r in rcpts:
                    results[r] = e
                return
            params = ""
            if "8BITMIME" in conn.extensions:
                params += " BODY=8BITMIME"
            if need_utf8:
                params += " SMTPUTF8"
            mail_cmd = f"MAIL FROM:<{mail_from}>{params}"
            if "PIPELINING" in conn.extensions:
                await self._pipelined(conn, mail_cmd, rcpts, offered_utf8, body, results)
                return
            reply = await conn.command(mail_cmd)
            if reply.code != 250:
                for r in rcpts:
                    results[r] = reply.error(stage)
                await self._reset(conn)
                return
            stage = "RCPT"
            accepted: list[str] = []
            for r, wire in _wire_rcpts(rcpts, offered_utf8, results):
                reply = await conn.command(f"RCPT TO:<{wire}>")
                if 200 <= reply.code <= 299:
                    accepted.append(r)
                else:
                    results[r] = reply.error(stage)
            if not accepted:
                await self._reset(conn)
                return
            stage = "DATA"
            reply = await conn.command("DATA")
            if reply.code != 354:
                for r in accepted:
                    results[r] = reply.error(stage)
                await self._reset(conn)
                return
            await self._send_data(conn, accepted, body, results)
        except (*_IO_ERRORS, LMTPProtocolError) as e:
            raise _ConnectionBroken(f"LMTP {stage}: {_describe(e)}") from e

    async def _send_data(
        self,
        conn: _Connection,
        accepted: list[str],
        body: Body,
        results: Results,
    ) -> None:
        """After a 354: the message, then one reply per accepted recipient (RFC 2033).

        The message is read from disk and written a chunk at a time; if it
        cannot be read to its end the connection is dropped, so the server
        never takes a cut message for a whole one.
        """
        stage = "DATA writing"
        try:
            async with asyncio.timeout(conn.timeout):
                async for chunk in encoded_chunks(body, stuff=True):
                    await conn.send_untimed(chunk)
                stage = "DATA closing"
                replies = [await conn.read_reply_untimed() for _ in accepted]
            for r, reply in zip(accepted, replies, strict=True):
                results[r] = None if 200 <= reply.code <= 299 else reply.error(stage)
        except (*_IO_ERRORS, LMTPProtocolError) as e:
            raise _ConnectionBroken(f"LMTP {stage}: {_describe(e)}") from e

    async def _pipelined(
        self,
        conn: _Connection,
        mail_cmd: str,
        rcpts: list[str],
        offered_utf8: bool,
        body: Body,
        results: Results,
    ) -> None:
        """MAIL, every RCPT and DATA in one write (RFC 2920), then their replies in order."""
        wires = _wire_rcpts(rcpts, offered_utf8, results)
        if not wires:
            return
        lines = [mail_cmd, *(f"RCPT TO:<{w}>" for _, w in wires), "DATA"]
        stage = "MAIL"
        accepted: list[str] = []
        try:
            # One time-out for the whole group: the replies come back together.
            async with asyncio.timeout(conn.timeout):
                await conn.send_untimed(
                    "".join(f"{x}\r\n" for x in lines).encode("utf-8", "surrogateescape")
                )
                mail = await conn.read_reply_untimed()
                stage = "RCPT"
                rcpt_replies = [await conn.read_reply_untimed() for _ in wires]
                stage = "DATA"
                data = await conn.read_reply_untimed()
            if mail.code != 250:
                for r in rcpts:
                    results[r] = mail.error("MAIL")
            else:
                for (r, _), reply in zip(wires, rcpt_replies, strict=True):
                    if 200 <= reply.code <= 299:
                        accepted.append(r)
                    else:
                        results[r] = reply.error("RCPT")
            if data.code == 354 and not accepted:
                # DATA taken with no recipient accepted: how many replies an
                # empty message gets is unclear, so the connection is dropped.
                conn.close()
                return
            if data.code != 354:
                for r in accepted:
                    results[r] = data.error(stage)
                await self._reset(conn)
                return
        except (*_IO_ERRORS, LMTPProtocolError) as e:
            raise _ConnectionBroken(f"LMTP {stage}: {_describe(e)}") from e
        await self._send_data(conn, accepted, body, results)

    async def _reset(self, conn: _Connection) -> None:
        reply = await conn.command("RSET")
        if reply.code != 250:
            raise LMTPProtocolError(f"RSET rejected: {reply.text()!r}")


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.IncompleteReadError):
        return "connection closed by the server"
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
