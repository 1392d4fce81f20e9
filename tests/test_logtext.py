"""Escaping untrusted text for log lines."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chasquid.logtext import escape


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain text, ünïcode and a \\ backslash", "plain text, ünïcode and a \\ backslash"),
        ("a\r\nb\tc", "a\\r\\nb\\tc"),
        ("\x00\x07\x1b[31m\x7f", "\\x00\\x07\\x1b[31m\\x7f"),
        ("next\x85line", "next\\x85line"),
        ("\u2028\u2029", "\\u2028\\u2029"),
        ("abc\u202edcba", "abc\\u202edcba"),
        ("bad byte \udcff", "bad byte \\xff"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
    ],
)
def test_escape(text: str, escaped: str) -> None:
    assert escape(text) == escaped


@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_escaped_text_is_one_line_without_controls(text: str) -> None:
    out = escape(text)
    out.encode("utf-8")  # nothing left that a strict writer would refuse
    assert out.splitlines() in ([], [out])
    assert not [ch for ch in out if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")]
