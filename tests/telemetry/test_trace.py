"""The trace library: events, bounds, families, buckets, look-ups and the main-log mirror."""

from __future__ import annotations

import gc
import logging
import time

import pytest

from chasquid.daemon.telemetry import trace as tr
from chasquid.daemon.telemetry.trace import (
    ACTIVE_BUCKET,
    BUCKETS,
    ERRORS_BUCKET,
    KEPT_ERRORS,
    KEPT_PER_BUCKET,
    MAX_EVENTS,
    Kind,
    Tracer,
    bucket_of,
)


def finished(
    tracer: Tracer, family: str, title: str, seconds: float, *, error: bool = False
) -> tr.Trace:
    """A finished trace that lasted ``seconds`` (its start moved back in time)."""
    t = tracer.new(family, title)
    t.start -= seconds
    if error:
        t.error("it broke")
    t.finish()
    return t


def test_id_names_the_family_and_is_unique() -> None:
    tracer = Tracer()
    a, b = tracer.new("SMTP.Conn", "1.2.3.4:5"), tracer.new("SMTP.Conn", "1.2.3.4:5")
    assert a.id.split("!")[0] == "SMTP.Conn"
    _family, nanos, rand = a.id.split("!")
    assert abs(int(nanos) / 1e9 - a.start) < 1e-3 and rand.isdigit()
    assert a.id != b.id


def test_family_names_cannot_hold_the_separator() -> None:
    with pytest.raises(ValueError, match="cannot contain"):
        Tracer().new("a!b", "x")


def test_events_errors_and_finish() -> None:
    tracer = Tracer()
    t = tracer.new("Queue.SendLoop", "abc")
    t.log("from <a@b>")
    t.debug("x@y sending")
    assert not t.errored
    t.error("x@y temporary error: 451 try later")
    assert t.errored
    assert [e.text for e in t.events()] == [
        "from <a@b>",
        "x@y sending",
        "error: x@y temporary error: 451 try later",
    ]
    assert [e.kind for e in t.events()] == [Kind.LOG, Kind.LOG, Kind.ERROR]
    fam = tracer.family("Queue.SendLoop")
    assert fam is not None and fam.traces(ACTIVE_BUCKET) == [t]
    t.finish()
    end = t.end
    t.finish()  # a second finish changes nothing
    assert t.end == end and t.finished
    assert fam.traces(ACTIVE_BUCKET) == []
    assert fam.traces(ERRORS_BUCKET) == [t]
    assert fam.traces(0) == [t]
    assert fam.histogram.count == 1


def test_events_beyond_the_limit_keep_the_first_third_and_the_latest() -> None:
    t = Tracer().new("F", "x")
    for i in range(MAX_EVENTS + 50):
        t.log(f"event {i}")
    events = t.events()
    head = MAX_EVENTS // 3
    assert len(events) == MAX_EVENTS + 1
    assert [e.text for e in events[:head]] == [f"event {i}" for i in range(head)]
    assert events[head].kind is Kind.DROPPED and events[head].text == "[ events dropped ]"
    assert events[-1].text == f"event {MAX_EVENTS + 49}"
    assert events[head + 1].text == f"event {head + 50}"
    # The marker carries the time of the first event that was let go.
    assert events[head].when <= events[head + 1].when


def test_no_dropped_marker_within_the_limit() -> None:
    t = Tracer().new("F", "x")
    for i in range(MAX_EVENTS):
        t.log(str(i))
    assert all(e.kind is not Kind.DROPPED for e in t.events())
    assert len(t.events()) == MAX_EVENTS


def test_long_and_binary_texts_are_kept_short() -> None:
    t = Tracer().new("F", "t" * 1000)
    t.log("x" * 10_000)
    text = t.events()[0].text
    assert len(text) < tr.MAX_TEXT + 50
    assert text.endswith(f"[{10_000 - tr.MAX_TEXT} more characters]")
    assert len(t.title) < 250


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [(0, 0), (0.004, 0), (0.005, 1), (0.02, 2), (0.07, 3), (0.2, 4), (0.5, 5), (3, 6), (60, 7)],
)
def test_bucket_of(seconds: float, bucket: int) -> None:
    assert bucket_of(seconds) == bucket
    assert BUCKETS[bucket] <= seconds


def test_buckets_keep_the_latest_and_slower_views_include_slower_buckets() -> None:
    tracer = Tracer()
    fast = [finished(tracer, "F", f"fast{i}", 0.0) for i in range(KEPT_PER_BUCKET + 5)]
    slow = finished(tracer, "F", "slow", 2.0)
    fam = tracer.family("F")
    assert fam is not None
    kept = fam.traces(0, include_slower=False)
    assert len(kept) == KEPT_PER_BUCKET
    assert set(kept) == set(fast[-KEPT_PER_BUCKET:])
    assert slow in fam.traces(0, include_slower=True)
    assert slow not in fam.traces(0, include_slower=False)
    assert fam.traces(6, include_slower=False) == [slow]
    # The histogram counts every finished trace, kept or not.
    assert fam.histogram.count == KEPT_PER_BUCKET + 6
    assert fam.histogram.counts[0] == KEPT_PER_BUCKET + 5
    assert fam.histogram.counts[6] == 1
    assert fam.histogram.max >= 2.0
    assert fam.histogram.min < 0.005


def test_views_are_newest_first() -> None:
    tracer = Tracer()
    first = finished(tracer, "F", "a", 0)
    time.sleep(0.001)
    second = finished(tracer, "F", "b", 0)
    fam = tracer.family("F")
    assert fam is not None
    assert fam.traces(0) == [second, first]


def test_errors_ring_is_bounded() -> None:
    tracer = Tracer()
    errs = [finished(tracer, "F", str(i), 0, error=True) for i in range(KEPT_ERRORS + 3)]
    fam = tracer.family("F")
    assert fam is not None
    assert set(fam.traces(ERRORS_BUCKET)) == set(errs[-KEPT_ERRORS:])


def test_children_are_listed_and_findable_after_their_family_lets_them_go() -> None:
    tracer = Tracer()
    parent = tracer.new("SMTP.Conn", "1.2.3.4:5")
    kid = parent.child("Queue.Put", "a@b")
    assert kid.parent is parent
    (event,) = parent.events()
    assert event.kind is Kind.CHILD and event.ref is kid
    assert event.text == "new child Queue.Put a@b"
    kid.finish()
    # Push the child out of its family's buckets.
    for i in range(KEPT_PER_BUCKET * len(BUCKETS)):
        finished(tracer, "Queue.Put", str(i), 0)
    assert tracer.find(kid.id) is None
    assert tracer.find(kid.id, ref=parent.id) is kid
    # And the other way: a child finds a parent its family no longer holds.
    parent2 = tracer.new("SMTP.Conn", "1.2.3.4:6")
    kid2 = parent2.child("Queue.Put", "c@d")
    kid2.finish()
    parent2.finish()
    for i in range(KEPT_PER_BUCKET * len(BUCKETS)):
        finished(tracer, "SMTP.Conn", str(i), 0)
    assert tracer.find(parent2.id) is None
    assert tracer.find(parent2.id, ref=kid2.id) is parent2
    assert tracer.find("Nope!1!2") is None
    assert tracer.find(parent2.id, ref="Nope!1!2") is None


def test_links_do_not_keep_traces_alive() -> None:
    tracer = Tracer()
    conn = tracer.new("SMTP.Conn", "peer")
    item = tracer.new("Queue.SendLoop", "id1")
    conn.link(item, "queued as id1")
    item.link(conn, "received over SMTP.Conn peer")
    assert list(conn.related()) == [item]
    assert tracer.find(item.id, ref=conn.id) is item
    item.finish()
    for i in range(KEPT_PER_BUCKET * len(BUCKETS)):
        finished(tracer, "Queue.SendLoop", str(i), 0)
    del item
    gc.collect()
    (event,) = conn.events()
    assert event.kind is Kind.LINK and event.ref is None
    assert list(conn.related()) == []


def test_events_are_mirrored_to_the_main_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="chasquid.trace")
    t = Tracer().new("Queue.SendLoop", "Xy12")
    t.log('someone@testserver "sent"\nnow')
    t.debug("detail")
    t.error("boom")
    t.error("already logged elsewhere", mirror=False)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [
        (logging.INFO, 'Queue.SendLoop Xy12: someone@testserver "sent"\nnow'),
        (logging.DEBUG, "Queue.SendLoop Xy12: detail"),
        (logging.INFO, "Queue.SendLoop Xy12: error: boom"),
    ]


def test_debug_events_are_not_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chasquid.trace")
    t = Tracer().new("F", "x")
    t.debug("quiet")
    assert caplog.records == []
    assert [e.text for e in t.events()] == ["quiet"]


def test_families_are_sorted_and_durations_run_while_active() -> None:
    tracer = Tracer()
    tracer.new("b", "1")
    a = tracer.new("a", "1")
    assert [f.name for f in tracer.families()] == ["a", "b"]
    assert a.duration(now=a.start + 3) == pytest.approx(3)
    assert not a.finished
