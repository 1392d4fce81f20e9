"""Running external programs (hooks, MDAs, pipe aliases): no shell, bounded output, group kill.

One runner for every program the daemon starts. Each run happens in a
worker thread of the loop's default executor, with blocking pipe I/O
(``subprocess.Popen`` and a selector): the event loop only waits for one
future, instead of setting up transports, pipe protocols and a child watcher
per process (measured: that setup was a third of the loop's time when
delivering through an MDA). The GIL is released during fork/exec, poll,
read, write and wait, so the loop keeps serving sessions meanwhile.

Programs given by path that run in the daemon's own directory (MDAs and
hooks in the daemon, which runs in its config dir) skip the thread:
chasquid.programs.loopspawn starts them with posix_spawn and the loop watches their
pipes and exit (the thread's GIL hand-offs cost more CPU than the run).

The program runs in a new session, so its pid is its process group: on
timeout (or when the awaiting task is cancelled) the whole group is killed,
children included.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from chasquid.errors import ChasquidError
from chasquid.msgbody import CHUNK, Readable
from chasquid.programs import loopspawn

#: Bytes of output kept by default (per stream); the rest is read and discarded.
MAX_OUTPUT = 64 * 1024

_CHUNK = 64 * 1024

# After the kill, how long to wait for pipes to close: a grandchild that left
# the process group could hold them open forever.
_REAP_TIMEOUT = 2.0


class ProgramStartError(ChasquidError):
    """The program could not be started (not found, not executable, ...)."""


class ProgramInputError(ChasquidError):
    """The program's streamed input could not be read to its end; the program was killed.

    A temporary failure: the program never saw a cut message as a whole one.
    """


class Output(enum.Enum):
    """What to do with the program's stdout and stderr."""

    #: stdout and stderr kept apart.
    SEPARATE = "separate"
    #: stderr goes to stdout; both are in ``ProgramResult.stdout``.
    MERGED = "merged"
    #: Both go to /dev/null.
    DISCARD = "discard"


@dataclass(frozen=True)
class ProgramResult:
    """How a program ended and what it printed."""

    returncode: int
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """True if the program exited 0 within its time."""
        return self.returncode == 0 and not self.timed_out

    @property
    def output(self) -> bytes:
        """What the program printed (stdout and stderr together with ``Output.MERGED``)."""
        return self.stdout

    def reason(self) -> str:
        """`exit status N` or `signal: <name>` (e.g. `signal: killed`), as chasquid says it."""
        if self.returncode < 0:
            return f"signal: {signal_name(-self.returncode)}"
        return f"exit status {self.returncode}"

    def error_text(self) -> str:
        """A short description of a failure for logs: `timed out`, `exit status 1`, ..."""
        if self.timed_out:
            return "timed out"
        if self.returncode < 0:
            return f"killed by signal {-self.returncode}"
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
    # os.path.join, not pathlib: with config_dir "." the result must keep its
    # "./", or it would be a bare name looked up in PATH.
    return os.path.join(config_dir, name)


@dataclass
class _Run:
    """One program run, shared by the worker thread and the awaiting task."""

    argv: tuple[str, ...]
    stdin: bytes | Readable | None
    cwd: str | None
    env: dict[str, str] | None
    output: Output
    max_output: int
    timeout: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    proc: subprocess.Popen[bytes] | None = None
    abandoned: bool = False

    def kill(self) -> None:
        """Kill the program's whole process group (safe from any thread, any time)."""
        with self.lock:
            self.abandoned = True
            proc = self.proc
        if proc is not None:
            _kill_group(proc)

    def execute(self) -> ProgramResult:
        """Start the program, feed it, collect its output and wait (blocking)."""
        try:
            return self._execute()
        finally:
            if self.stdin is not None and not isinstance(self.stdin, bytes):
                self.stdin.close()

    def _execute(self) -> ProgramResult:
        pipe, devnull = subprocess.PIPE, subprocess.DEVNULL
        out = devnull if self.output is Output.DISCARD else pipe
        err = {Output.SEPARATE: pipe, Output.MERGED: subprocess.STDOUT}.get(self.output, devnull)
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=pipe if self.stdin is not None else devnull,
                stdout=out,
                stderr=err,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        except OSError as e:
            raise ProgramStartError(f"cannot run {self.argv[0]!r}: {e.strerror or e}") from e
        except ValueError as e:
            # A NUL in an argument or in the environment: exec cannot take it.
            raise ProgramStartError(f"cannot run {self.argv[0]!r}: {e}") from e
        with self.lock:
            self.proc = proc
            abandoned = self.abandoned
        if abandoned:
            _kill_group(proc)
        deadline = time.monotonic() + self.timeout
        timed_out = False
        try:
            kept = _communicate(proc, self.stdin, self.max_output, deadline)
        except _InputError as e:
            _kill_group(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_REAP_TIMEOUT)
            raise ProgramInputError(f"reading the input of {self.argv[0]!r}: {e.cause}") from e
        except TimeoutError:
            timed_out = True
            _kill_group(proc)
            try:
                kept = _communicate(proc, None, self.max_output, time.monotonic() + _REAP_TIMEOUT)
            except TimeoutError:
                kept = {}
        finally:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        try:
            rc = proc.wait(_REAP_TIMEOUT if timed_out else max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            # Output closed but the process lingers (it closed its stdout early).
            timed_out = True
            _kill_group(proc)
            try:
                rc = proc.wait(_REAP_TIMEOUT)
            except subprocess.TimeoutExpired:
                rc = -int(signal.SIGKILL)
        return ProgramResult(
            rc, bytes(kept.get("stdout", b"")), bytes(kept.get("stderr", b"")), timed_out
        )


class _InputError(Exception):
    """Reading a streamed stdin failed; ``cause`` says why."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _communicate(
    proc: subprocess.Popen[bytes], data: bytes | Readable | None, limit: int, deadline: float
) -> dict[str, bytearray]:
    """Write data to stdin and read stdout/stderr until both close; TimeoutError at deadline.

    A ``Readable`` is read a piece at a time as the program takes its input;
    a failure to read it raises _InputError.
    """
    kept: dict[str, bytearray] = {}
    source: Readable | None = None
    if isinstance(data, bytes) or data is None:
        first = data
    else:
        source = data
        first = _read_source(source)
        if len(first) < CHUNK:
            source = None  # the end (see Readable)
    with selectors.DefaultSelector() as sel:
        if proc.stdin is not None and not proc.stdin.closed:
            if first:
                os.set_blocking(proc.stdin.fileno(), False)
                sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
            else:
                proc.stdin.close()
        for name in ("stdout", "stderr"):
            stream = getattr(proc, name)
            if stream is not None and not stream.closed:
                kept[name] = bytearray()
                sel.register(stream.fileno(), selectors.EVENT_READ, name)
        view = memoryview(first or b"")
        written = 0
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            for key, _ in sel.select(remaining):
                fd = int(key.fd)
                if key.data == "stdin":
                    try:
                        written += os.write(fd, view[written : written + _CHUNK])
                    except BlockingIOError:
                        continue
                    except (BrokenPipeError, ConnectionResetError):
                        # A program may exit without reading all of its input.
                        written = len(view)
                        source = None
                    if written >= len(view) and source is not None:
                        view, written = memoryview(_read_source(source)), 0
                        if len(view) < CHUNK:
                            source = None  # the end (see Readable)
                    if written >= len(view):
                        sel.unregister(fd)
                        assert proc.stdin is not None
                        with contextlib.suppress(OSError):
                            proc.stdin.close()
                    continue
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    sel.unregister(fd)
                    continue
                buf = kept[str(key.data)]
                room = limit - len(buf)
                if room > 0:
                    buf += chunk[:room]
    return kept


def _read_source(source: Readable) -> bytes:
    try:
        return source.read(CHUNK)
    except OSError as e:
        raise _InputError(e) from e


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # start_new_session makes the pid the group id: this also kills children.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def run_program(
    argv: Sequence[str],
    *,
    stdin: bytes | Readable | None,
    cwd: str | os.PathLike[str] | None,
    timeout: float,
    env: Mapping[str, str] | None = None,
    output: Output = Output.MERGED,
    max_output: int = MAX_OUTPUT,
) -> ProgramResult:
    """Run argv (argv[0] a path) with stdin (None: /dev/null) in cwd; kill its group on timeout.

    A ``Readable`` stdin (a message body) is streamed a piece at a time, so
    memory does not grow with its size, and closed at the end (the run owns
    it). env None means the inherited environment. At most max_output bytes
    of each captured stream are kept. Raises ProgramStartError if the program
    cannot be started, ProgramInputError if its stdin cannot be read to the
    end. Cancelling the caller kills the program.
    """
    program = str(argv[0])
    workdir = str(cwd) if cwd is not None else None
    if loopspawn.usable(program, workdir):
        try:
            done = await loopspawn.run(
                [str(a) for a in argv],
                stdin=stdin,
                env=env,
                output=output.value,
                max_output=max_output,
                timeout=timeout,
                reap_timeout=_REAP_TIMEOUT,
            )
        except OSError as e:
            raise ProgramStartError(f"cannot run {program!r}: {e.strerror or e}") from e
        except ValueError as e:
            raise ProgramStartError(f"cannot run {program!r}: {e}") from e
        if done.input_error is not None:
            raise ProgramInputError(f"reading the input of {program!r}: {done.input_error}")
        return ProgramResult(done.status, done.stdout, done.stderr, done.timed_out)
    run = _Run(
        argv=tuple(str(a) for a in argv),
        stdin=stdin,
        cwd=str(cwd) if cwd is not None else None,
        env=dict(env) if env is not None else None,
        output=output,
        max_output=max_output,
        timeout=timeout,
    )
    # The default executor: the daemon sizes it for programs that run for seconds.
    work = asyncio.get_running_loop().run_in_executor(None, run.execute)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        run.kill()
        raise
