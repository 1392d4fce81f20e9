"""Queue administration over the local RPC: QueueList, QueueShow, QueueFlush, QueueRemove.

The daemon side turns queue items into JSON views; the client side (used by
``chasquid-util queue``) calls the methods and decodes the views. Results
travel as one JSON document in the ``json`` param.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chasquid import localrpc
from chasquid.errors import ChasquidError
from chasquid.localrpc import Handler, Params, RPCError, get_param
from chasquid.queue.delivery import Delivery
from chasquid.queue.item import QueueItem, rcpt_to_json

#: The show view carries at most this much of the message's header block.
MAX_HEADERS_SHOWN = 64 * 1024


@dataclass(frozen=True)
class RecipientView:
    """One recipient as administrators see it."""

    address: str
    type: str
    status: str
    last_failure_message: str
    original_address: str
    via: tuple[str, ...]


@dataclass(frozen=True)
class ItemView:
    """One queue item as administrators see it (no message body)."""

    id: str
    sender: str
    to: tuple[str, ...]
    created_at: datetime
    size: int
    next_attempt: datetime | None
    rcpts: tuple[RecipientView, ...]
    headers: str = ""

    def age(self, now: datetime | None = None) -> float:
        """Seconds since the item was queued."""
        return ((now or datetime.now(UTC)) - self.created_at).total_seconds()


def item_json(item: QueueItem, next_attempt: datetime | None, *, headers: bool) -> dict[str, Any]:
    """The JSON form of an item (with the header block when headers is set)."""
    d: dict[str, Any] = {
        "id": item.id,
        "from": item.sender,
        "to": list(item.to),
        "created_at": item.created_at.astimezone(UTC).isoformat(),
        "size": len(item.data),
        "next_attempt": next_attempt.astimezone(UTC).isoformat() if next_attempt else None,
        "rcpts": [rcpt_to_json(r) for r in item.rcpts],
    }
    if headers:
        end = item.data.find(b"\n\n")
        head = item.data if end < 0 else item.data[: end + 1]
        d["headers"] = head[:MAX_HEADERS_SHOWN].decode("utf-8", "replace")
    return d


def view_from_json(d: dict[str, Any]) -> ItemView:
    """Decode an item's JSON form; RPCError if it is not one."""
    try:
        next_attempt = d.get("next_attempt")
        return ItemView(
            id=str(d["id"]),
            sender=str(d["from"]),
            to=tuple(str(t) for t in d["to"]),
            created_at=datetime.fromisoformat(d["created_at"]),
            size=int(d["size"]),
            next_attempt=datetime.fromisoformat(next_attempt) if next_attempt else None,
            rcpts=tuple(
                RecipientView(
                    address=str(r["address"]),
                    type=str(r["type"]),
                    status=str(r["status"]),
                    last_failure_message=str(r["last_failure_message"]),
                    original_address=str(r["original_address"]),
                    via=tuple(str(v) for v in r["via"]),
                )
                for r in d["rcpts"]
            ),
            headers=str(d.get("headers", "")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise RPCError(f"unexpected queue item from the daemon: {e}") from None


def handlers(delivery: Delivery) -> dict[str, Handler]:
    """The daemon-side queue methods."""
    queue = delivery.queue

    async def queue_list(params: Params) -> Params:
        items = sorted(queue.items(), key=lambda i: i.created_at)
        views = [item_json(i, delivery.next_attempt(i.id), headers=False) for i in items]
        return [("json", json.dumps(views))]

    async def queue_show(params: Params) -> Params:
        item_id = get_param(params, "ID")
        item = _current(delivery, item_id)
        return [("json", json.dumps(item_json(item, delivery.next_attempt(item_id), headers=True)))]

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


# --- client side.


def _json_result(result: Params) -> Any:
    try:
        return json.loads(get_param(result, "json"))
    except ValueError as e:
        raise RPCError(f"unexpected reply from the daemon: {e}") from None


def list_items(socket_path: Path) -> list[ItemView]:
    """Every queued item, oldest first."""
    data = _json_result(localrpc.call(socket_path, "QueueList"))
    if not isinstance(data, list):
        raise RPCError("unexpected reply from the daemon: not a list")
    return [view_from_json(d) for d in data]


def show_item(socket_path: Path, item_id: str) -> ItemView:
    """One item, with its header block."""
    data = _json_result(localrpc.call(socket_path, "QueueShow", [("ID", item_id)]))
    if not isinstance(data, dict):
        raise RPCError("unexpected reply from the daemon: not an object")
    return view_from_json(data)


def flush(socket_path: Path, item_id: str | None = None) -> int:
    """Retry one item (or all) now; how many items were woken."""
    params = [("ID", item_id)] if item_id else []
    result = localrpc.call(socket_path, "QueueFlush", params)
    try:
        return int(get_param(result, "flushed"))
    except ValueError:
        raise RPCError("unexpected reply from the daemon") from None


def remove(socket_path: Path, item_id: str, dsn: bool = True) -> None:
    """Remove an item; with dsn, its sender is told about what was not delivered."""
    localrpc.call(socket_path, "QueueRemove", [("ID", item_id), ("DSN", "1" if dsn else "0")])
