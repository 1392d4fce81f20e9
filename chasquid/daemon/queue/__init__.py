"""The durable mail queue."""

from __future__ import annotations

from chasquid.confdir.aliases import RecipientKind
from chasquid.daemon.queue.ids import new_id
from chasquid.daemon.queue.item import QueuedRecipient, QueueItem, RecipientStatus
from chasquid.daemon.queue.queue import Queue, QueueError
from chasquid.daemon.queue.store import QueueStore

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
