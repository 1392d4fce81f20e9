"""Running hook programs: no shell, bounded output, a timeout that kills the whole group."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chasquid.errors import ChasquidError

#: Bytes of stdout and of stderr kept from a hook; the rest is read and discarded.
MAX_OUTPUT = 1024 * 1024

_CHUNK = 64 * 1024


class HookError(ChasquidError):
    """A hook could not be run at all (not executable, exec failure)."""


class HookMissingError(HookError):
    """The hook file does not exist: callers skip the hook silently."""


@dataclass(frozen=True)
class HookResult:
    """What a finished (or killed) hook produced."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """True if the hook exited 0 within its time."""
        return self.returncode == 0 and not self.timed_out

    def error_text(self) -> str:
        """A short description of the failure, e.g. `exit status 1`."""
        if self.timed_out:
            return "timed out"
        if self.returncode < 0:
            return f"killed by signal {-self.returncode}"
        return f"exit status {self.returncode}"


async def _read_bounded(stream: asyncio.StreamReader | None, limit: int) -> bytes:
    if stream is None:
        return b""
    kept = bytearray()
    while True:
        chunk = await stream.read(_CHUNK)
        if not chunk:
            return bytes(kept)
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]


async def _feed(proc: asyncio.subprocess.Process, data: bytes | None) -> None:
    if proc.stdin is None:
        return
    try:
        if data:
            proc.stdin.write(data)
            await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        # The hook need not read all its input.
        pass
    finally:
        proc.stdin.close()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # The hook runs in its own session, so its pid is also its process group id;
    # killing the group also takes out any children it spawned.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def run_hook(
    path: str | os.PathLike[str],
    args: Sequence[str] = (),
    *,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float,
    max_output: int = MAX_OUTPUT,
) -> HookResult:
    """Run the program at path with args and return its exit status and output.

    Raises HookMissingError if path does not exist and HookError if it cannot be
    executed. On timeout the hook's whole process group is killed and the
    result has timed_out set. env None means the inherited environment.
    """
    hook = Path(path)
    if not hook.exists():
        raise HookMissingError(f"hook {str(hook)!r} does not exist")
    if not hook.is_file() or not os.access(hook, os.X_OK):
        raise HookError(f"hook {str(hook)!r} is not an executable file")
    try:
        proc = await asyncio.create_subprocess_exec(
            str(hook),
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as e:
        raise HookError(f"running hook {str(hook)!r}: {e.strerror or e}") from e

    out_task = asyncio.ensure_future(_read_bounded(proc.stdout, max_output))
    err_task = asyncio.ensure_future(_read_bounded(proc.stderr, max_output))
    feed_task = asyncio.ensure_future(_feed(proc, stdin))
    everything = asyncio.gather(out_task, err_task, feed_task, proc.wait())
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(everything), timeout)
    except TimeoutError:
        timed_out = True
        _kill_group(proc)
        try:
            # Pipes close once the group is dead; a grandchild that escaped the
            # group could keep them open, so bound this wait too.
            await asyncio.wait_for(asyncio.shield(everything), 2.0)
        except TimeoutError:
            for t in (out_task, err_task, feed_task):
                t.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 2.0)
    except BaseException:
        _kill_group(proc)
        everything.cancel()
        raise

    def done(t: asyncio.Future[bytes]) -> bytes:
        return t.result() if t.done() and not t.cancelled() else b""

    rc = proc.returncode if proc.returncode is not None else -int(signal.SIGKILL)
    return HookResult(rc, done(out_task), done(err_task), timed_out)
