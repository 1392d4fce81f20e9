"""Durable file writes: nothing half-written is ever visible under the final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry change (create, rename, unlink) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write data to path so that a crash leaves either the old file or the new one.

    The data goes to a temporary file in the same directory (name starting
    with a dot), which is fsynced, renamed over path, and then the directory
    is fsynced so the rename itself survives a crash.
    """
    atomic_write_parts(path, (data,), mode)


def atomic_write_parts(
    path: str | os.PathLike[str], parts: Iterable[bytes], mode: int = 0o600
) -> None:
    """Like atomic_write, with the content given as consecutive parts.

    Lets callers put a small header before a large body without first
    concatenating them (a copy of the body).
    """
    target = Path(path)
    directory = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
