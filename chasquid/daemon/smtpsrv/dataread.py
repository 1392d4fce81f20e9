"""The DATA reader: strict CRLF, dot-unstuffing, end marker and size limit.

Data is scanned in large chunks with bytes methods; there is no per-line Python
loop.  The stored message has LF line endings and no stuffing dots; it is
handed on piece by piece as it is read (to the session's spool), never
gathered in memory here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from chasquid.errors import ChasquidError

CHUNK_SIZE = 256 * 1024
_END = b"\r\n.\r\n"


class BadLineEnding(ChasquidError):
    """A bare CR, bare LF or CR CR was found in the data (SMTP smuggling defence)."""


class DataReadError(ChasquidError):
    """The connection ended or failed before the end-of-data marker."""


class DataReader:
    """Incremental parser: ``feed`` chunks until it returns the leftover bytes.

    ``max_size`` bounds the raw wire octets (including CRs, stuffing dots and
    the final ``.CRLF``); past it, data is validated but no longer handed on.
    ``take`` returns the message bytes decoded by the ``feed`` calls since the
    last ``take``.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0
        self.too_big = False
        self.done = False
        self._parts: list[bytes] = []
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> bytes | None:
        """Consume ``chunk``; return the bytes after the end marker, or None if not done.

        Raises BadLineEnding as soon as an invalid line ending is visible.
        """
        nl = chunk.rfind(b"\n")
        if nl == -1:
            self._extend_pending(chunk)
            return None
        if self._pending:
            region = bytes(self._pending) + chunk[: nl + 1]
            self._pending = bytearray()
        else:
            region = chunk[: nl + 1]
        rest = chunk[nl + 1 :]

        # Every region starts at the beginning of a line, so the end marker is
        # either a leading ".CRLF" or a "CRLF.CRLF" inside.
        if region.startswith(b".\r\n"):
            end = 3
        else:
            idx = region.find(_END)
            end = idx + 5 if idx >= 0 else -1
        lines = region if end < 0 else region[:end]
        crlf = lines.count(b"\r\n")
        if lines.count(b"\n") != crlf or lines.count(b"\r") != crlf:
            raise BadLineEnding("invalid line ending (bare CR or LF) in DATA")
        self.size += len(lines)
        if not self.too_big and self.size > self.max_size:
            self.too_big = True
            self._parts = []
        if not self.too_big:
            body = lines if end < 0 else lines[:-3]
            if body:
                self._parts.append(_unstuff(body))
        if end >= 0:
            self.done = True
            return region[end:] + rest
        if rest:
            self._extend_pending(rest)
        return None

    def _extend_pending(self, data: bytes) -> None:
        start = max(0, len(self._pending) - 1)
        self._pending += data
        # A CR anywhere but the last position of an unterminated line is bare.
        if self._pending.find(b"\r", start, len(self._pending) - 1) != -1:
            raise BadLineEnding("invalid line ending (bare CR) in DATA")
        if self.size + len(self._pending) > self.max_size and len(self._pending) > 3:
            # Too big already; only the line's last byte matters from now on
            # (a long line can never be the end marker).
            self.too_big = True
            self._parts = []
            self.size += len(self._pending) - 2
            self._pending = bytearray(b"x" + self._pending[-1:])

    def take(self) -> bytes:
        """The message bytes decoded since the last call (LF line endings, unstuffed)."""
        data = b"".join(self._parts)
        self._parts = []
        return data


def _unstuff(lines: bytes) -> bytes:
    """CRLF → LF and drop the stuffing dot of every line (``lines`` starts a line)."""
    out = lines.replace(b"\r\n", b"\n")
    if out.startswith(b"."):
        out = out[1:]
    return out.replace(b"\n.", b"\n")


def push_back(reader: asyncio.StreamReader, data: bytes) -> None:
    """Return bytes read past the end marker to the front of the reader's buffer.

    asyncio has no public unread; pipelined commands after DATA must not be lost.
    """
    if data:
        buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
        buffer[:0] = data


async def read_data(
    reader: asyncio.StreamReader,
    max_size: int,
    sink: Callable[[bytes], Awaitable[None]],
    *,
    before_read: Callable[[], None] = lambda: None,
) -> DataReader:
    """Read one DATA payload from ``reader``, handing the message to ``sink`` as it comes.

    The returned reader says whether the message was too big (then ``sink``
    got only its start). ``before_read`` is called before every read (the
    session resets its idle timer there). Raises BadLineEnding (reply 521 and
    close) or DataReadError (554 5.4.0).
    """
    dr = DataReader(max_size)
    while True:
        before_read()
        try:
            chunk = await reader.read(CHUNK_SIZE)
        except (ConnectionError, OSError) as exc:
            raise DataReadError(f"error reading DATA: {exc}") from exc
        if not chunk:
            raise DataReadError("unexpected EOF while reading DATA")
        leftover = dr.feed(chunk)
        data = dr.take()
        if data and not dr.too_big:
            await sink(data)
        if leftover is not None:
            push_back(reader, leftover)
            return dr
