"""Message bytes as SMTP and LMTP carry them: CRLF line endings and the dot-stuffed DATA payload.

The queue stores messages with LF line endings; everything that hands one to
another program or server (MDAs, LMTP, SMTP, mda-lmtp) converts it here:
whole (``to_crlf``, ``dot_stuff``) or a chunk at a time as a message is read
from disk (``WireEncoder``, ``EncodedReader``, ``encoded_chunks``), with the
same result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

# mda-lmtp imports this module for every message it delivers, and msgbody
# brings asyncio and dataclasses (~50 ms): it is loaded only by the helpers
# that read a stored Body, which mda-lmtp does not use.
if TYPE_CHECKING:
    from chasquid.msgbody import Body


def to_crlf(data: bytes) -> bytes:
    """LF line endings to CRLF; existing CRLF kept, no newline added at the end."""
    # Two C-speed replaces instead of a regex with a look-behind: every LF ends
    # up with exactly one CR before it, and a CRLF stays as it was.
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def dot_stuff(data: bytes) -> bytes:
    """The DATA payload: CRLF line endings, leading dots doubled, and the final dot."""
    body = to_crlf(data)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\n.", b"\n..") + b".\r\n"


class WireEncoder:
    """Converts a stored message (LF line endings), chunk by chunk, to what goes out.

    Every LF gets a CR before it (an existing CRLF is kept), as MDAs and pipes
    get it; with ``stuff`` it also becomes a DATA payload for SMTP and LMTP:
    leading dots doubled, a last line break added if missing, and the final
    ``.CRLF``. The result is the same however the message is cut into chunks.
    """

    def __init__(self, *, stuff: bool) -> None:
        self.stuff = stuff
        self._held_cr = False
        self._line_start = True
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        """The encoded form of the next chunk (a trailing CR waits for the next one)."""
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            # It may be the first half of a CRLF split between two chunks.
            chunk = chunk[:-1]
            self._held_cr = True
        out = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self.stuff and out:
            if self._line_start and out.startswith(b"."):
                out = b"." + out
            out = out.replace(b"\n.", b"\n..")
            self._line_start = out.endswith(b"\n")
        return self._emit(out)

    def end(self) -> bytes:
        """What follows the last chunk."""
        out = b"\r" if self._held_cr else b""
        self._held_cr = False
        if self.stuff:
            tail = (self._tail + out)[-2:]
            if tail and tail != b"\r\n":
                out += b"\r\n"
            out += b".\r\n"
        return self._emit(out)

    def _emit(self, out: bytes) -> bytes:
        if out:
            self._tail = (self._tail + out)[-2:]
        return out


class EncodedReader:
    """A blocking reader of a body as a ``WireEncoder`` turns it out (an MDA's stdin)."""

    def __init__(self, body: Body, *, stuff: bool = False) -> None:
        from chasquid.msgbody import CHUNK

        self._chunk = CHUNK
        self._reader = body.reader()
        self._encoder = WireEncoder(stuff=stuff)
        self._buffer = b""
        self._done = False

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` encoded bytes (all with -1); b"" at the end."""
        while not self._done and (n < 0 or len(self._buffer) < n):
            chunk = self._reader.read(self._chunk)
            if chunk:
                self._buffer += self._encoder.feed(chunk)
            else:
                self._buffer += self._encoder.end()
                self._done = True
                self._reader.close()
        if n < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def close(self) -> None:
        """Release the body's open file, if any."""
        self._reader.close()


def encoded_stdin(body: Body) -> bytes | EncodedReader:
    """The body with CRLF line endings as a program's stdin: bytes if small, else a reader."""
    from chasquid.msgbody import INLINE

    if body.size <= INLINE:
        return to_crlf(body.read())
    return EncodedReader(body, stuff=False)


async def encoded_chunks(body: Body, *, stuff: bool) -> AsyncIterator[bytes]:
    """The body as a ``WireEncoder`` turns it out, in chunks (for a network writer)."""
    encoder = WireEncoder(stuff=stuff)
    async for chunk in body.chunks():
        out = encoder.feed(chunk)
        if out:
            yield out
    last = encoder.end()
    if last:
        yield last
