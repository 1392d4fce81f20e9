"""``/debug/traces``: the families, a bucket's traces, a latency histogram, one trace's story."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from chasquid.daemon.monitoring.humane import ago, go_duration_rounded
from chasquid.daemon.telemetry.trace import (
    ACTIVE_BUCKET,
    BUCKETS,
    ERRORS_BUCKET,
    Event,
    Family,
    Kind,
    Trace,
    Tracer,
)
from chasquid.durations import format_duration

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
#: Nesting shown with dots up to this depth, then as a number.
_MAX_DOTS = 4
#: Owner names in a merged timeline longer than this are shortened.
_OWNER_WIDTH = 20


class TracePageError(Exception):
    """A bad query: the page shows ``Error: <message>`` with this HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def href(**params: str | int) -> Markup:
    """A literal query string with raw ``&`` (values are percent-encoded, so it is safe)."""
    return Markup("?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items()))


def bucket_label(bucket: int) -> str:
    """``errors``, ``active`` or ``≥<bound>``."""
    if bucket == ERRORS_BUCKET:
        return "errors"
    if bucket == ACTIVE_BUCKET:
        return "active"
    return "≥" + format_duration(BUCKETS[bucket])


def parse_bool(text: str | None, default: bool = True) -> bool:
    """Go's boolean spellings; anything unparsable is false, absent is the default."""
    if text is None:
        return default
    return text in _TRUE


def parse_bucket(text: str) -> int:
    """The ``b`` parameter: -2 errors, -1 active, 0-7 latency buckets."""
    try:
        bucket = int(text)
    except ValueError:
        raise TracePageError(400, "Invalid bucket (not a number)") from None
    if not ERRORS_BUCKET <= bucket < len(BUCKETS):
        raise TracePageError(400, "Invalid bucket number")
    return bucket


def clock_us(when: float) -> str:
    """``HH:MM:SS.ffffff`` in local time."""
    return datetime.fromtimestamp(when).strftime("%H:%M:%S.%f")


def full_clock_us(when: float) -> str:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` in local time."""
    return datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S.%f")


def delta(seconds: float) -> str:
    """Time since the previous event: `` .  5000`` below a second, else ``1.008000``."""
    if seconds < 1:
        return f" .{round(seconds * 1e6):6d}"
    return f"{seconds:.6f}"


@dataclass
class FamilyRow:
    """One row of the families table."""

    name: str
    href: Markup
    active: int
    active_href: Markup
    buckets: list[tuple[str, Markup, bool, bool]]  # label, link, empty, current
    errors: int
    errors_href: Markup
    latency_href: Markup
    current: bool
    current_bucket: int | None


@dataclass
class EventRow:
    """One event as a row: time, delta, text, and where it links."""

    clock: str
    delta: str
    text: str
    kind: str  # log, error, child, link, dropped
    link: Markup | None = None
    owner: str = ""
    owner_link: Markup | None = None
    indent: str = ""


@dataclass
class TraceBlock:
    """A trace in a bucket view: its header line and its events."""

    id: str
    start: str
    start_ago: str
    duration: str
    title: str
    link: Markup
    errored: bool
    active: bool
    parent: Trace | None
    parent_link: Markup | None
    events: list[EventRow] = field(default_factory=list)


def _family_rows(
    tracer: Tracer, fam_name: str | None, bucket: int | None, show_all: bool
) -> list[FamilyRow]:
    rows = []
    all_text = "true" if show_all else "false"
    for fam in tracer.families():
        current = fam.name == fam_name
        buckets = [
            (
                bucket_label(i),
                href(fam=fam.name, b=i, all=all_text),
                not fam.buckets[i],
                current and bucket == i,
            )
            for i in range(len(BUCKETS))
        ]
        rows.append(
            FamilyRow(
                name=fam.name,
                href=href(fam=fam.name, b=0, all="true"),
                active=len(fam.active),
                active_href=href(fam=fam.name, b=ACTIVE_BUCKET, all=all_text),
                buckets=buckets,
                errors=len(fam.errors),
                errors_href=href(fam=fam.name, b=ERRORS_BUCKET, all=all_text),
                latency_href=href(fam=fam.name, lat="true", all=all_text),
                current=current,
                current_bucket=bucket if current else None,
            )
        )
    return rows


def _event_row(trace: Trace, event: Event, previous: float) -> EventRow:
    kind = {
        Kind.LOG: "log",
        Kind.ERROR: "error",
        Kind.CHILD: "child",
        Kind.LINK: "link",
        Kind.DROPPED: "dropped",
    }[event.kind]
    link = None
    ref = event.ref
    if ref is not None:
        link = href(trace=ref.id, ref=trace.id)
    return EventRow(
        clock=clock_us(event.when),
        delta=delta(max(0.0, event.when - previous)),
        text=event.text,
        kind=kind,
        link=link,
    )


def _block(trace: Trace, now: float) -> TraceBlock:
    events = []
    previous = trace.start
    for e in trace.events():
        events.append(_event_row(trace, e, previous))
        previous = e.when
    parent = trace.parent
    return TraceBlock(
        id=trace.id,
        start=full_clock_us(trace.start),
        start_ago=ago(now - trace.start),
        duration=f"{trace.duration(now):.6f}",
        title=trace.title,
        link=href(trace=trace.id),
        errored=trace.errored,
        active=not trace.finished,
        parent=parent,
        parent_link=href(trace=parent.id, ref=trace.id) if parent is not None else None,
        events=events,
    )


def _owner(trace: Trace) -> str:
    name = f"{trace.family} - {trace.title}"
    if len(name) > _OWNER_WIDTH:
        return "..." + name[-17:]
    return name


def _indent(depth: int) -> str:
    if depth <= _MAX_DOTS:
        return "· " * depth
    return f"· ({depth}) · "


def timeline(root: Trace) -> list[EventRow]:
    """The merged story of a trace and, recursively, its children and linked traces.

    Each trace is visited once; rows are sorted by time and indented by depth.
    """
    collected: list[tuple[float, int, Trace, Event]] = []
    seen: set[str] = set()
    pending: list[tuple[Trace, int]] = [(root, 0)]
    while pending:
        trace, depth = pending.pop()
        if trace.id in seen:
            continue
        seen.add(trace.id)
        for e in trace.events():
            collected.append((e.when, depth, trace, e))
            ref = e.ref
            if ref is not None and ref.id not in seen:
                pending.append((ref, depth + 1))
    collected.sort(key=lambda c: c[0])
    rows = []
    previous = root.start
    for when, depth, trace, e in collected:
        row = _event_row(trace, e, previous)
        row.owner = _owner(trace)
        row.owner_link = href(trace=trace.id, ref=root.id)
        row.indent = _indent(depth)
        rows.append(row)
        previous = when
    return rows


def traces_page(
    tracer: Tracer, query: Mapping[str, str], now: float | None = None
) -> dict[str, Any]:
    """The template context of ``/debug/traces`` for a query; the status goes in ``status``."""
    now = time.time() if now is None else now
    show_all = parse_bool(query.get("all"))
    fam_name = query.get("fam") or None
    context: dict[str, Any] = {
        "status": 200,
        "error": None,
        "title": "Traces",
        "heading": None,
        "show_all": show_all,
        "blocks": [],
        "latency": None,
        "trace": None,
        "timeline": [],
        "toggle_only": None,
        "toggle_all": None,
        "recent_errors": [],
    }
    bucket: int | None = None
    try:
        if "b" in query:
            bucket = parse_bucket(query["b"])
        fam: Family | None = None
        if fam_name is not None:
            fam = tracer.family(fam_name)
            if fam is None:
                raise TracePageError(404, "Unknown family")
        if "trace" in query:
            trace = tracer.find(query["trace"], query.get("ref"))
            if trace is None:
                raise TracePageError(404, "Trace not found")
            context["title"] = context["heading"] = f"{trace.family} - {trace.title}"
            context["trace"] = _block(trace, now)
            context["timeline"] = timeline(trace)
        elif fam is not None and query.get("lat"):
            context["title"] = context["heading"] = f"{fam.name} - latency"
            context["latency"] = _latency(fam, show_all)
        elif fam is not None and bucket is not None:
            label = bucket_label(bucket)
            context["title"] = context["heading"] = f"{fam.name} - {label}"
            context["blocks"] = [_block(t, now) for t in fam.traces(bucket, show_all)]
            context["toggle_only"] = href(fam=fam.name, b=bucket, all="false")
            context["toggle_all"] = href(fam=fam.name, b=bucket, all="true")
        else:
            context["recent_errors"] = recent_errors(tracer, now)
    except TracePageError as e:
        context["status"] = e.status
        context["error"] = e.message
    context["families"] = _family_rows(tracer, fam_name, bucket, show_all)
    context["bucket_count"] = len(BUCKETS)
    return context


def recent_errors(tracer: Tracer, now: float, limit: int = 20) -> list[dict[str, Any]]:
    """The latest finished traces with an error, of every family, newest first."""
    errored = sorted(
        (t for fam in tracer.families() for t in fam.errors), key=lambda t: t.start, reverse=True
    )
    rows = []
    for t in errored[:limit]:
        last = next((e.text for e in reversed(t.events()) if e.kind is Kind.ERROR), "")
        rows.append(
            {
                "name": f"{t.family} - {t.title}",
                "link": href(trace=t.id),
                "start": full_clock_us(t.start),
                "start_ago": ago(now - t.start),
                "error": last,
            }
        )
    return rows


def _latency(fam: Family, show_all: bool) -> dict[str, Any]:
    h = fam.histogram
    rows = []
    cumulative = 0
    all_text = "true" if show_all else "false"
    for i, count in enumerate(h.counts):
        cumulative += count
        pct = 100.0 * count / h.count if h.count else 0.0
        rows.append(
            {
                "label": bucket_label(i),
                "link": href(fam=fam.name, b=i, all=all_text),
                "count": count,
                "percent": f"{pct:5.2f}%",
                "width": round(pct * 2),
                "cumulative": f"{100.0 * cumulative / h.count if h.count else 0.0:5.2f}%",
            }
        )
    return {
        "count": h.count,
        "avg": go_duration_rounded(h.average, 0.001),
        "min": go_duration_rounded(h.min, 0.001),
        "max": go_duration_rounded(h.max, 0.001),
        "rows": rows,
    }
