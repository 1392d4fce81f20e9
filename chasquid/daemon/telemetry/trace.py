"""Traces: what happened to one connection, queue item or delivery attempt, kept in memory.

A trace is a short, time-stamped story (events, an error flag, its duration)
that the monitoring pages show. Traces are grouped in families
(``SMTP.Conn``, ``Queue.SendLoop``, ...); each family keeps every unfinished
trace, and of the finished ones only the last few per latency bucket and the
last few with an error, so memory stays bounded however long the daemon runs.
Nothing is written to disk.

Every event is also written to the main log (``<family> <title>: <text>``),
at debug level for debug events and at info level otherwise.

Traces are used from the event loop only; nothing here takes a lock.

``current()`` is the trace of the operation the running task is doing (a
delivery attempt sets it with ``running``), so a courier deep below can add
detail to it without every call in between passing it along.
"""

from __future__ import annotations

import logging
import random
import time
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import IntEnum

#: Lower bounds, in seconds, of the latency buckets finished traces are filed in.
BUCKETS: tuple[float, ...] = (0.0, 0.005, 0.01, 0.05, 0.1, 0.3, 1.0, 10.0)
#: Finished traces kept per latency bucket, and errored ones per family.
KEPT_PER_BUCKET = 10
KEPT_ERRORS = 10
#: Events kept per trace: the first third forever, then a ring of the most recent.
MAX_EVENTS = 100
#: Longer event texts are cut (an SMTP client chooses what goes into its trace).
MAX_TEXT = 2000

#: Bucket numbers with a special meaning in views.
ERRORS_BUCKET = -2
ACTIVE_BUCKET = -1

log = logging.getLogger("chasquid.trace")


class Kind(IntEnum):
    """What an event is."""

    LOG = 0
    ERROR = 1
    CHILD = 2  # a child trace was created: ``ref`` is the child
    LINK = 3  # a related trace (not a child): ``ref`` is it, if still kept
    DROPPED = 4  # events between the kept head and the ring were dropped


class Event:
    """One entry of a trace: when, what kind, its text and the trace it refers to."""

    __slots__ = ("_ref", "kind", "text", "when")

    def __init__(self, when: float, kind: Kind, text: str, ref: Trace | None = None) -> None:
        self.when = when
        self.kind = kind
        self.text = text
        # Links are weak: a link must not keep a whole web of traces alive.
        # Children are strong, so a parent still shows its children once their
        # own family has let them go.
        self._ref: Trace | weakref.ref[Trace] | None
        if ref is not None and kind is Kind.LINK:
            self._ref = weakref.ref(ref)
        else:
            self._ref = ref

    @property
    def ref(self) -> Trace | None:
        """The child or linked trace (None if none, or a linked trace no longer kept)."""
        r = self._ref
        if isinstance(r, weakref.ref):
            return r()
        return r


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """Cut text to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


class Trace:
    """One traced operation; create with ``Tracer.new`` or ``Trace.child``, end with ``finish``."""

    __slots__ = (
        "__weakref__",
        "_dropped",
        "_family",
        "_head",
        "_ring",
        "end",
        "errored",
        "family",
        "id",
        "parent",
        "start",
        "title",
    )

    def __init__(self, family: Family, title: str, parent: Trace | None, start: float) -> None:
        self._family = family
        self.family = family.name
        self.title = clip(title, 200)
        self.start = start
        self.id = f"{family.name}!{int(start * 1e9)}!{random.getrandbits(64)}"
        self.end: float | None = None
        self.errored = False
        self.parent = parent
        self._head: list[Event] = []
        self._ring: deque[Event] = deque(maxlen=MAX_EVENTS - MAX_EVENTS // 3)
        self._dropped: float | None = None

    # --- recording

    def _add(self, event: Event) -> None:
        if len(self._head) < MAX_EVENTS // 3:
            self._head.append(event)
            return
        ring = self._ring
        if len(ring) == ring.maxlen and self._dropped is None:
            self._dropped = ring[0].when
        ring.append(event)

    def log(self, text: str) -> None:
        """Record an event (mirrored to the main log at info level)."""
        text = clip(text)
        self._add(Event(time.time(), Kind.LOG, text))
        if log.isEnabledFor(logging.INFO):
            self._mirror(logging.INFO, text)

    def debug(self, text: str) -> None:
        """Record a detail (mirrored to the main log only at debug level)."""
        text = clip(text)
        self._add(Event(time.time(), Kind.LOG, text))
        if log.isEnabledFor(logging.DEBUG):
            self._mirror(logging.DEBUG, text)

    def error(self, text: str, *, mirror: bool = True) -> None:
        """Record an error and flag the trace; ``mirror=False`` when the caller logs it itself."""
        text = "error: " + clip(text)
        self.errored = True
        self._add(Event(time.time(), Kind.ERROR, text))
        if mirror and log.isEnabledFor(logging.INFO):
            self._mirror(logging.INFO, text)

    def _mirror(self, level: int, text: str) -> None:
        # The main log escapes what could break or forge a line.
        log.log(level, "%s %s: %s", self.family, self.title, text)

    def child(self, family: str, title: str) -> Trace:
        """A new trace of ``family`` whose parent is this one (listed among its events)."""
        kid = self._family.tracer.new(family, title, parent=self)
        self._add(Event(kid.start, Kind.CHILD, f"new child {kid.family} {kid.title}", kid))
        return kid

    def link(self, other: Trace, text: str) -> None:
        """Record that ``other`` is related (e.g. the queue item a connection produced)."""
        self._add(Event(time.time(), Kind.LINK, clip(text), other))

    def finish(self) -> None:
        """End the trace: it leaves the family's active set and is filed by latency."""
        if self.end is not None:
            return
        self.end = time.time()
        self._family.file(self)

    # --- reading

    @property
    def finished(self) -> bool:
        """Whether ``finish`` was called."""
        return self.end is not None

    def duration(self, now: float | None = None) -> float:
        """Seconds from start to end (to ``now`` while it runs)."""
        end = self.end if self.end is not None else (time.time() if now is None else now)
        return max(0.0, end - self.start)

    def events(self) -> list[Event]:
        """The kept events in order, with one DROPPED marker where some were let go."""
        out = list(self._head)
        if self._dropped is not None:
            out.append(Event(self._dropped, Kind.DROPPED, "[ events dropped ]"))
        out.extend(self._ring)
        return out

    def related(self) -> Iterator[Trace]:
        """Children and linked traces still kept, in event order."""
        for e in self.events():
            if e.kind in (Kind.CHILD, Kind.LINK):
                ref = e.ref
                if ref is not None:
                    yield ref


def bucket_of(duration: float) -> int:
    """Index of the bucket with the largest lower bound not above ``duration``."""
    index = 0
    for i, bound in enumerate(BUCKETS):
        if duration >= bound:
            index = i
    return index


@dataclass
class Histogram:
    """Latency of every finished trace of a family (not only the kept ones)."""

    counts: list[int]
    count: int = 0
    total: float = 0.0
    min: float = 0.0
    max: float = 0.0

    def add(self, duration: float) -> None:
        """Account one finished trace."""
        self.counts[bucket_of(duration)] += 1
        if self.count == 0 or duration < self.min:
            self.min = duration
        self.max = max(self.max, duration)
        self.count += 1
        self.total += duration

    @property
    def average(self) -> float:
        """Mean duration, 0 when nothing finished yet."""
        return self.total / self.count if self.count else 0.0


class Family:
    """The traces of one family: active ones, and a bounded set of finished ones."""

    def __init__(self, tracer: Tracer, name: str) -> None:
        self.tracer = tracer
        self.name = name
        self.active: dict[str, Trace] = {}
        self.buckets: list[deque[Trace]] = [deque(maxlen=KEPT_PER_BUCKET) for _ in BUCKETS]
        self.errors: deque[Trace] = deque(maxlen=KEPT_ERRORS)
        self.histogram = Histogram(counts=[0] * len(BUCKETS))

    def file(self, trace: Trace) -> None:
        """Move a finished trace from the active set to its bucket (and to errors)."""
        self.active.pop(trace.id, None)
        duration = trace.duration()
        self.buckets[bucket_of(duration)].append(trace)
        if trace.errored:
            self.errors.append(trace)
        self.histogram.add(duration)

    def traces(self, bucket: int, include_slower: bool = True) -> list[Trace]:
        """The traces of a view, newest start first.

        ``bucket`` is ERRORS_BUCKET, ACTIVE_BUCKET or a latency bucket index;
        with ``include_slower`` a latency view also shows every slower bucket.
        """
        if bucket == ERRORS_BUCKET:
            chosen: list[Trace] = list(self.errors)
        elif bucket == ACTIVE_BUCKET:
            chosen = list(self.active.values())
        else:
            last = len(BUCKETS) if include_slower else bucket + 1
            chosen = [t for b in self.buckets[bucket:last] for t in b]
        chosen.sort(key=lambda t: t.start, reverse=True)
        return chosen

    def kept(self) -> Iterator[Trace]:
        """Every trace this family still holds (a finished errored one may appear twice)."""
        yield from self.active.values()
        for b in self.buckets:
            yield from b
        yield from self.errors

    def find(self, trace_id: str) -> Trace | None:
        """A trace of this family still held, by id."""
        found = self.active.get(trace_id)
        if found is not None:
            return found
        return next((t for t in self.kept() if t.id == trace_id), None)


class Tracer:
    """Every family of the process; the monitoring server reads it."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}

    def new(self, family: str, title: str, *, parent: Trace | None = None) -> Trace:
        """Start a trace of ``family`` (created on first use)."""
        fam = self._families.get(family)
        if fam is None:
            if "!" in family:
                raise ValueError(f"a trace family name cannot contain '!': {family!r}")
            fam = self._families[family] = Family(self, family)
        trace = Trace(fam, title, parent, time.time())
        fam.active[trace.id] = trace
        return trace

    def families(self) -> list[Family]:
        """Every family, sorted by name."""
        return [self._families[n] for n in sorted(self._families)]

    def family(self, name: str) -> Family | None:
        """One family by name."""
        return self._families.get(name)

    def find(self, trace_id: str, ref: str | None = None) -> Trace | None:
        """A trace by id; ``ref`` (a parent's, child's or linked trace's id) finds one
        its own family has already let go."""
        fam = self._families.get(trace_id.partition("!")[0])
        found = fam.find(trace_id) if fam is not None else None
        if found is not None or not ref:
            return found
        other = self.find(ref)
        if other is None:
            return None
        if other.parent is not None and other.parent.id == trace_id:
            return other.parent
        return next((t for t in other.related() if t.id == trace_id), None)


_current: ContextVar[Trace | None] = ContextVar("chasquid_current_trace", default=None)


def current() -> Trace | None:
    """The trace of what the running task is doing, if something set one."""
    return _current.get()


@contextmanager
def running(trace: Trace) -> Iterator[Trace]:
    """Make ``trace`` the current one within the block (in this task and the tasks it starts)."""
    token = _current.set(trace)
    try:
        yield trace
    finally:
        _current.reset(token)
