"""Large message bodies in files, laid out so that chunk boundaries fall on awkward bytes."""

from __future__ import annotations

from pathlib import Path

from chasquid.msgbody import CHUNK, Body, FileRange

HEADER = b"Subject: big\n\n"


def big_body(path: Path, chunks: int = 12) -> tuple[Body, bytes]:
    """A message of ``chunks`` reading chunks in a file, and its bytes.

    Every line is 64 bytes and starts with a dot, so every chunk boundary is
    at the start of a dot line (dot-stuffing must carry across chunks), and
    the message ends without a final newline.
    """
    line = b"." + bytes(range(0x20, 0x20 + 62)) + b"\n"
    data = line * (chunks * CHUNK // len(line)) + b".last line without newline"
    path.write_bytes(b"junk before" + data + b"junk after")
    return Body((HEADER, FileRange(str(path), len(b"junk before"), len(data)))), HEADER + data


def crlf(data: bytes) -> bytes:
    """LF line endings as CRLF (what MDAs get)."""
    return data.replace(b"\n", b"\r\n")
