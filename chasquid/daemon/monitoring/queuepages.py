"""``/debug/queue``: the queue as plain text (chasquid's dump) and as a page for people."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup

from chasquid.daemon.monitoring.humane import ago, go_time
from chasquid.daemon.monitoring.sources import QueueSource
from chasquid.daemon.monitoring.tracepages import href
from chasquid.daemon.queue.item import QueueItem, RecipientStatus
from chasquid.daemon.telemetry.trace import Tracer
from chasquid.goquote import go_list_plain, go_quote

#: The family of the trace each queue item keeps while it is in the queue.
ITEM_FAMILY = "Queue.SendLoop"
#: Items shown on the HTML page (rendered in one go); the text dump shows all of them.
HTML_ITEMS = 500


def ordered(items: Sequence[QueueItem]) -> list[QueueItem]:
    """Oldest first, so the item that has waited longest is at the top."""
    return sorted(items, key=lambda i: (i.created_at, i.id))


def text_dump(items: Sequence[QueueItem], now: datetime) -> Iterator[str]:
    """The plain-text dump, one piece per item."""
    yield f"# Queue status\n\ndate: {go_time(now)}\nlength: {len(items)}\n\n"
    for item in items:
        lines = [
            f"## Item {item.id}",
            f"created at: {go_time(item.created_at)}",
            f"from: {item.sender}",
            f"to: {go_list_plain(item.to)}",
        ]
        for r in item.rcpts:
            lines.append(f"{r.status.value.upper()} {r.address} ({r.kind.value.upper()})")
            lines.append(f"  original address: {r.original_address}")
            lines.append(f"  last failure: {go_quote(r.last_failure_message)}")
        yield "\n".join(lines) + "\n\n"


def item_state(item: QueueItem) -> str:
    """``failed`` when a recipient failed for good, ``failing`` when one keeps being deferred."""
    if any(r.status is RecipientStatus.FAILED for r in item.rcpts):
        return "failed"
    if any(r.status is RecipientStatus.PENDING and r.last_failure_message for r in item.rcpts):
        return "failing"
    return ""


def html_context(queue: QueueSource, tracer: Tracer, now: datetime) -> dict[str, Any]:
    """What queue.html shows: per item its envelope, times, recipients and trace link."""
    family = tracer.family(ITEM_FAMILY)
    traces = {t.title: t for t in family.active.values()} if family is not None else {}
    rows = []
    items = ordered(list(queue.items()))
    for item in items[:HTML_ITEMS]:
        next_at = queue.next_attempt(item.id)
        trace = traces.get(item.id)
        rows.append(
            {
                "id": item.id,
                "state": item_state(item),
                "sender": item.sender,
                "to": list(item.to),
                "created": go_time(item.created_at),
                "created_ago": ago((now - item.created_at).total_seconds()),
                "next_attempt": go_time(next_at) if next_at is not None else "",
                "next_attempt_in": ago((now - next_at).total_seconds()) if next_at else "",
                "trace_href": Markup("/debug/traces") + href(trace=trace.id) if trace else None,
                "rcpts": [
                    {
                        "status": r.status.value,
                        "address": r.address,
                        "kind": r.kind.value,
                        "original": r.original_address if r.original_address != r.address else "",
                        "error": r.last_failure_message,
                    }
                    for r in item.rcpts
                ],
            }
        )
    return {
        "items": rows,
        "total": len(items),
        "hidden": max(0, len(items) - HTML_ITEMS),
        "now": go_time(now),
    }


def failing_count(items: Sequence[QueueItem]) -> int:
    """How many items have a recipient that failed or keeps being deferred."""
    return sum(1 for i in items if item_state(i))


def utc_now() -> datetime:
    """The current time (aware), for pages that compare with queue times."""
    return datetime.now(UTC)
