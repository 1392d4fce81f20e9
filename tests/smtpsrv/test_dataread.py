"""The DATA reader: end marker, dot-unstuffing, strict CRLF, size limit, chunking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chasquid.daemon.smtpsrv.dataread import BadLineEnding, DataReader


def stuff(lines: list[bytes]) -> bytes:
    """What a client sends for these lines: dot-stuffed, CRLF, then the end marker."""
    return b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in lines) + b".\r\n"


class Reader(DataReader):
    """A DataReader that keeps what ``take`` hands on, as read_data's sink would."""

    def __init__(self, max_size: int) -> None:
        super().__init__(max_size)
        self.kept = b""

    def message(self) -> bytes:
        return self.kept


def feed_chunks(data: bytes, sizes: list[int], max_size: int = 10**9) -> tuple[Reader, bytes]:
    dr = Reader(max_size)
    pos = 0
    for size in [*sizes, len(data)]:
        chunk = data[pos : pos + max(size, 1)]
        pos += len(chunk)
        left = dr.feed(chunk)
        taken = dr.take()
        dr.kept = b"" if dr.too_big else dr.kept + taken
        if left is not None:
            return dr, left + data[pos:]
    raise AssertionError("no end marker found")


line = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@given(st.lists(line, max_size=20), st.lists(st.integers(1, 17), max_size=30))
def test_roundtrip_any_chunking(lines: list[bytes], sizes: list[int]) -> None:
    wire = stuff(lines) + b"QUIT\r\n"
    dr, left = feed_chunks(wire, sizes)
    assert dr.message() == b"".join(x + b"\n" for x in lines)
    assert left == b"QUIT\r\n"
    assert dr.size == len(wire) - len(b"QUIT\r\n")


@given(
    st.lists(line, min_size=1, max_size=10),
    st.integers(0, 9),
    st.sampled_from([b"\n", b"\r", b"\r\r\n"]),
    st.lists(st.integers(1, 7), max_size=30),
)
def test_bare_cr_or_lf_detected_across_chunks(
    lines: list[bytes], where: int, bad: bytes, sizes: list[int]
) -> None:
    where %= len(lines)
    lines = [b"x" + x for x in lines]  # no line may be the end marker itself
    # Put the bad ending in the middle of a line so it cannot form the end marker.
    lines[where] = b"a" + lines[where] + bad + b"b"
    wire = b"".join(x + b"\r\n" for x in lines) + b".\r\n"
    with pytest.raises(BadLineEnding):
        feed_chunks(wire, sizes)


def test_empty_message() -> None:
    dr, left = feed_chunks(b".\r\n", [])
    assert dr.message() == b"" and left == b""


def test_dot_lines() -> None:
    dr, _ = feed_chunks(b"..\r\n..x\r\n.y\r\n.\r\n", [1, 1, 1])
    assert dr.message() == b".\n.x\ny\n"


def test_dot_lf_is_not_end_marker() -> None:
    with pytest.raises(BadLineEnding):
        feed_chunks(b"a\r\n.\n", [])


def test_size_limit_exact_and_over() -> None:
    wire = b"12345678\r\n.\r\n"  # 13 octets on the wire
    dr, _ = feed_chunks(wire, [], max_size=13)
    assert not dr.too_big
    dr, left = feed_chunks(wire + b"NOOP\r\n", [2, 3], max_size=12)
    assert dr.too_big and dr.message() == b"" and left == b"NOOP\r\n"


def test_bad_ending_after_size_exceeded() -> None:
    with pytest.raises(BadLineEnding):
        feed_chunks(b"x" * 100 + b"\r\nabc\ndef\r\n.\r\n", [10] * 20, max_size=20)


def test_huge_line_without_lf_is_drained_when_too_big() -> None:
    dr = DataReader(100)
    for _ in range(100):
        assert dr.feed(b"y" * 1000) is None
    assert dr.feed(b"\r\n.\r\n") == b""
    assert dr.too_big and dr.size == 100_000 + 5
