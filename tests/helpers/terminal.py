"""Run a program on a pseudo-terminal and answer its prompts, as a person at a keyboard would."""

from __future__ import annotations

import os
import pty
import select
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: Given the last line shown so far (since the previous answer), what to type
#: (without the newline), or None to wait for more output.
Answerer = Callable[[str], str | None]


def scripted(answers: Sequence[tuple[str, str]]) -> Answerer:
    """Type each answer once its prompt shows, in order."""
    pending = list(answers)

    def answer(last_line: str) -> str | None:
        if pending and pending[0][0] in last_line:
            return pending.pop(0)[1]
        return None

    return answer


def on_terminal(
    argv: Sequence[str],
    answer: Answerer,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
) -> tuple[int, str]:
    """Run argv on a pseudo-terminal until it exits; its exit status and everything it showed.

    An answer is typed only once its prompt is on the last line, so nothing is
    typed while the program may still have echo on.
    """
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs at once
        try:
            if cwd is not None:
                os.chdir(cwd)
            os.execvpe(argv[0], list(argv), dict(env if env is not None else os.environ))
        finally:
            os._exit(127)
    output = b""
    since = 0  # where the output after the last answer starts
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 0.5)[0]:
                continue
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
            last = output[since:].rsplit(b"\n", 1)[-1].decode(errors="replace")
            typed = answer(last)
            if typed is not None:
                os.write(fd, typed.encode() + b"\n")
                since = len(output)
        else:
            os.kill(pid, 9)  # out of time
        # Reap before closing the terminal: closing it first would hang up (SIGHUP) a
        # program that has closed its end but not exited yet.
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace").replace("\r\n", "\n")
