"""Message bodies: parts in memory and ranges of files, read in pieces."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chasquid.msgbody import Body, FileRange


def test_body_parts_in_memory_and_in_files(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    body = Body((b"head:", FileRange(str(path), 2, 5), b"", b":tail"))
    assert body.size == 15
    assert body.read() == b"head:23456:tail"
    assert body.read(7) == b"head:23"
    with body.reader() as r:
        assert [r.read(4) for _ in range(5)] == [b"head", b":234", b"56:t", b"ail", b""]
    assert body.prepend(b"X: y\n").read() == b"X: y\nhead:23456:tail"
    assert Body.of(b"").parts == () and Body.of(b"").read() == b""

    async def collect() -> bytes:
        return b"".join([c async for c in body.chunks(3)])

    assert asyncio.run(collect()) == b"head:23456:tail"


def test_a_file_shorter_than_its_range_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"short")
    with pytest.raises(OSError, match="ends before its message does"):
        Body((FileRange(str(path), 0, 100),)).read()
