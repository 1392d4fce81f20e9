"""Running a local delivery program: no shell, bounded output, group kill on timeout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chasquid.errors import ChasquidError

#: Bytes of output kept from a delivery program; the rest is read and discarded.
MAX_OUTPUT = 64 * 1024

_CHUNK = 64 * 1024

# After the kill, how long to wait for pipes to close; a grandchild that left
# the process group could hold them open forever.
_REAP_TIMEOUT = 2.0


class ProgramStartError(ChasquidError):
    """The program could not be started (not found, not executable, ...)."""


@dataclass(frozen=True)
class ProgramResult:
    """How a delivery program ended and what it printed (stdout and stderr together)."""

    returncode: int
    output: bytes
    timed_out: bool = False

    def reason(self) -> str:
        """`exit status N` or `signal: <name>` (e.g. `signal: killed`)."""
        if self.returncode < 0:
            return f"signal: {signal_name(-self.returncode)}"
        return f"exit status {self.returncode}"


def signal_name(signum: int) -> str:
    """The lower-case description of a signal, e.g. `killed`, `terminated`."""
    try:
        text = signal.strsignal(signum)
    except ValueError:
        text = None
    return text.lower() if text else f"signal {signum}"


def resolve_program(name: str, config_dir: str | os.PathLike[str]) -> str:
    """Where to run name from: PATH for a bare name, else relative to config_dir."""
    if not name:
        raise ProgramStartError("empty program name")
    if "/" not in name:
        found = shutil.which(name)
        if found is None:
            raise ProgramStartError(f"{name!r}: executable file not found in $PATH")
        return found
    return str(Path(config_dir) / name)


async def _read_bounded(stream: asyncio.StreamReader | None, limit: int) -> bytes:
    if stream is None:
        return b""
    kept = bytearray()
    while chunk := await stream.read(_CHUNK):
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]
    return bytes(kept)


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    if proc.stdin is None:
        return
    try:
        proc.stdin.write(data)
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        # A program may exit without reading all of its input.
        pass
    finally:
        proc.stdin.close()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # start_new_session makes the pid the group id: this also kills children.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def run_program(
    argv: Sequence[str],
    *,
    stdin: bytes,
    cwd: str | os.PathLike[str],
    timeout: float,
    capture: bool = True,
    max_output: int = MAX_OUTPUT,
) -> ProgramResult:
    """Run argv (argv[0] a path) with stdin, in cwd, killing its process group on timeout.

    With capture, stdout and stderr are kept together (up to max_output
    bytes); without, both are discarded. Raises ProgramStartError if the
    program cannot be started.
    """
    out = asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL
    err = asyncio.subprocess.STDOUT if capture else asyncio.subprocess.DEVNULL
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=out,
            stderr=err,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as e:
        raise ProgramStartError(f"cannot run {argv[0]!r}: {e.strerror or e}") from e

    out_task = asyncio.ensure_future(_read_bounded(proc.stdout, max_output))
    feed_task = asyncio.ensure_future(_feed(proc, stdin))
    everything = asyncio.gather(out_task, feed_task, proc.wait())
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(everything), timeout)
    except TimeoutError:
        timed_out = True
        _kill_group(proc)
        try:
            await asyncio.wait_for(asyncio.shield(everything), _REAP_TIMEOUT)
        except TimeoutError:
            out_task.cancel()
            feed_task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), _REAP_TIMEOUT)
    except BaseException:
        _kill_group(proc)
        everything.cancel()
        raise
    output = out_task.result() if out_task.done() and not out_task.cancelled() else b""
    rc = proc.returncode if proc.returncode is not None else -int(signal.SIGKILL)
    return ProgramResult(rc, output, timed_out)
