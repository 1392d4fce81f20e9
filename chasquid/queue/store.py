"""The queue directory: one durable file per item (blocking I/O; call from a thread)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chasquid.errors import ChasquidError
from chasquid.fileio import atomic_write_parts, fsync_dir, write_synced_and_rename
from chasquid.queue.item import QueueFormatError, QueueItem, read_item

log = logging.getLogger("chasquid.queue")

FILE_PREFIX = "m:"


class QueueStoreError(ChasquidError):
    """The queue directory or one of its files could not be written or removed."""


@dataclass(frozen=True)
class StoreOp:
    """One queued change for QueueStore.apply: write ``item``, or remove ``item_id``."""

    item: QueueItem | None = None
    item_id: str = ""


class QueueStore:
    """Reads and writes queue items as files ``m:<id>`` in one directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        # Files whose name does not match the id inside; removed with the item
        # so that it is not loaded (and delivered) again after a restart.
        self._strays: dict[str, Path] = {}

    def ensure(self) -> None:
        """Create the queue directory (mode 0700) if missing."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise QueueStoreError(
                f"cannot create queue directory {self.directory}: {e.strerror or e}"
            ) from None

    def path(self, item_id: str) -> Path:
        """Where the item with this id lives."""
        return self.directory / f"{FILE_PREFIX}{item_id}"

    def write(self, item: QueueItem) -> None:
        """Durably (re)write the item: when this returns, it survives a crash."""
        try:
            atomic_write_parts(self.path(item.id), item.encode(), 0o600)
        except OSError as e:
            raise QueueStoreError(f"{self.path(item.id)}: {e.strerror or e}") from None

    def apply(self, ops: Sequence[StoreOp]) -> list[QueueStoreError | None]:
        """Apply changes in order with one directory fsync for all the writes.

        Returns one entry per op: None if it succeeded, else its error. A write
        reported as succeeded is as durable as one done by ``write``: its file
        was fsynced and renamed, and the directory fsynced after the rename.
        """
        results: list[QueueStoreError | None] = []
        written: list[tuple[int, Path]] = []
        for n, op in enumerate(ops):
            if op.item is None:
                try:
                    self.remove(op.item_id)
                    results.append(None)
                except QueueStoreError as e:
                    results.append(e)
                continue
            path = self.path(op.item.id)
            try:
                write_synced_and_rename(path, op.item.encode(), 0o600)
            except OSError as e:
                results.append(QueueStoreError(f"{path}: {e.strerror or e}"))
                continue
            except Exception as e:
                # One bad item (say, unencodable) must not fail the others of its batch.
                results.append(QueueStoreError(f"{path}: {e}"))
                continue
            results.append(None)
            written.append((n, path))
        if written:
            try:
                fsync_dir(self.directory)
            except OSError as e:
                for n, path in written:
                    results[n] = QueueStoreError(f"{path}: {e.strerror or e}")
        return results

    def remove(self, item_id: str) -> None:
        """Delete the item's file; a file already gone is not an error."""
        paths = [self.path(item_id)]
        stray = self._strays.pop(item_id, None)
        if stray is not None:
            paths.append(stray)
        for p in paths:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise QueueStoreError(f"cannot remove {p}: {e.strerror or e}") from None

    def load(self) -> list[QueueItem]:
        """Read every ``m:*`` file; files that fail to parse are logged and left alone."""
        items: dict[str, QueueItem] = {}
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as e:
            raise QueueStoreError(
                f"cannot list queue directory {self.directory}: {e.strerror or e}"
            ) from None
        for name in names:
            if not name.startswith(FILE_PREFIX):
                continue
            path = self.directory / name
            try:
                with open(path, "rb") as f:
                    item = read_item(f, str(path))
            except QueueFormatError as e:
                log.error("skipping queue file: %s", e)
                continue
            except OSError as e:
                log.error("skipping queue file %s: %s", path, e.strerror or e)
                continue
            if item.id in items:
                log.error(
                    "skipping queue file %s: id %s already loaded from another file",
                    path,
                    item.id,
                )
                continue
            if path != self.path(item.id):
                log.warning("queue file %s holds item %s", path, item.id)
                self._strays[item.id] = path
            items[item.id] = item
        return list(items.values())
