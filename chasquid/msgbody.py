"""A message's bytes without holding them in memory: parts in memory and byte ranges of files.

Reception spools DATA to a file, the queue keeps each message in its item
file, and every way out (hooks, MDAs, LMTP, SMTP) reads it back in chunks:
memory per message in flight is a chunk, not the message. A ``Body`` names
where the bytes are; the files it points into are never rewritten while it
is in use (the queue only ever appends new files and deletes finished ones).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

#: The size of the pieces a body is read in.
CHUNK = 256 * 1024
#: A body up to this size is read in one go, on the event loop: reading a few
#: pages (usually still in the page cache) costs less than a worker thread's
#: round trip, which would cost every small message's delivery.
INLINE = 64 * 1024


class Readable(Protocol):
    """A blocking source of bytes (a program's stdin): ``read(n)`` gives n bytes until the end.

    Fewer than n bytes means the end has been reached, so a reader need not
    ask again to learn it (a worker-thread round trip saved per program run).
    """

    def read(self, n: int = -1, /) -> bytes:
        """n bytes (all that is left with -1); fewer only at the end, b"" after it."""
        ...

    def close(self) -> None:
        """Release what the source holds open."""
        ...


@dataclass(frozen=True)
class FileRange:
    """``length`` bytes at ``offset`` of the file at ``path``."""

    path: str
    offset: int
    length: int


Part = bytes | FileRange


@dataclass(frozen=True)
class Body:
    """A message: its parts, in order (bytes in memory, or ranges of files)."""

    parts: tuple[Part, ...] = ()

    @classmethod
    def of(cls, data: bytes) -> Body:
        """A body held in memory (small messages, DSNs, tests)."""
        return cls((data,) if data else ())

    @property
    def size(self) -> int:
        """The number of bytes of the message."""
        return sum(len(p) if isinstance(p, bytes) else p.length for p in self.parts)

    def prepend(self, data: bytes) -> Body:
        """This body with ``data`` (added headers) before it."""
        return Body((data, *self.parts)) if data else self

    def in_memory(self) -> bool:
        """Whether every part is in memory (nothing to read from disk)."""
        return all(isinstance(p, bytes) for p in self.parts)

    def slice(self, start: int) -> Body:
        """The body from byte ``start`` on."""
        parts: list[Part] = []
        for part in self.parts:
            length = len(part) if isinstance(part, bytes) else part.length
            if start >= length:
                start -= length
                continue
            if isinstance(part, bytes):
                parts.append(part[start:])
            else:
                parts.append(FileRange(part.path, part.offset + start, part.length - start))
            start = 0
        return Body(tuple(parts))

    def pieces(self) -> Iterator[bytes]:
        """The body in CHUNK-sized pieces (blocking: from a thread)."""
        with self.reader() as r:
            while piece := r.read(CHUNK):
                yield piece

    def reader(self) -> BodyReader:
        """A blocking reader of the whole body (for threads, and small reads)."""
        return BodyReader(self)

    def read(self, limit: int = -1) -> bytes:
        """The first ``limit`` bytes (all of them with -1); blocking, for small bodies or heads."""
        with self.reader() as r:
            return r.read(limit)

    def stdin(self) -> bytes | BodyReader:
        """The body as a program's stdin: its bytes if small (``INLINE``), else a reader."""
        return self.read() if self.size <= INLINE else self.reader()

    async def chunks(self, size: int = CHUNK) -> AsyncIterator[bytes]:
        """The body in pieces of at most ``size`` bytes; file reads run in a worker thread.

        A body up to ``INLINE`` bytes is read at once, without a thread.
        """
        if self.size <= INLINE:
            if self.size:
                yield self.read()
            return
        reader = self.reader()
        try:
            while True:
                chunk = await asyncio.to_thread(reader.read, size)
                if not chunk:
                    return
                yield chunk
        finally:
            reader.close()


class BodyReader:
    """Reads a body front to back with ``read(n)``; opens each file only while reading it."""

    def __init__(self, body: Body) -> None:
        self._parts: Iterator[Part] = iter(body.parts)
        self._current: Part | None = None
        self._pos = 0
        self._fd = -1

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (everything left with -1); b"" at the end."""
        out: list[bytes] = []
        want = n if n >= 0 else None
        while want is None or want > 0:
            piece = self._next_piece(want)
            if not piece:
                break
            out.append(piece)
            if want is not None:
                want -= len(piece)
        return b"".join(out)

    def _next_piece(self, want: int | None) -> bytes:
        while True:
            part = self._current
            if part is None:
                part = self._current = next(self._parts, None)
                self._pos = 0
                if part is None:
                    return b""
            length = len(part) if isinstance(part, bytes) else part.length
            left = length - self._pos
            if left <= 0:
                self._finish_part()
                continue
            take = left if want is None else min(left, want)
            if isinstance(part, bytes):
                piece = part[self._pos : self._pos + take]
            else:
                piece = self._pread(part, min(take, CHUNK * 4))
            self._pos += len(piece)
            return piece

    def _pread(self, part: FileRange, n: int) -> bytes:
        if self._fd < 0:
            self._fd = os.open(part.path, os.O_RDONLY | os.O_CLOEXEC)
        data = os.pread(self._fd, n, part.offset + self._pos)
        if not data:
            raise OSError(f"{part.path}: file ends before its message does")
        return data

    def _finish_part(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._current = None

    def close(self) -> None:
        """Release the open file, if any."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> BodyReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
