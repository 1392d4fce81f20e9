"""Queue items: plain immutable data and their on-disk encoding (docs/queue-format.md)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import IO, Any

from chasquid.confdir.aliases import RecipientKind
from chasquid.errors import ChasquidError
from chasquid.msgbody import Body, FileRange

MAGIC = b"chasquid-queue-item"
#: A state file: an item's later envelope, without the message (which stays put).
STATE_MAGIC = b"chasquid-queue-state"
FORMAT_VERSION = 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The first line is short; anything longer is not one of our files.
_MAX_FIRST_LINE = 128


class QueueFormatError(ChasquidError):
    """A queue file that cannot be parsed."""


class RecipientStatus(StrEnum):
    """Delivery state of one recipient; SENT and FAILED are terminal."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    """One recipient of a queue item, after alias expansion."""

    address: str
    kind: RecipientKind = RecipientKind.EMAIL
    status: RecipientStatus = RecipientStatus.PENDING
    last_failure_message: str = ""
    original_address: str = ""
    via: tuple[str, ...] = ()

    def with_status(
        self, status: RecipientStatus, last_failure_message: str | None = None
    ) -> QueuedRecipient:
        """Return a copy with a new status (and failure message, if given)."""
        message = (
            self.last_failure_message if last_failure_message is None else last_failure_message
        )
        return dataclasses.replace(self, status=status, last_failure_message=message)


@dataclass(frozen=True, slots=True)
class QueueItem:
    """A queued message: envelope, expanded recipients and where the message bytes are.

    ``body`` is in memory only until the item is first written; from then
    on it is a range of the item's file (``m:`` or ``s:``), which is never
    rewritten, so the message is read from disk when delivered. Items
    compare by their envelope: the message never changes, only where it is.
    """

    id: str
    sender: str
    to: tuple[str, ...]
    rcpts: tuple[QueuedRecipient, ...]
    body: Body = field(repr=False, compare=False)
    created_at: datetime = EPOCH

    def with_rcpt(self, index: int, rcpt: QueuedRecipient) -> QueueItem:
        """Return a copy with the recipient at index replaced."""
        rcpts = list(self.rcpts)
        rcpts[index] = rcpt
        return dataclasses.replace(self, rcpts=tuple(rcpts))

    def with_status(
        self, index: int, status: RecipientStatus, last_failure_message: str | None = None
    ) -> QueueItem:
        """Return a copy where the recipient at index has a new status."""
        return self.with_rcpt(index, self.rcpts[index].with_status(status, last_failure_message))

    def pending(self) -> tuple[int, ...]:
        """Indexes of the recipients still to be attempted."""
        return tuple(i for i, r in enumerate(self.rcpts) if r.status is RecipientStatus.PENDING)

    def with_body(self, body: Body) -> QueueItem:
        """Return a copy whose message bytes are ``body`` (where the store put them)."""
        return dataclasses.replace(self, body=body)

    def encode(self) -> tuple[bytes, Body]:
        """Serialize to (head, body): the file is head followed by the message bytes.

        Returned as two parts so the (possibly large) message is never copied
        through memory: the store copies the body's file ranges in the kernel.
        """
        envelope = self._envelope()
        first = b"%s %d %d %d\n" % (MAGIC, FORMAT_VERSION, len(envelope), self.body.size)
        return first + envelope + b"\n", self.body

    def encode_state(self) -> bytes:
        """The state file of the item: its envelope alone (recipients' statuses and all)."""
        envelope = self._envelope()
        return b"%s %d %d\n" % (STATE_MAGIC, FORMAT_VERSION, len(envelope)) + envelope + b"\n"

    def _envelope(self) -> bytes:
        envelope = {
            "id": self.id,
            "from": self.sender,
            "to": list(self.to),
            "created_at": self.created_at.astimezone(UTC).isoformat(),
            "rcpts": [rcpt_to_json(r) for r in self.rcpts],
        }
        # ensure_ascii keeps the header valid even for strings holding lone
        # surrogates (undecodable bytes carried through surrogateescape).
        return json.dumps(envelope, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def rcpt_to_json(r: QueuedRecipient) -> dict[str, Any]:
    """The JSON form of a recipient, as stored in the item's envelope and shown by queue show."""
    return {
        "address": r.address,
        "type": r.kind.value,
        "status": r.status.value,
        "last_failure_message": r.last_failure_message,
        "original_address": r.original_address,
        "via": list(r.via),
    }


def read_item(f: IO[bytes], source: str) -> QueueItem:
    """Parse one queue file from an open binary file; source is its path.

    The message is not read: the item's body is the range of the file it is in.
    """
    item = _read_next(f, source)
    if item is None:
        raise QueueFormatError(f"{source}: not a queue item (bad first line)")
    if f.read(1):
        raise QueueFormatError(f"{source}: unexpected bytes after the message data")
    return item


def read_items(f: IO[bytes], source: str) -> Iterator[QueueItem]:
    """Parse a segment: items one after the other until the end of the stream.

    Raises QueueFormatError at the first damaged item; the items before it
    have been yielded already.
    """
    while (item := _read_next(f, source)) is not None:
        yield item


def _read_next(f: IO[bytes], source: str) -> QueueItem | None:
    """The next item of the stream, or None at its very end."""
    first = f.readline(_MAX_FIRST_LINE)
    if not first:
        return None
    parts = first.split()
    if len(parts) != 4 or parts[0] != MAGIC or not first.endswith(b"\n"):
        raise QueueFormatError(f"{source}: not a queue item (bad first line)")
    try:
        version, head_len, data_len = (int(p) for p in parts[1:])
    except ValueError:
        raise QueueFormatError(f"{source}: bad lengths in the first line") from None
    if version != FORMAT_VERSION:
        raise QueueFormatError(
            f"{source}: queue format version {version} is not supported"
            f" (this version reads {FORMAT_VERSION})"
        )
    envelope = _read_envelope(f, head_len, source)
    # The message stays on disk: the item only says where it is.
    offset = f.tell()
    size = os.fstat(f.fileno()).st_size
    if offset + data_len > size:
        raise QueueFormatError(
            f"{source}: truncated message data ({size - offset} of {data_len} bytes)"
        )
    f.seek(offset + data_len)
    body = Body((FileRange(source, offset, data_len),)) if data_len else Body()
    return _item_from_json(envelope, body, source)


def read_state(f: IO[bytes], source: str) -> QueueItem:
    """Parse a state file (``encode_state``): the item's envelope, with an empty body."""
    first = f.readline(_MAX_FIRST_LINE)
    parts = first.split()
    if len(parts) != 3 or parts[0] != STATE_MAGIC or not first.endswith(b"\n"):
        raise QueueFormatError(f"{source}: not a queue state file (bad first line)")
    try:
        version, head_len = int(parts[1]), int(parts[2])
    except ValueError:
        raise QueueFormatError(f"{source}: bad lengths in the first line") from None
    if version != FORMAT_VERSION:
        raise QueueFormatError(f"{source}: queue format version {version} is not supported")
    envelope = _read_envelope(f, head_len, source)
    if f.read(1):
        raise QueueFormatError(f"{source}: unexpected bytes after the envelope")
    return _item_from_json(envelope, Body(), source)


def _read_envelope(f: IO[bytes], head_len: int, source: str) -> object:
    head = f.read(head_len + 1)
    if len(head) != head_len + 1 or not head.endswith(b"\n"):
        raise QueueFormatError(f"{source}: truncated envelope")
    try:
        return json.loads(head)
    except ValueError as e:
        raise QueueFormatError(f"{source}: bad envelope JSON: {e}") from None


def _item_from_json(env: object, body: Body, source: str) -> QueueItem:
    if not isinstance(env, dict):
        raise QueueFormatError(f"{source}: envelope is not a JSON object")
    item_id = _get_str(env, "id", source, required=True)
    if not item_id:
        raise QueueFormatError(f"{source}: empty id")
    created_text = _get_str(env, "created_at", source)
    created_at = EPOCH
    if created_text:
        try:
            created_at = datetime.fromisoformat(created_text)
        except ValueError:
            raise QueueFormatError(f"{source}: bad created_at {created_text!r}") from None
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)
        created_at = created_at.astimezone(UTC)
    rcpts_raw = env.get("rcpts", [])
    if not isinstance(rcpts_raw, list):
        raise QueueFormatError(f"{source}: key 'rcpts' is not a list")
    return QueueItem(
        id=item_id,
        sender=_get_str(env, "from", source, required=True),
        to=_get_str_tuple(env, "to", source),
        rcpts=tuple(_rcpt_from_json(r, source) for r in rcpts_raw),
        body=body,
        created_at=created_at,
    )


def _rcpt_from_json(raw: object, source: str) -> QueuedRecipient:
    if not isinstance(raw, dict):
        raise QueueFormatError(f"{source}: a recipient is not a JSON object")
    kind_text = _get_str(raw, "type", source) or RecipientKind.EMAIL.value
    status_text = _get_str(raw, "status", source) or RecipientStatus.PENDING.value
    try:
        kind = RecipientKind(kind_text)
        status = RecipientStatus(status_text)
    except ValueError as e:
        raise QueueFormatError(f"{source}: recipient: {e}") from None
    return QueuedRecipient(
        address=_get_str(raw, "address", source, required=True),
        kind=kind,
        status=status,
        last_failure_message=_get_str(raw, "last_failure_message", source),
        original_address=_get_str(raw, "original_address", source),
        via=_get_str_tuple(raw, "via", source),
    )


def _get_str(d: dict[str, Any], key: str, source: str, *, required: bool = False) -> str:
    if key not in d:
        if required:
            raise QueueFormatError(f"{source}: missing key {key!r}")
        return ""
    value = d[key]
    if not isinstance(value, str):
        raise QueueFormatError(f"{source}: key {key!r} is not a string")
    return value


def _get_str_tuple(d: dict[str, Any], key: str, source: str) -> tuple[str, ...]:
    value = d.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise QueueFormatError(f"{source}: key {key!r} is not a list of strings")
    return tuple(value)
