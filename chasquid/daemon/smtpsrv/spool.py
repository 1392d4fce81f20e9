"""Where a message goes while DATA is read: memory for a small one, a file for a large one.

Up to MEMORY_LIMIT bytes stay in memory; past that everything goes to a
file ``.spool-<id>`` in the queue directory (the same file system, so the
queue copies it into the item's file in the kernel). Writes to the file run
in a worker thread. The file is the spool's alone: the session deletes it
once the message is queued or refused, and the queue deletes any left by a
crash when it loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path

from chasquid.daemon.queue.ids import new_id
from chasquid.daemon.queue.store import SPOOL_PREFIX
from chasquid.msgbody import Body, FileRange

#: A message up to this size is kept in memory while it is received.
MEMORY_LIMIT = 256 * 1024


class Spool:
    """One message being received; ``write`` pieces in order, then ``body``.

    ``discard`` may come at any time, even while a worker thread is writing
    (the session was cancelled): the file is then closed and deleted by that
    thread when it is done, never under its feet.
    """

    def __init__(self, directory: Path, memory_limit: int = MEMORY_LIMIT) -> None:
        self.directory = directory
        self.memory_limit = memory_limit
        self.size = 0
        self.path: Path | None = None
        self._memory: list[bytes] = []
        self._fd = -1
        self._lock = threading.Lock()
        self._busy = False
        self._discarded = False

    async def write(self, data: bytes) -> None:
        """Append data (raises OSError if the spool file cannot be written)."""
        if not data or self._discarded:
            return
        self.size += len(data)
        if self.path is None and self.size <= self.memory_limit:
            self._memory.append(data)
            return
        pending, self._memory = [*self._memory, data], []
        with self._lock:
            self._busy = True
        await asyncio.to_thread(self._write_in_thread, pending)

    def _write_in_thread(self, pending: list[bytes]) -> None:
        try:
            if self.path is None and not self._discarded:
                path = self.directory / f"{SPOOL_PREFIX}{new_id()}"
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                self._fd = os.open(path, flags, 0o600)
                self.path = path
            for data in pending:
                if self._discarded:
                    break
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
        finally:
            with self._lock:
                self._busy = False
                if self._discarded:
                    self._release()

    def body(self) -> Body:
        """The message received (call once writing is done)."""
        self._close()
        if self.path is None:
            return Body.of(b"".join(self._memory))
        return Body((FileRange(str(self.path), 0, self.size),))

    def discard(self) -> None:
        """Forget the message and delete its file, now or when its writer thread is done."""
        with self._lock:
            self._discarded = True
            self._memory = []
            if not self._busy:
                self._release()

    def _release(self) -> None:
        self._close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
