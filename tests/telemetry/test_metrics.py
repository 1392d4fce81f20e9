"""The metrics catalogue and the counters of a running daemon."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from chasquid.daemon.telemetry import metrics
from chasquid.daemon.telemetry.metrics import CATALOGUE, Counters

PACKAGE = Path(metrics.__file__).resolve().parents[1]


def test_plain_and_labelled_counters() -> None:
    c = Counters()
    c.inc(metrics.QUEUE_PUTS)
    c.inc(metrics.QUEUE_PUTS, by=2)
    c.inc(metrics.SMTP_IN_COMMANDS, "EHLO")
    c.inc(metrics.SMTP_IN_COMMANDS, "EHLO")
    c.inc(metrics.SMTP_IN_COMMANDS, "QUIT")
    assert c.get(metrics.QUEUE_PUTS) == 3
    assert c.get(metrics.SMTP_IN_COMMANDS, "EHLO") == 2
    assert c.get(metrics.SMTP_IN_COMMANDS, "DATA") == 0
    assert c.snapshot() == {
        "chasquid/queue/putCount": {None: 3},
        "chasquid/smtpIn/commandCount": {"EHLO": 2, "QUIT": 1},
    }


def test_increments_from_threads_all_count() -> None:
    c = Counters()

    def work() -> None:
        for _ in range(10_000):
            c.inc(metrics.QUEUE_ITEMS_WRITTEN)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.get(metrics.QUEUE_ITEMS_WRITTEN) == 40_000


def test_catalogue_declares_each_name_once_with_help() -> None:
    names = [c.name for c in CATALOGUE]
    assert len(names) == len(set(names))
    for counter in CATALOGUE:
        assert counter.name.startswith("chasquid/"), counter
        assert counter.help, counter
    with pytest.raises(ValueError, match="declared twice"):
        metrics._declare("chasquid/queue/putCount", "again")


def test_no_counter_is_named_outside_the_catalogue() -> None:
    # Code increments catalogue entries; a name spelled out anywhere else would
    # be a counter the monitoring page does not know about.
    spelled = re.compile(r"[\"']chasquid/\w+/")
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{n}"
        for path in PACKAGE.rglob("*.py")
        if path != Path(metrics.__file__).resolve()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if spelled.search(line)
    ]
    assert offenders == []
