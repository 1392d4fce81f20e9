"""Running a program from the event loop itself: posix_spawn, pipes and a pidfd.

chasquid.programs.process runs programs in worker threads; that costs little loop time
but a lot of CPU when many messages go to an MDA: every blocking call of the
thread (a dozen per run) hands the GIL back and forth with the loop (measured:
over 200 futex calls per delivery). Here the program is started with
posix_spawn (vfork and exec in C) and its pipes and exit are watched by the
loop, so no thread is involved.

posix_spawn cannot change directory, so this serves only programs that run in
the daemon's own directory (its config dir) and are given by path; the caller
(chasquid.programs.process.run_program) decides. Every descriptor the daemon opens is
close-on-exec (PEP 446; sdactivation clears the flag's opposite), so the
program gets only its stdin, stdout and stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from asyncio import CancelledError
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chasquid.msgbody import CHUNK, Readable
from chasquid.programs import cpuplacement

_CHUNK = 64 * 1024

_RESTORED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)

#: Output modes, as chasquid.programs.process.Output's values.
SEPARATE, MERGED, DISCARD = "separate", "merged", "discard"


@dataclass(frozen=True)
class Finished:
    """How the program ended (negative status: killed by that signal) and what it printed."""

    status: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    #: Why a streamed stdin could not be read to its end (the program was killed).
    input_error: BaseException | None = None


def _inherited_environment() -> Mapping[bytes, bytes | str] | Mapping[str, bytes | str]:
    """The daemon's environment, for posix_spawn.

    os.environ's own dict of encoded bytes, which it keeps current: handing
    os.environ itself makes posix_spawn decode and re-encode every variable
    in Python on each run (measured: 6% of the event loop's time when
    delivering through an MDA).
    """
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        return data
    return os.environ


def usable(program: str, cwd: str | None) -> bool:
    """Whether run() can start program: a path, no change of directory, a Linux pidfd."""
    if "/" not in program or not _supported():
        return False
    return cwd is None or cwd in (".", "") or os.path.abspath(cwd) == os.getcwd()


@functools.cache
def _supported() -> bool:
    # pidfd_open needs Linux 5.3; probing with our own pid costs one call, once.
    if not hasattr(os, "posix_spawn") or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


class _Child:
    """One running program: our ends of its pipes, its pidfd, what it printed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.loop = loop
        self.limit = limit
        self.pid = 0
        self.pidfd = -1
        self.fds: dict[str, int] = {}
        self.kept: dict[str, bytearray] = {}
        self.data = memoryview(b"")
        self.written = 0
        self.source: Readable | None = None
        self._reading = False
        self.input_error: BaseException | None = None
        self.status: int | None = None
        self.timed_out = False
        # Resolved once the pipes are closed and the program reaped, or when
        # a killed program's leftovers are given up on.
        self.finished: asyncio.Future[None] = loop.create_future()
        self._timer: asyncio.TimerHandle | None = None

    # --- pipes

    def start_io(self, data: bytes | Readable | None) -> None:
        stdin = self.fds.get("stdin")
        if stdin is not None:
            if isinstance(data, bytes | type(None)):
                if data:
                    self.data = memoryview(data)
                    os.set_blocking(stdin, False)
                    # A message usually fits in the pipe at once: no watch needed then.
                    self._writable(stdin)
                    if "stdin" in self.fds:
                        self.loop.add_writer(stdin, self._writable, stdin)
                else:
                    self._close("stdin")
            else:
                self.source = data
                os.set_blocking(stdin, False)
                self._refill()
        for name in ("stdout", "stderr"):
            fd = self.fds.get(name)
            if fd is not None:
                self.kept[name] = bytearray()
                os.set_blocking(fd, False)
                self.loop.add_reader(fd, self._readable, name, fd)
        self._check_streams()

    def _writable(self, fd: int) -> None:
        try:
            self.written += os.write(fd, self.data[self.written : self.written + _CHUNK])
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):
            # A program may exit without reading all of its input.
            self.written = len(self.data)
            self._drop_source()
        if self.written >= len(self.data):
            if self.source is not None:
                self.loop.remove_writer(fd)
                self._refill()
                return
            self._close("stdin")
            self._check_streams()

    # A streamed stdin is read in a worker thread, one piece at a time, while
    # the loop writes the previous piece: the loop never waits for the disk.

    def _refill(self) -> None:
        assert self.source is not None
        self._reading = True
        read = self.loop.run_in_executor(None, self.source.read, CHUNK)
        read.add_done_callback(self._refilled)

    def _refilled(self, read: asyncio.Future[bytes]) -> None:
        self._reading = False
        fd = self.fds.get("stdin")
        if fd is None or self.source is None:
            self._drop_source()
            return
        error = CancelledError("reading stopped") if read.cancelled() else read.exception()
        if error is not None:
            # The program must not take a cut message for a whole one.
            self.input_error = error
            self._drop_source()
            self.kill()
            self._close("stdin")
            self._check_streams()
            return
        data = read.result()
        if len(data) < CHUNK:
            # The end (see Readable): what is left is written, then stdin closes.
            self._drop_source()
        if not data:
            self._close("stdin")
            self._check_streams()
            return
        self.data, self.written = memoryview(data), 0
        self._writable(fd)
        if self.fds.get("stdin") == fd and self.written < len(self.data):
            self.loop.add_writer(fd, self._writable, fd)

    def _drop_source(self) -> None:
        """Close the stdin source, unless a worker is reading it (then when it is done)."""
        if self.source is not None and not self._reading:
            self.source.close()
            self.source = None

    def _readable(self, name: str, fd: int) -> None:
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            self._close(name)
            self._check_streams()
            return
        buf = self.kept[name]
        room = self.limit - len(buf)
        if room > 0:
            buf += chunk[:room]

    def _close(self, name: str) -> None:
        fd = self.fds.pop(name, None)
        if fd is None:
            return
        if name == "stdin":
            self.loop.remove_writer(fd)
        else:
            self.loop.remove_reader(fd)
        os.close(fd)

    def _check_streams(self) -> None:
        if not self.fds and self.status is not None:
            self._finish()

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.finished.done():
            self.finished.set_result(None)

    def close_streams(self) -> None:
        """Stop watching and close every pipe end still open."""
        for name in list(self.fds):
            self._close(name)
        self._drop_source()
        self._check_streams()

    # --- exit

    def watch_exit(self) -> None:
        self.loop.add_reader(self.pidfd, self._exited)

    def _exited(self) -> None:
        try:
            pid, raw = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, raw = self.pid, 0
        if pid == 0:
            return
        self.loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = -1
        self.status = os.waitstatus_to_exitcode(raw)
        self._check_streams()

    # --- time limits

    def start_timer(self, timeout: float, reap_timeout: float) -> None:
        self._timer = self.loop.call_later(timeout, self._expired, reap_timeout)

    def _expired(self, reap_timeout: float) -> None:
        # Output still open, or output closed but the process lingers.
        self.timed_out = True
        self.kill()
        # A grandchild that left the group may hold the pipes open forever,
        # and a process stuck in the kernel may not die at once: give up on
        # both after a while (the exit watcher still reaps it when it goes).
        self._timer = self.loop.call_later(reap_timeout, self._give_up)

    def stop_timer(self) -> None:
        """Cancel the pending time limit (the caller gave up waiting)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _give_up(self) -> None:
        self._timer = None
        self.close_streams()
        self._finish()

    def kill(self) -> None:
        """SIGKILL the program's process group (setsid made its pid the group id)."""
        if self.status is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def _pipes(
    child: _Child, with_stdin: bool, output: str
) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Make the pipes; return posix_spawn's file actions and the child's ends to close."""
    actions: list[tuple[int, int, int]] = []
    theirs: list[int] = []

    def pipe(name: str, target: int, ours_reads: bool) -> int:
        r, w = os.pipe2(os.O_CLOEXEC)
        ours, their = (r, w) if ours_reads else (w, r)
        child.fds[name] = ours
        theirs.append(their)
        actions.append((os.POSIX_SPAWN_DUP2, their, target))
        return their

    def devnull(target: int) -> None:
        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        theirs.append(fd)
        actions.append((os.POSIX_SPAWN_DUP2, fd, target))

    try:
        if with_stdin:
            pipe("stdin", 0, ours_reads=False)
        else:
            devnull(0)
        if output == DISCARD:
            devnull(1)
            devnull(2)
        else:
            out = pipe("stdout", 1, ours_reads=True)
            if output == MERGED:
                actions.append((os.POSIX_SPAWN_DUP2, out, 2))
            else:
                pipe("stderr", 2, ours_reads=True)
    except BaseException:
        for fd in [*theirs, *child.fds.values()]:
            os.close(fd)
        child.fds.clear()
        raise
    return actions, theirs


async def run(
    argv: Sequence[str],
    *,
    stdin: bytes | Readable | None,
    env: Mapping[str, str] | None,
    output: str,
    max_output: int,
    timeout: float,
    reap_timeout: float,
) -> Finished:
    """Run argv[0] (a path) in the current directory, as chasquid.programs.process.run_program does.

    A ``Readable`` stdin is read piece by piece in worker threads and closed
    at the end; if reading it fails the program is killed and the error is
    in ``Finished.input_error``. Raises OSError if the program cannot be started.
    """
    loop = asyncio.get_running_loop()
    child = _Child(loop, max_output)
    try:
        actions, theirs = _pipes(child, stdin is not None, output)
    except BaseException:
        _close_source(stdin)
        raise
    pinned = cpuplacement.pin()
    try:
        # This blocks the loop until the child has exec'd (vfork), and
        # os.posix_spawn keeps the GIL meanwhile, so a worker thread would not
        # help; cpuplacement has the child run at once on the loop's own CPU.
        # bench/README.md has the measurements and the alternatives tried.
        child.pid = os.posix_spawn(
            argv[0],
            list(argv),
            _inherited_environment() if env is None else env,
            file_actions=actions,
            setsid=True,
            # Python ignores SIGPIPE (and Popen restores these two for its children).
            setsigdef=_RESTORED_SIGNALS,
        )
    except BaseException:
        for fd in child.fds.values():
            os.close(fd)
        _close_source(stdin)
        raise
    finally:
        cpuplacement.release(pinned, child.pid)
        for fd in theirs:
            os.close(fd)
    try:
        child.pidfd = os.pidfd_open(child.pid)
    except OSError:
        # Out of descriptors: stop the program and report it as not started.
        child.kill()
        await asyncio.to_thread(os.waitpid, child.pid, 0)
        child.close_streams()
        _close_source(stdin)
        raise
    child.watch_exit()
    child.start_io(stdin)
    child.start_timer(timeout, reap_timeout)
    try:
        await child.finished
    except asyncio.CancelledError:
        child.kill()
        child.close_streams()
        child.stop_timer()
        # The exit watcher stays registered and reaps the program when it dies.
        raise
    status = child.status if child.status is not None else -int(signal.SIGKILL)
    return Finished(
        status,
        bytes(child.kept.get("stdout", b"")),
        bytes(child.kept.get("stderr", b"")),
        child.timed_out,
        child.input_error,
    )


def _close_source(stdin: bytes | Readable | None) -> None:
    if stdin is not None and not isinstance(stdin, bytes):
        stdin.close()
