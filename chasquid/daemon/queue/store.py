"""The queue directory: durable files of items (blocking I/O; call from a thread).

Items written alone live in ``m:<id>`` files. Items that arrive together
(a group commit) are written as one segment file ``s:<segment>``, so that a
burst of messages costs one file creation and one fsync instead of one per
message. Either file is written once and never changed: the item's message
stays there, and is read from there at delivery, until the item is finished.
A later change of an item (its recipients' statuses) goes to a small state
file ``e:<id>`` holding its envelope alone. An item finished while others of
its segment are still queued is listed in ``d:<segment>`` so that the
segment's copy is not loaded again; the segment goes with its last item.
docs/queue-format.md describes the files.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from chasquid.daemon.queue.ids import new_id
from chasquid.daemon.queue.item import (
    QueueFormatError,
    QueueItem,
    read_item,
    read_items,
    read_state,
)
from chasquid.errors import ChasquidError
from chasquid.fileio import fsync_dir, write_synced_and_rename
from chasquid.msgbody import Body, FileRange

log = logging.getLogger("chasquid.queue")

FILE_PREFIX = "m:"
SEGMENT_PREFIX = "s:"
DONE_PREFIX = "d:"
STATE_PREFIX = "e:"
#: Messages being received are spooled to files named so (reception's).
SPOOL_PREFIX = ".spool-"


class QueueStoreError(ChasquidError):
    """The queue directory or one of its files could not be written or removed."""


@dataclass(frozen=True)
class StoreOp:
    """One queued change for QueueStore.apply: write ``item``, or remove ``item_id``.

    ``new`` marks the first write of an item, which has no file yet: new
    items of one batch may share a segment file. Later writes of an item
    (status changes) go to its state file ``e:<id>``; the message stays in
    the first file.
    """

    item: QueueItem | None = None
    item_id: str = ""
    new: bool = False


class QueueStore:
    """Reads and writes queue items as files in one directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        # Files whose name does not match the id inside; removed with the item
        # so that it is not loaded (and delivered) again after a restart.
        self._strays: dict[str, Path] = {}
        # Which segment holds each item's first version, and the items of each
        # segment not yet completed; the file goes when that set empties.
        self._segment_of: dict[str, str] = {}
        self._live: dict[str, set[str]] = {}
        # Segments with a damaged tail: never deleted, whatever completes.
        self._keep: set[str] = set()
        # Where each item's message is on disk, once written or loaded.
        self._bodies: dict[str, Body] = {}

    def ensure(self) -> None:
        """Create the queue directory (mode 0700) if missing."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise QueueStoreError(
                f"cannot create queue directory {self.directory}: {e.strerror or e}"
            ) from None

    def path(self, item_id: str) -> Path:
        """Where the item with this id lives when written alone."""
        return self.directory / f"{FILE_PREFIX}{item_id}"

    def state_path(self, item_id: str) -> Path:
        """Where the item's later envelope (its state file) lives."""
        return self.directory / f"{STATE_PREFIX}{item_id}"

    def body(self, item_id: str) -> Body:
        """Where the message of a written or loaded item is (a range of its file)."""
        return self._bodies[item_id]

    def _segment_path(self, segment: str) -> Path:
        return self.directory / f"{SEGMENT_PREFIX}{segment}"

    def _done_path(self, segment: str) -> Path:
        return self.directory / f"{DONE_PREFIX}{segment}"

    def write(self, item: QueueItem) -> None:
        """Durably write a new item, message and all: when this returns, it survives a crash."""
        self._apply_one(StoreOp(item=item, new=True))

    def remove(self, item_id: str) -> None:
        """Delete the item's files (or note it done in its segment); gone already is fine."""
        self._apply_one(StoreOp(item_id=item_id))

    def _apply_one(self, op: StoreOp) -> None:
        [error] = self.apply([op])
        if error is not None:
            raise error

    def apply(
        self,
        ops: Sequence[StoreOp],
        on_written: Callable[[list[QueueStoreError | None]], None] | None = None,
    ) -> list[QueueStoreError | None]:
        """Apply a batch of changes with one directory fsync for all the writes.

        Returns one entry per op: None if it succeeded, else its error. A write
        reported as succeeded is as durable as one done by ``write``: its file
        was fsynced and renamed, and the directory fsynced after the rename.
        Two or more new items share one segment file.

        The writes are done first and then the removals, which are not
        fsynced (one lost in a crash means a message delivered twice, never
        one lost). ``on_written`` is called between the two with the writes'
        results final, so their waiters need not wait for the removals.
        """
        results: list[QueueStoreError | None] = [None] * len(ops)
        written: list[int] = []
        new = [n for n, op in enumerate(ops) if op.item is not None and op.new]
        in_segment = len(new) >= 2
        if in_segment:
            self._write_segment(ops, new, results)
            written.extend(n for n in new if results[n] is None)
        for n, op in enumerate(ops):
            if op.item is not None and not (op.new and in_segment):
                results[n] = self._write_file(op.item) if op.new else self._write_state(op.item)
                if results[n] is None:
                    written.append(n)
        done: dict[str, list[str]] = {}
        if written:
            try:
                fsync_dir(self.directory)
            except OSError as e:
                for n in written:
                    results[n] = QueueStoreError(f"{self.directory}: {e.strerror or e}")
        if on_written is not None:
            on_written(list(results))
        # Removals after the writes: an item removed while its rewrite was on
        # its way must stay removed.
        for n, op in enumerate(ops):
            if op.item is None:
                try:
                    self._remove(op.item_id, done)
                except QueueStoreError as e:
                    results[n] = e
        self._record_done(done)
        return results

    def _write_file(self, item: QueueItem) -> QueueStoreError | None:
        path = self.path(item.id)
        try:
            head, body = item.encode()
            write_synced_and_rename(path, (head, *body.parts), 0o600)
        except OSError as e:
            return QueueStoreError(f"{path}: {e.strerror or e}")
        except Exception as e:
            # One bad item (say, unencodable) must not fail the others of its batch.
            return QueueStoreError(f"{path}: {e}")
        self._bodies[item.id] = _located(path, len(head), body.size)
        return None

    def _write_state(self, item: QueueItem) -> QueueStoreError | None:
        path = self.state_path(item.id)
        try:
            write_synced_and_rename(path, (item.encode_state(),), 0o600)
        except OSError as e:
            return QueueStoreError(f"{path}: {e.strerror or e}")
        except Exception as e:
            return QueueStoreError(f"{path}: {e}")
        return None

    def _write_segment(
        self, ops: Sequence[StoreOp], indexes: list[int], results: list[QueueStoreError | None]
    ) -> None:
        parts: list[bytes | FileRange] = []
        ids: list[str] = []
        where: list[tuple[int, int]] = []  # (offset, length) of each message
        offset = 0
        for n in indexes:
            item = ops[n].item
            assert item is not None
            try:
                head, body = item.encode()
            except Exception as e:
                results[n] = QueueStoreError(f"{self.path(item.id)}: {e}")
                continue
            parts.extend((head, *body.parts))
            ids.append(item.id)
            where.append((offset + len(head), body.size))
            offset += len(head) + body.size
        if not ids:
            return
        segment = new_id()
        path = self._segment_path(segment)
        try:
            write_synced_and_rename(path, parts, 0o600)
        except OSError as e:
            error = QueueStoreError(f"{path}: {e.strerror or e}")
            for n in indexes:
                results[n] = results[n] or error
            return
        self._live[segment] = set(ids)
        for item_id, (start, length) in zip(ids, where, strict=True):
            self._segment_of[item_id] = segment
            self._bodies[item_id] = _located(path, start, length)

    def _remove(self, item_id: str, done: dict[str, list[str]]) -> None:
        """Delete the item's own files and release its segment copy."""
        # The message first: a crash between the two leaves a state file
        # without an item, which load() deletes, rather than an item whose
        # older state would deliver again to recipients already done.
        paths = [self.path(item_id), self.state_path(item_id)]
        self._bodies.pop(item_id, None)
        stray = self._strays.pop(item_id, None)
        if stray is not None:
            paths.append(stray)
        for p in paths:
            try:
                _unlink(p)
            except OSError as e:
                raise QueueStoreError(f"cannot remove {p}: {e.strerror or e}") from None
        self._release(item_id, done)

    def _release(self, item_id: str, done: dict[str, list[str]]) -> None:
        """The item's copy in its segment, if any, is no longer needed."""
        segment = self._segment_of.pop(item_id, None)
        if segment is not None:
            self._live[segment].discard(item_id)
            done.setdefault(segment, []).append(item_id)

    def _record_done(self, done: dict[str, list[str]]) -> None:
        """Delete segments with nothing left, and list the released items of the others."""
        for segment, ids in done.items():
            try:
                if not self._live[segment] and segment not in self._keep:
                    del self._live[segment]
                    self._delete_segment(segment)
                    continue
                fd = os.open(
                    self._done_path(segment),
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                    0o600,
                )
                try:
                    os.write(fd, "".join(f"{i}\n" for i in ids).encode("ascii"))
                finally:
                    os.close(fd)
            except OSError as e:
                # The items are still done in memory; after a restart they
                # would be delivered again, which is what the log says.
                log.error(
                    "cannot record completed items %s of %s: %s",
                    " ".join(ids),
                    self._segment_path(segment),
                    e.strerror or e,
                )

    def _delete_segment(self, segment: str) -> None:
        # The segment first: a crash between the two leaves a d: file on its
        # own, which load() cleans up.
        _unlink(self._segment_path(segment))
        _unlink(self._done_path(segment))

    def load(self) -> list[QueueItem]:
        """Read every item file and segment; files that fail to parse are logged and left alone."""
        items: dict[str, QueueItem] = {}
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as e:
            raise QueueStoreError(
                f"cannot list queue directory {self.directory}: {e.strerror or e}"
            ) from None
        segments = {n[len(SEGMENT_PREFIX) :] for n in names if n.startswith(SEGMENT_PREFIX)}
        for name in names:
            if name.startswith(DONE_PREFIX) and name[len(DONE_PREFIX) :] not in segments:
                with contextlib.suppress(OSError):
                    _unlink(self.directory / name)
        for segment in sorted(segments):
            self._load_segment(segment, items)
        # Own files after segments: an item's own file is its later version
        # (written so by earlier versions, which rewrote whole items).
        for name in names:
            if name.startswith(FILE_PREFIX):
                self._load_file(self.directory / name, items)
        for item_id, item in items.items():
            self._bodies[item_id] = item.body
        # State files last: an item's latest envelope, over its message.
        for name in names:
            if name.startswith(STATE_PREFIX):
                self._load_state(self.directory / name, items)
            elif name.startswith(SPOOL_PREFIX):
                # A message whose reception a crash cut short: never accepted.
                with contextlib.suppress(OSError):
                    _unlink(self.directory / name)
        return list(items.values())

    def _load_state(self, path: Path, items: dict[str, QueueItem]) -> None:
        state = _read_or_log(path, read_state, "queue state file")
        if state is None:
            return
        base = items.get(state.id)
        if base is None or path != self.state_path(state.id):
            # Its item was finished (a crash came before this file's removal).
            with contextlib.suppress(OSError):
                _unlink(path)
            return
        items[state.id] = state.with_body(base.body)

    def _load_segment(self, segment: str, items: dict[str, QueueItem]) -> None:
        path = self._segment_path(segment)
        try:
            with open(self._done_path(segment), "rb") as f:
                done = set(f.read().decode("ascii", "replace").split())
        except FileNotFoundError:
            done = set()
        except OSError as e:
            log.error("skipping queue segment %s: %s", path, e.strerror or e)
            return
        live: set[str] = set()
        try:
            with open(path, "rb") as f:
                for item in read_items(f, str(path)):
                    if item.id in done:
                        continue
                    if item.id in items:
                        log.error("queue segment %s: id %s already loaded", path, item.id)
                        continue
                    items[item.id] = item
                    live.add(item.id)
        except QueueFormatError as e:
            log.error("damaged queue segment (kept on disk): %s", e)
            self._keep.add(segment)
        except OSError as e:
            log.error("skipping queue segment %s: %s", path, e.strerror or e)
            for item_id in live:
                del items[item_id]
            return
        if not live and segment not in self._keep:
            with contextlib.suppress(OSError):
                self._delete_segment(segment)
            return
        self._live[segment] = live
        for item_id in live:
            self._segment_of[item_id] = segment

    def _load_file(self, path: Path, items: dict[str, QueueItem]) -> None:
        item = _read_or_log(path, read_item, "queue file")
        if item is None:
            return
        if item.id in items and item.id not in self._segment_of:
            log.error(
                "skipping queue file %s: id %s already loaded from another file", path, item.id
            )
            return
        if path != self.path(item.id):
            log.warning("queue file %s holds item %s", path, item.id)
            self._strays[item.id] = path
        items[item.id] = item


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _located(path: Path, offset: int, length: int) -> Body:
    """The body of a message written at ``offset`` of ``path``."""
    return Body((FileRange(str(path), offset, length),)) if length else Body()


def _read_or_log(
    path: Path, read: Callable[[BinaryIO, str], QueueItem], what: str
) -> QueueItem | None:
    """The item a file holds, or None after logging why it cannot be read (it stays)."""
    try:
        with open(path, "rb") as f:
            return read(f, str(path))
    except QueueFormatError as e:
        log.error("skipping %s: %s", what, e)
    except OSError as e:
        log.error("skipping %s %s: %s", what, path, e.strerror or e)
    return None
