"""docs/monitoring.md describes every metric the daemon exports, with its label, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from chasquid.daemon.monitoring.exposition import SOURCE_DATE_TIMESTAMP, metric_name
from chasquid.daemon.telemetry import metrics

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "monitoring.md"


def test_every_metric_is_documented_with_its_label() -> None:
    rows = re.findall(r"^\| `(chasquid_\w+)` \| (?:`(\w+)`)? *\|", DOC.read_text(), re.M)
    documented = {name: label or None for name, label in rows}
    exported = {metric_name(c.name): c.label for c in metrics.CATALOGUE}
    exported[metric_name(SOURCE_DATE_TIMESTAMP)] = None
    exported[metric_name(metrics.QUEUE_LENGTH.name)] = None
    assert documented == exported
    assert len(rows) == len(documented)  # none twice
