"""The chasquid command line: Go-style flags, --version, --help."""

from __future__ import annotations

import re
import subprocess
import sys

import click
import pytest

from chasquid.daemon.cli import go_style_argv


def _chasquid(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from chasquid.daemon.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_go_style_rewrites() -> None:
    assert go_style_argv(["-v=2", "-logtime=false", "-alsologtostderr=1", "-config_dir=x"]) == [
        "--v=2",
        "--alsologtostderr",
        "-config_dir=x",
    ]
    # The last spelling of a boolean wins, as with Go's flag package.
    assert go_style_argv(["-logtime", "--logtime", "-logtime=false", "-v=1"]) == ["--v=1"]
    assert go_style_argv(["-logtime=false", "-logtime"]) == ["-logtime"]
    assert go_style_argv(["--", "-v=2"]) == ["--", "-v=2"]
    assert go_style_argv(["-C=/etc/x"]) == ["-C", "/etc/x"]
    with pytest.raises(click.UsageError, match="invalid boolean"):
        go_style_argv(["-logtime=maybe"])


@pytest.mark.parametrize("flag", ["-version", "--version", "-version=true"])
def test_version(flag: str) -> None:
    proc = _chasquid(flag, "-config_dir=/nonexistent")
    assert proc.returncode == 0
    assert re.fullmatch(
        r"chasquid \S+ \(source date: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} \S+\)\n",
        proc.stdout,
    )


@pytest.mark.parametrize("flag", ["-h", "-help", "--help"])
def test_help_lists_every_flag(flag: str) -> None:
    proc = _chasquid(flag)
    assert proc.returncode == 0
    for name in (
        "-config_dir",
        "--config-dir",
        "-config_overrides",
        "-version",
        "-v",
        "-logfile",
        "-logtime",
        "-logtosyslog",
        "-alsologtostderr",
        "-testing__reload_every",
        "-testing__max_received_headers",
    ):
        assert name in proc.stdout


def test_help_shows_only_real_spellings() -> None:
    text = _chasquid("--help").stdout
    assert "IGNORED" not in text
    assert "--no-" not in text and "-noversion" not in text


@pytest.mark.parametrize("args", [["foo"], ["-C=/nonexistent", "run", "now"]])
def test_unknown_arguments_are_an_error(args: list[str]) -> None:
    proc = _chasquid(*args)
    assert proc.returncode == 2
    assert "Got unexpected extra argument" in proc.stderr
    assert proc.stdout == ""


def test_unknown_flag_exits_2() -> None:
    proc = _chasquid("--no-such-flag")
    assert proc.returncode == 2
    assert "no-such-flag" in proc.stderr


def test_bad_duration_exits_2() -> None:
    proc = _chasquid("--testing__reload_every=10", "-config_dir=/nonexistent")
    assert proc.returncode == 2
    assert "missing unit" in proc.stderr


@pytest.mark.parametrize("value", ["0s", "-1s"])
def test_reload_interval_must_be_positive(value: str) -> None:
    proc = _chasquid(f"--testing__reload_every={value}", "-config_dir=/nonexistent")
    assert proc.returncode == 2
    assert "must be greater than 0" in proc.stderr
