"""The durable mail queue."""

from __future__ import annotations

from chasquid.confdir.aliases import RecipientKind
from chasquid.queue.ids import new_id
from chasquid.queue.item import QueuedRecipient, QueueItem, RecipientStatus
from chasquid.queue.queue import Queue, QueueError
from chasquid.queue.store import QueueStore

__all__ = [
    "Queue",
    "QueueError",
    "QueueItem",
    "QueueStore",
    "QueuedRecipient",
    "RecipientKind",
    "RecipientStatus",
    "new_id",
]
