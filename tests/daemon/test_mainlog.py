"""The main log's line format, verbosity and file reopening."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chasquid.daemon.mainlog import (
    LogOptions,
    MainLog,
    MainLogError,
    MainLogFormatter,
    format_location,
    level_marker,
    threshold_for_verbosity,
)


def _record(
    level: int, msg: str, filename: str = "daemon.py", lineno: int = 42
) -> logging.LogRecord:
    rec = logging.LogRecord("chasquid.x", level, filename, lineno, msg, None, None)
    rec.filename = filename
    return rec


def test_level_markers() -> None:
    assert level_marker(logging.CRITICAL) == "☠"
    assert level_marker(logging.ERROR) == "E"
    assert level_marker(logging.WARNING) == "E"
    assert level_marker(logging.INFO) == "_"
    assert level_marker(logging.DEBUG) == "."


def test_verbosity_thresholds() -> None:
    assert threshold_for_verbosity(0) == logging.INFO
    assert threshold_for_verbosity(1) == logging.DEBUG
    assert threshold_for_verbosity(3) == logging.DEBUG
    assert threshold_for_verbosity(-1) == logging.WARNING
    assert threshold_for_verbosity(-2) == logging.CRITICAL


def test_location_is_18_columns() -> None:
    assert format_location("daemon.py", 42) == "daemon.py:42      "
    long = format_location("a_very_long_module_name.py", 1234)
    assert len(long) == 18
    assert long.endswith(".py:1234")


def test_line_without_time() -> None:
    line = MainLogFormatter(with_time=False).format(_record(logging.INFO, "Server listening"))
    assert line == "_ daemon.py:42       Server listening"


def test_line_with_time() -> None:
    line = MainLogFormatter(with_time=True).format(_record(logging.ERROR, "boom"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} E daemon\.py:42 +boom", line)


def test_newlines_do_not_start_a_new_entry() -> None:
    line = MainLogFormatter(with_time=False).format(_record(logging.INFO, "a\nb\rc"))
    assert "\n" not in line
    assert line.endswith("a\\nb\\rc")


def test_control_characters_and_undecodable_bytes_are_escaped() -> None:
    message = "ehlo \x1b[31mred\x07 \x00 \udcfe \u2028 \x85"
    line = MainLogFormatter(with_time=False).format(_record(logging.INFO, message))
    assert line.endswith("ehlo \\x1b[31mred\\x07 \\x00 \\xfe \\u2028 \\x85")
    line.encode("utf-8")  # no lone surrogate left to fail a strict stream


def test_traceback_lines_carry_the_record_prefix() -> None:
    try:
        raise ValueError("reply:\nE x.py:1 SMTP.Conn 192.0.2.1:1: error: AUTH failed")
    except ValueError:
        record = _record(logging.ERROR, "unexpected error")
        record.exc_info = sys.exc_info()
    text = MainLogFormatter(with_time=False).format(record)
    first, *rest = text.split("\n")
    assert first == "E daemon.py:42       unexpected error"
    assert rest[0] == "E daemon.py:42       | Traceback (most recent call last):"
    assert all(line.startswith("E daemon.py:42       | ") for line in rest)
    assert rest[-2:] == [
        "E daemon.py:42       | ValueError: reply:",
        "E daemon.py:42       | E x.py:1 SMTP.Conn 192.0.2.1:1: error: AUTH failed",
    ]


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_logfile_has_timestamps_and_reopens(tmp_path: Path, restore_root: None) -> None:
    path = tmp_path / "main.log"
    mainlog = MainLog.setup(LogOptions(logfile=str(path)))
    try:
        logging.getLogger("chasquid.t").info("first")
        logging.getLogger("chasquid.t").debug("hidden at -v=0")
        path.rename(tmp_path / "main.log.1")
        mainlog.reopen()
        logging.getLogger("chasquid.t").error("second")
    finally:
        mainlog.close()
    old = (tmp_path / "main.log.1").read_text()
    new = path.read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} _ \S*:\d+ +first$", old, re.M)
    assert "hidden" not in old
    assert "second" not in old
    assert re.search(r" E \S*:\d+ +second$", new, re.M)
    assert path.stat().st_mode & 0o777 == 0o640 & ~_umask()


def test_logfile_in_missing_directory_is_an_error(tmp_path: Path, restore_root: None) -> None:
    with pytest.raises(MainLogError, match="no such file or directory"):
        MainLog.setup(LogOptions(logfile=str(tmp_path / "nope" / "main.log")))


def test_debug_shown_with_v1(tmp_path: Path, restore_root: None) -> None:
    path = tmp_path / "main.log"
    mainlog = MainLog.setup(LogOptions(logfile=str(path), verbosity=1))
    try:
        logging.getLogger("chasquid.t").debug("visible")
    finally:
        mainlog.close()
    assert re.search(r" \. \S*:\d+ +visible$", path.read_text(), re.M)


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
