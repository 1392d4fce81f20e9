"""chasquid-util's side of queue administration: list, show, flush and remove over the local RPC.

The daemon answers with chasquid.daemon.queue.admin; items come back as JSON views
without their message body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chasquid.localrpc.client import call
from chasquid.localrpc.protocol import Params, RPCError, get_param


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


def _json_result(result: Params) -> Any:
    try:
        return json.loads(get_param(result, "json"))
    except ValueError as e:
        raise RPCError(f"unexpected reply from the daemon: {e}") from None


def list_items(socket_path: Path) -> list[ItemView]:
    """Every queued item, oldest first."""
    data = _json_result(call(socket_path, "QueueList"))
    if not isinstance(data, list):
        raise RPCError("unexpected reply from the daemon: not a list")
    return [view_from_json(d) for d in data]


def show_item(socket_path: Path, item_id: str) -> ItemView:
    """One item, with its header block."""
    data = _json_result(call(socket_path, "QueueShow", [("ID", item_id)]))
    if not isinstance(data, dict):
        raise RPCError("unexpected reply from the daemon: not an object")
    return view_from_json(data)


def flush(socket_path: Path, item_id: str | None = None) -> int:
    """Retry one item (or all) now; how many items were woken."""
    params = [("ID", item_id)] if item_id else []
    result = call(socket_path, "QueueFlush", params)
    try:
        return int(get_param(result, "flushed"))
    except ValueError:
        raise RPCError("unexpected reply from the daemon") from None


def remove(socket_path: Path, item_id: str, dsn: bool = True) -> None:
    """Remove an item; with dsn, its sender is told about what was not delivered."""
    call(socket_path, "QueueRemove", [("ID", item_id), ("DSN", "1" if dsn else "0")])
