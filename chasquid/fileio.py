"""Durable file writes: nothing half-written is ever visible under the final name."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from chasquid.msgbody import FileRange

# copy_file_range cannot do these (another file system, an old kernel, ...):
# the bytes are then copied through a buffer.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})
_COPY_BUFFER = 1024 * 1024


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry change (create, rename, unlink) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write data to path so that a crash leaves either the old file or the new one.

    The data goes to a temporary file in the same directory (name starting
    with a dot), which is fsynced, renamed over path, and then the directory
    is fsynced so the rename itself survives a crash. With owner (uid, gid),
    the file has that owner from the moment it appears, when the writer may
    give files away (root); otherwise it keeps the writer's.
    """
    write_synced_and_rename(path, (data,), mode, owner)
    fsync_dir(Path(path).parent)


def create_new(
    path: str | os.PathLike[str],
    data: bytes,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write a new file at path, complete or not at all; FileExistsError if path exists.

    Like atomic_write, but the temporary file is hard-linked to its name,
    which never replaces anything that is there (even if it appeared meanwhile).
    """
    target = Path(path)
    tmp = _synced_temp(target, (data,), mode, owner)
    try:
        os.link(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(target.parent)


def write_synced_and_rename(
    path: str | os.PathLike[str],
    parts: Iterable[bytes | FileRange],
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
) -> None:
    """atomic_write without the final directory fsync, the content given as parts.

    For callers that rename several files and then fsync their common
    directory once; until that fsync the renames may not survive a crash.
    The parts (a header, a body) are written without being joined first; a
    ``FileRange`` part (a message spooled to disk) is copied by the kernel
    (copy_file_range), never through memory in one piece.
    """
    target = Path(path)
    tmp = _synced_temp(target, parts, mode, owner)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _synced_temp(
    target: Path, parts: Iterable[bytes | FileRange], mode: int, owner: tuple[int, int] | None
) -> str:
    """A temporary file beside target holding parts, fsynced, with its final mode and owner."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        try:
            if mode != 0o600:  # mkstemp's own mode
                os.fchmod(fd, mode)
            if owner is not None:
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, *owner)
            _write_all(fd, parts)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _write_all(fd: int, parts: Iterable[bytes | FileRange]) -> None:
    pending: list[bytes] = []
    for part in parts:
        if isinstance(part, bytes):
            if part:
                pending.append(part)
            continue
        _writev_all(fd, pending)
        pending = []
        _copy_range(fd, part)
    _writev_all(fd, pending)


def _writev_all(fd: int, parts: list[bytes]) -> None:
    # One writev for all the parts (a header and a body) instead of a
    # buffered file object's copies; a short write continues where it stopped.
    pending = [memoryview(p) for p in parts if p]
    while pending:
        n = os.writev(fd, pending[:1024])  # IOV_MAX
        while n and pending:
            if n >= len(pending[0]):
                n -= len(pending[0])
                pending.pop(0)
            else:
                pending[0] = pending[0][n:]
                n = 0


def _copy_range(fd: int, part: FileRange) -> None:
    """Append ``part`` of another file to fd, in the kernel when it can."""
    src = os.open(part.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        offset, left = part.offset, part.length
        kernel = hasattr(os, "copy_file_range")
        while left > 0:
            if kernel:
                try:
                    n = os.copy_file_range(src, fd, left, offset)
                except OSError as e:
                    if e.errno not in _NO_KERNEL_COPY:
                        raise
                    kernel = False
                    continue
            else:
                data = os.pread(src, min(left, _COPY_BUFFER), offset)
                n = len(data)
                if n:
                    _writev_all(fd, [data])
            if n == 0:
                raise OSError(errno.EIO, f"{part.path} ends before its {part.length} bytes")
            offset += n
            left -= n
    finally:
        os.close(src)
