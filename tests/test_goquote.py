"""Tests for chasquid.goquote: strings and lists quoted as Go's fmt does."""

from __future__ import annotations

import pytest

from chasquid.goquote import go_list, go_list_plain, go_quote, go_quote_ascii


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", '""'),
        ("abc", '"abc"'),
        ('a"b\\c', r'"a\"b\\c"'),
        ("\a\b\f\n\r\t\v", r'"\a\b\f\n\r\t\v"'),
        ("\x00\x1b\x7f", r'"\x00\x1b\x7f"'),
        ("ñandú ☃", '"ñandú ☃"'),
        ("\u00a0", r'"\u00a0"'),  # no-break space is not printable for Go
        ("\u200b", r'"\u200b"'),
        ("\U000e0001", r'"\U000e0001"'),
        ("😀", '"😀"'),
        (b"a\xffb", r'"a\xffb"'),
        (b"\xe2\x98", r'"\xe2\x98"'),  # truncated UTF-8 sequence
        ("x\udcff", r'"x\xff"'),  # surrogateescape'd byte
    ],
)
def test_go_quote(value: str | bytes, expected: str) -> None:
    assert go_quote(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", '"abc"'),
        ("ñ", r'"\u00f1"'),
        ("xn--t", '"xn--t"'),
        ("😀", r'"\U0001f600"'),
        ("a\tb", r'"a\tb"'),
        (b"\xff", r'"\xff"'),
    ],
)
def test_go_quote_ascii(value: str | bytes, expected: str) -> None:
    assert go_quote_ascii(value) == expected


def test_go_lists() -> None:
    assert go_list(["-f", "%from%"]) == '["-f" "%from%"]'
    assert go_list([]) == "[]"
    assert go_list([":25", "[::1]:25"]) == '[":25" "[::1]:25"]'
    assert go_list_plain(["to1", "to2"]) == "[to1 to2]"
    assert go_list_plain([]) == "[]"
