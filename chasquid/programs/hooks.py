"""Running hook programs (post-data, alias-resolve) through the shared program runner."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from chasquid.errors import ChasquidError
from chasquid.msgbody import Readable
from chasquid.programs.process import Output, ProgramResult, ProgramStartError, run_program

#: Bytes of stdout and of stderr kept from a hook; the rest is read and discarded.
MAX_OUTPUT = 1024 * 1024

#: What a finished (or killed) hook produced: ``ok``, ``stdout``, ``stderr``, ``error_text()``.
HookResult = ProgramResult


class HookError(ChasquidError):
    """A hook could not be run at all (not executable, exec failure)."""


class HookMissingError(HookError):
    """The hook file does not exist: callers skip the hook silently."""


async def run_hook(
    path: str | os.PathLike[str],
    args: Sequence[str] = (),
    *,
    stdin: bytes | Readable | None = None,
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
    # One stat on the event loop per call: hooks run for every RCPT and DATA.
    try:
        st = os.stat(hook)
    except FileNotFoundError:
        raise HookMissingError(f"hook {str(hook)!r} does not exist") from None
    except OSError as e:
        raise HookError(f"hook {str(hook)!r}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        raise HookError(f"hook {str(hook)!r} is not an executable file")
    try:
        # Absolute, because exec resolves a relative path from cwd, not from where
        # it was checked (chasquid-util -C conf runs hooks in conf/).
        return await run_program(
            [os.path.abspath(hook), *args],
            stdin=stdin,
            cwd=cwd,
            timeout=timeout,
            env=env,
            output=Output.SEPARATE,
            max_output=max_output,
        )
    except ProgramStartError as e:
        raise HookError(f"hook {str(hook)!r}: {e}") from e
