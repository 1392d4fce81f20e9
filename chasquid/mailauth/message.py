"""A message as DKIM sees it: header fields for dkimpy and the canonical body hash (RFC 6376 §3.4).

Messages come with LF line endings (as the daemon stores them); DKIM hashes
CRLF lines, which is what the header fields and the body hash are built from.

dkimpy canonicalizes a body with regular expressions over the whole of it:
13 s for a 50 MiB message in calls that never release the GIL, and its
header parser grows folded fields quadratically. So the header section is
split here in one pass, and the body is canonicalized and hashed in chunks
of whole lines: the work is linear and, run in a thread, leaves the event
loop a turn between chunks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from chasquid.errors import ChasquidError

#: Body chunk size: a few milliseconds of work each, at worst.
CHUNK = 1 << 20

_SPACES = re.compile(rb"  +")


class MessageFormatError(ChasquidError):
    """The header section cannot be read as header fields."""


@dataclass(frozen=True)
class Parts:
    """Where a message's header section ends and its body starts (offsets into the message)."""

    header_end: int
    body_start: int


def split(message: bytes) -> Parts:
    """Find the empty line between header section and body (none: it is all header)."""
    if message.startswith(b"\n"):
        return Parts(0, 1)
    end = message.find(b"\n\n")
    if end < 0:
        return Parts(len(message), len(message))
    return Parts(end + 1, end + 2)


def header_fields(section: bytes) -> list[list[bytes]]:
    """The fields of a header section as dkimpy holds them: `[name, value]`.

    The value is everything after the colon, continuation lines included, with
    CRLF line ends. Raises MessageFormatError for a continuation line without
    a field, or a line without a colon.
    """
    fields: list[list[bytes]] = []
    parts: list[list[bytes]] = []
    for line in section.split(b"\n"):
        if not line:
            continue
        if line[0] in b" \t":
            if not parts:
                raise MessageFormatError("continuation line without a header field")
            parts[-1].append(line)
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name:
            raise MessageFormatError("malformed header line (no field name and colon)")
        fields.append([name, b""])
        parts.append([value])
    for fld, lines in zip(fields, parts, strict=True):
        fld[1] = b"\r\n".join(lines) + b"\r\n"
    return fields


#: A body: the bytes themselves, or a function that gives its pieces afresh at each
#: call (a body read from disk; the pieces may cut lines anywhere).
BodySource = bytes | Callable[[], Iterable[bytes]]


def _whole_lines(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Pieces regrouped into chunks of whole lines (the last may lack its LF)."""
    carry = b""
    for piece in pieces:
        data = carry + piece if carry else piece
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        yield from _line_chunks(data[: cut + 1], size)
        carry = data[cut + 1 :]
    if carry:
        yield carry


def _line_chunks(body: bytes, size: int) -> Iterator[bytes]:
    start, n = 0, len(body)
    while start < n:
        end = body.rfind(b"\n", start, start + size)
        if end < 0:  # a line longer than a chunk
            end = body.find(b"\n", start + size)
            if end < 0:
                end = n - 1
        yield body[start : end + 1]
        start = end + 1


def _relaxed(chunk: bytes) -> bytes:
    """Relaxed canonical lines (RFC 6376 §3.4.4), still LF-terminated."""
    chunk = chunk.replace(b"\t", b" ")
    if b"  " in chunk:
        chunk = _SPACES.sub(b" ", chunk)
    if b" \n" in chunk or chunk.endswith(b" "):
        chunk = b"\n".join([line.rstrip(b" ") for line in chunk.split(b"\n")])
    return chunk


@dataclass(frozen=True)
class BodyHash:
    """SHA-256 of a canonical body (cut to `limit` octets if given) and its full length."""

    digest: bytes
    length: int


def body_hash(
    body: BodySource, relaxed: bool, limit: int | None = None, *, chunk_size: int = CHUNK
) -> BodyHash:
    """Canonicalize (relaxed or simple) and hash a body given with LF line ends.

    Trailing empty lines are dropped; a non-empty body ends with one CRLF; an
    empty one is empty (relaxed) or a single CRLF (simple). `length` is the
    canonical length even when `limit` cuts the hashed part shorter. A body
    given as a function is read piece by piece (from disk, blocking), never
    whole.
    """
    hasher = hashlib.sha256()
    length = 0
    pending = 0  # trailing LFs held back: they are dropped if only empty lines follow

    def feed(data: bytes) -> None:
        nonlocal length
        if limit is not None and length < limit:
            hasher.update(data[: limit - length])
        elif limit is None:
            hasher.update(data)
        length += len(data)

    chunks = (
        _line_chunks(body, chunk_size)
        if isinstance(body, bytes)
        else _whole_lines(body(), chunk_size)
    )
    for chunk in chunks:
        if relaxed:
            chunk = _relaxed(chunk)
        text = chunk.rstrip(b"\n")
        if not text:
            pending += len(chunk)
            continue
        feed((b"\n" * pending + text).replace(b"\n", b"\r\n"))
        pending = len(chunk) - len(text)
    if length or not relaxed:
        feed(b"\r\n")
    return BodyHash(hasher.digest(), length)
