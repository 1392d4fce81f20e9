"""Programs started from the loop run off the loop's CPU; the loop's own mask is left as it was."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.programs import executable

from chasquid.programs.process import ProgramStartError, run_program

# The shell waits for its input, which the daemon writes only after the spawn
# has returned, then reports the mask a process it starts inherits.
REPORT_MASK = "#!/bin/sh\ncat >/dev/null\ngrep Cpus_allowed_list /proc/self/status\n"


def parse_cpu_list(text: str) -> set[int]:
    """'0-2,5' -> {0, 1, 2, 5}, as /proc prints CPU lists."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


@pytest.fixture
def in_own_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run programs as the daemon does: by path, from its own directory (the loop spawns them)."""
    monkeypatch.chdir(tmp_path)
    return executable(tmp_path / "report-mask", REPORT_MASK)


@pytest.fixture
def thread_mask() -> Iterator[set[int]]:
    """The test thread's CPU mask, put back afterwards whatever a test set."""
    before = os.sched_getaffinity(0)
    yield set(before)
    os.sched_setaffinity(0, before)


def child_mask(prog: Path) -> set[int]:
    res = asyncio.run(run_program([str(prog)], stdin=b"go", cwd=Path("."), timeout=10))
    assert res.ok, res.output
    label, _, value = res.output.decode().partition(":")
    assert label == "Cpus_allowed_list"
    return parse_cpu_list(value.strip())


def test_program_runs_off_the_loops_cpu(in_own_dir: Path, thread_mask: set[int]) -> None:
    mask = child_mask(in_own_dir)
    if len(thread_mask) >= 2:
        # Every allowed CPU but the one the loop was on when it spawned.
        assert mask < thread_mask
        assert len(mask) == len(thread_mask) - 1
    else:
        assert mask == thread_mask
    assert os.sched_getaffinity(0) == thread_mask


def test_a_narrowed_mask_is_respected(in_own_dir: Path, thread_mask: set[int]) -> None:
    # As under taskset or systemd's CPUAffinity= with one CPU: nothing to move to.
    only = {min(thread_mask)}
    os.sched_setaffinity(0, only)
    assert child_mask(in_own_dir) == only
    assert os.sched_getaffinity(0) == only


def test_mask_restored_when_the_program_cannot_start(
    in_own_dir: Path, thread_mask: set[int]
) -> None:
    with pytest.raises(ProgramStartError):
        asyncio.run(run_program(["./missing"], stdin=None, cwd=Path("."), timeout=10))
    assert os.sched_getaffinity(0) == thread_mask
