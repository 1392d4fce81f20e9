"""Tests for chasquid.programs.process, the runner of hooks, MDAs and pipes: real programs."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from helpers.programs import shell_script

from chasquid.programs.process import Output, ProgramStartError, run_program


@pytest.fixture(params=["other-dir", "own-dir"])
def cwd(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cwd to pass: another directory (run from a worker thread), or the
    process's own one as the daemon passes it, "." (run from the loop)."""
    if request.param == "own-dir":
        monkeypatch.chdir(tmp_path)
        return Path(".")
    return tmp_path


def test_output_modes(tmp_path: Path, cwd: Path) -> None:
    prog = str(shell_script(tmp_path / "prog", "cat; echo err >&2; exit 3\n"))
    merged = asyncio.run(run_program([prog], stdin=b"in\n", cwd=cwd, timeout=10))
    assert (merged.returncode, merged.output, merged.stderr) == (3, b"in\nerr\n", b"")
    assert merged.reason() == "exit status 3"
    assert merged.error_text() == "exit status 3"
    assert not merged.ok
    separate = asyncio.run(
        run_program([prog], stdin=b"in\n", cwd=cwd, timeout=10, output=Output.SEPARATE)
    )
    assert (separate.stdout, separate.stderr) == (b"in\n", b"err\n")
    discard = asyncio.run(
        run_program([prog], stdin=b"in\n", cwd=cwd, timeout=10, output=Output.DISCARD)
    )
    assert (discard.returncode, discard.stdout, discard.stderr) == (3, b"", b"")


def test_large_input_and_bounded_output(tmp_path: Path, cwd: Path) -> None:
    # More than a pipe buffer each way: neither side may deadlock.
    prog = str(shell_script(tmp_path / "prog", "cat; cat /dev/null\n"))
    data = os.urandom(3_000_000)
    res = asyncio.run(run_program([prog], stdin=data, cwd=cwd, timeout=20, max_output=5000))
    assert res.ok
    assert res.stdout == data[:5000]


def test_program_that_ignores_stdin(tmp_path: Path, cwd: Path) -> None:
    prog = str(shell_script(tmp_path / "prog", "exit 0\n"))
    res = asyncio.run(run_program([prog], stdin=b"x" * 2_000_000, cwd=cwd, timeout=10))
    assert res.ok


def test_timeout_kills_the_group(tmp_path: Path, cwd: Path) -> None:
    pidfile = tmp_path / "child.pid"
    prog = str(shell_script(tmp_path / "prog", f"sleep 30 & echo $! > {pidfile}; wait\n"))
    start = time.monotonic()
    res = asyncio.run(run_program([prog], stdin=None, cwd=cwd, timeout=0.5))
    assert res.timed_out
    assert res.reason() == "signal: killed"
    assert time.monotonic() - start < 5
    assert_dead(int(pidfile.read_text()))


def test_cancelling_the_caller_kills_the_program(tmp_path: Path, cwd: Path) -> None:
    pidfile = tmp_path / "child.pid"
    prog = str(shell_script(tmp_path / "prog", f"sleep 30 & echo $! > {pidfile}; wait\n"))

    async def cancel_soon() -> None:
        task = asyncio.ensure_future(run_program([prog], stdin=None, cwd=cwd, timeout=30))
        async with asyncio.timeout(10):
            while not pidfile.exists() or not pidfile.read_text().strip():
                await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    assert_dead(int(pidfile.read_text()))


def test_env_and_cwd(tmp_path: Path, cwd: Path) -> None:
    prog = str(shell_script(tmp_path / "prog", 'echo "$FOO $(pwd)"\n'))
    res = asyncio.run(run_program([prog], stdin=None, cwd=cwd, timeout=10, env={"FOO": "bar"}))
    assert res.stdout == f"bar {tmp_path}\n".encode()


def test_start_errors(tmp_path: Path, cwd: Path) -> None:
    with pytest.raises(ProgramStartError, match="cannot run"):
        asyncio.run(run_program([str(tmp_path / "nope")], stdin=b"", cwd=cwd, timeout=5))
    not_exec = tmp_path / "plain"
    not_exec.write_text("echo\n")
    with pytest.raises(ProgramStartError, match="Permission denied"):
        asyncio.run(run_program([str(not_exec)], stdin=b"", cwd=cwd, timeout=5))


def assert_dead(pid: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # A zombie still answers kill(0): it is dead once its state says so.
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} is still running")


def test_programs_get_default_sigpipe(tmp_path: Path, cwd: Path) -> None:
    # Python ignores SIGPIPE; a program inheriting that would see EPIPE errors
    # (here from `yes`) instead of quietly ending its side of a pipeline.
    prog = str(shell_script(tmp_path / "prog", "yes | head -n 1\n"))
    res = asyncio.run(run_program([prog], stdin=None, cwd=cwd, timeout=10, output=Output.SEPARATE))
    assert (res.returncode, res.stdout, res.stderr) == (0, b"y\n", b"")


def test_programs_inherit_the_current_environment(
    tmp_path: Path, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prog = str(shell_script(tmp_path / "prog", 'echo "$CHASQUID_TEST_VAR"\n'))
    monkeypatch.setenv("CHASQUID_TEST_VAR", "first ñ")
    assert asyncio.run(run_program([prog], stdin=None, cwd=cwd, timeout=10)).output == (
        "first ñ\n".encode()
    )
    # Changed after earlier runs: programs see the new value.
    monkeypatch.setenv("CHASQUID_TEST_VAR", "second")
    assert asyncio.run(run_program([prog], stdin=None, cwd=cwd, timeout=10)).output == b"second\n"
