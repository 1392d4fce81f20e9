"""Tests for chasquid.smtpwire: CRLF conversion and the dot-stuffed DATA payload."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chasquid.smtpwire import dot_stuff, to_crlf


def test_to_crlf() -> None:
    assert to_crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"
    assert to_crlf(b"no newline") == b"no newline"
    assert to_crlf(b"\n\n") == b"\r\n\r\n"


def test_dot_stuff() -> None:
    assert dot_stuff(b".a\nb\n.\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert dot_stuff(b"no end") == b"no end\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"


@given(st.lists(st.binary().map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))))
def test_dot_stuff_is_undone_by_the_receiver(lines: list[bytes]) -> None:
    # What a receiver does: read lines up to the lone dot, drop one leading dot from each.
    wire = dot_stuff(b"".join(line + b"\n" for line in lines))
    received = wire.split(b"\r\n")
    assert received[-2:] == [b".", b""]
    assert [line[1:] if line.startswith(b".") else line for line in received[:-2]] == lines
