"""The daemon's queue administration methods: QueueList, QueueShow, QueueFlush, QueueRemove.

Results travel as one JSON document in the ``json`` param; chasquid-util
decodes them with chasquid.localrpc.queueadmin.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from chasquid.daemon.queue.delivery import Delivery
from chasquid.daemon.queue.item import QueueItem, rcpt_to_json
from chasquid.errors import ChasquidError
from chasquid.localrpc.protocol import Handler, Params, get_param

#: The show view carries at most this much of the message's header block.
MAX_HEADERS_SHOWN = 64 * 1024


def item_json(
    item: QueueItem, next_attempt: datetime | None, *, head: bytes | None = None
) -> dict[str, Any]:
    """The JSON form of an item; with ``head`` (the message's first bytes) its header block."""
    d: dict[str, Any] = {
        "id": item.id,
        "from": item.sender,
        "to": list(item.to),
        "created_at": item.created_at.astimezone(UTC).isoformat(),
        "size": item.body.size,
        "next_attempt": next_attempt.astimezone(UTC).isoformat() if next_attempt else None,
        "rcpts": [rcpt_to_json(r) for r in item.rcpts],
    }
    if head is not None:
        end = head.find(b"\n\n")
        block = head if end < 0 else head[: end + 1]
        d["headers"] = block[:MAX_HEADERS_SHOWN].decode("utf-8", "replace")
    return d


def handlers(delivery: Delivery) -> dict[str, Handler]:
    """The daemon-side queue methods."""
    queue = delivery.queue

    async def queue_list(params: Params) -> Params:
        items = sorted(queue.items(), key=lambda i: i.created_at)
        views = [item_json(i, delivery.next_attempt(i.id)) for i in items]
        return [("json", json.dumps(views))]

    async def queue_show(params: Params) -> Params:
        item_id = get_param(params, "ID")
        item = _current(delivery, item_id)
        # The message is on disk: read no more of it than is shown.
        head = await asyncio.to_thread(item.body.read, MAX_HEADERS_SHOWN)
        return [("json", json.dumps(item_json(item, delivery.next_attempt(item_id), head=head)))]

    async def queue_flush(params: Params) -> Params:
        item_id = get_param(params, "ID", "") or None
        return [("flushed", str(delivery.flush(item_id)))]

    async def queue_remove(params: Params) -> Params:
        item_id = get_param(params, "ID")
        dsn = get_param(params, "DSN", "1") not in ("0", "false")
        await delivery.remove(item_id, dsn=dsn)
        return []

    return {
        "QueueList": queue_list,
        "QueueShow": queue_show,
        "QueueFlush": queue_flush,
        "QueueRemove": queue_remove,
    }


def _current(delivery: Delivery, item_id: str) -> QueueItem:
    runner = delivery.runners.get(item_id)
    if runner is not None:
        return runner.item
    item = delivery.queue.get(item_id)
    if item is None:
        raise ChasquidError(f"no item {item_id!r} in the queue")
    return item
