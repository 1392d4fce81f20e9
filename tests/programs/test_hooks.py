"""Tests for chasquid.programs.hooks: real executables written to tmp_path."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from helpers.programs import shell_script

from chasquid.programs.hooks import HookError, HookMissingError, run_hook


def test_success_args_stdin_env_cwd(tmp_path: Path) -> None:
    h = shell_script(tmp_path / "hook", 'echo "arg=$1 env=$FOO pwd=$(pwd)"; cat; echo err >&2\n')
    res = asyncio.run(
        run_hook(
            h,
            ["x y"],
            stdin=b"input",
            env={"FOO": "bar", "PATH": os.environ["PATH"]},
            cwd=tmp_path,
            timeout=10,
        )
    )
    assert res.ok
    assert res.returncode == 0
    assert res.stdout == f"arg=x y env=bar pwd={tmp_path}\ninput".encode()
    assert res.stderr == b"err\n"
    assert not res.timed_out


def test_exit_status(tmp_path: Path) -> None:
    h = shell_script(tmp_path / "hook", "echo partial; exit 1\n")
    res = asyncio.run(run_hook(h, [], timeout=10))
    assert not res.ok
    assert res.returncode == 1
    assert res.error_text() == "exit status 1"
    assert res.stdout == b"partial\n"


def test_timeout_kills_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child-survived"
    # The background child would create the marker if it were not killed with the group.
    h = shell_script(tmp_path / "hook", f"(sleep 2; touch {marker}) &\nsleep 30\n")
    start = time.monotonic()
    res = asyncio.run(run_hook(h, [], timeout=0.5))
    assert time.monotonic() - start < 5
    assert res.timed_out
    assert not res.ok
    assert res.error_text() == "timed out"
    time.sleep(2.5)
    assert not marker.exists()


def test_output_is_bounded(tmp_path: Path) -> None:
    h = shell_script(tmp_path / "hook", "head -c 300000 /dev/zero; echo done >&2\n")
    res = asyncio.run(run_hook(h, [], timeout=10, max_output=1000))
    assert res.ok
    assert res.stdout == b"\0" * 1000
    assert res.stderr == b"done\n"


def test_missing_hook_is_distinct(tmp_path: Path) -> None:
    with pytest.raises(HookMissingError):
        asyncio.run(run_hook(tmp_path / "nope", [], timeout=1))


def test_not_executable_is_failure(tmp_path: Path) -> None:
    h = shell_script(tmp_path / "hook", "exit 0\n", 0o644)
    with pytest.raises(HookError) as exc:
        asyncio.run(run_hook(h, [], timeout=1))
    assert not isinstance(exc.value, HookMissingError)
    assert "not an executable" in str(exc.value)


def test_hook_ignoring_stdin(tmp_path: Path) -> None:
    h = shell_script(tmp_path / "hook", "exit 0\n")
    res = asyncio.run(run_hook(h, [], stdin=b"x" * 2_000_000, timeout=10))
    assert res.ok


def test_relative_path_is_found_from_the_callers_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf" / "hooks").mkdir(parents=True)
    shell_script(tmp_path / "conf" / "hooks" / "hook", "pwd\n")
    monkeypatch.chdir(tmp_path)
    res = asyncio.run(run_hook(Path("conf/hooks/hook"), [], cwd=Path("conf"), timeout=10))
    assert res.ok, res.error_text()
    assert res.stdout == f"{tmp_path / 'conf'}\n".encode()
