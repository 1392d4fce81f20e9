"""Tests for chasquid.durations: Go's duration syntax, parsed and printed."""

from __future__ import annotations

import pytest

from chasquid.durations import (
    DurationError,
    format_duration,
    format_duration_ns,
    parse_duration,
    parse_duration_ns,
)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (20 * 3600, "20h0m0s"),
        (24 * 3600, "24h0m0s"),
        (90, "1m30s"),
        (60, "1m0s"),
        (17, "17s"),
        (1.5, "1.5s"),
        (0.5, "500ms"),
        (0.005, "5ms"),
        (0.0015, "1.5ms"),
        (0.3, "300ms"),
        (97.123456, "1m37.123456s"),
        (-90, "-1m30s"),
        (3600 + 1, "1h0m1s"),
    ],
)
def test_format_duration(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


def test_format_duration_sub_millisecond() -> None:
    assert format_duration_ns(1) == "1ns"
    assert format_duration_ns(999) == "999ns"
    assert format_duration_ns(1500) == "1.5µs"
    assert format_duration_ns(1_000) == "1µs"
    assert format_duration_ns(1_000_001) == "1.000001ms"
    assert format_duration_ns(1_000_000_001) == "1.000000001s"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20h", 72000.0),
        ("48h", 172800.0),
        ("360m", 21600.0),
        ("1h30m", 5400.0),
        ("2.5h", 9000.0),
        ("0", 0.0),
        ("-0", 0.0),
        ("+5s", 5.0),
        ("-1h", -3600.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("100ms", 0.1),
        ("1us", 1e-6),
        ("1µs", 1e-6),
        ("1μs", 1e-6),
        ("3ns", 3e-9),
        ("1h1m1s1ms", 3661.001),
        ("0h", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", 'time: invalid duration "abc"'),
        ("", 'time: invalid duration ""'),
        ("-", 'time: invalid duration "-"'),
        (".s", 'time: invalid duration ".s"'),
        ("1h-2m", 'time: unknown unit "h-" in duration "1h-2m"'),
        ("1h.", 'time: invalid duration "1h."'),
        ("10", 'time: missing unit in duration "10"'),
        ("1h30", 'time: missing unit in duration "1h30"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("3 h", 'time: unknown unit " h" in duration "3 h"'),
        ("1é", r'time: unknown unit "\xc3\xa9" in duration "1\xc3\xa9"'),
        ("9999999999999999999h", 'time: invalid duration "9999999999999999999h"'),
        ("3000000h", 'time: invalid duration "3000000h"'),
    ],
)
def test_parse_duration_errors(text: str, message: str) -> None:
    with pytest.raises(DurationError) as e:
        parse_duration(text)
    assert str(e.value) == message


def test_parse_duration_limits() -> None:
    # Go's int64 nanoseconds: the largest value parses, one more does not.
    assert parse_duration_ns("9223372036854775807ns") == (1 << 63) - 1
    assert parse_duration_ns("-9223372036854775808ns") == -(1 << 63)
    with pytest.raises(DurationError):
        parse_duration_ns("9223372036854775808ns")


def test_format_parse_round_trip() -> None:
    for text in ["20h0m0s", "1m30s", "1.5s", "500ms", "1h0m1s", "2562047h47m16.854775807s"]:
        assert format_duration_ns(parse_duration_ns(text)) == text
