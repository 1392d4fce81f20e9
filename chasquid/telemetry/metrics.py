"""Monitoring counters: a small registry the monitoring server can expose."""

from __future__ import annotations

import threading
from collections import defaultdict

#: Outcomes of the alias-resolve hook, labelled ``resolve:<outcome>``.
ALIAS_HOOK_RESULTS = "chasquid/aliases/hookResults"


class Counters:
    """Named counters, each either a plain integer or a map keyed by a label.

    Names follow chasquid's expvar names (e.g. ``chasquid/smtpIn/commandCount``).
    A lock keeps increments from worker threads (queue, hooks) consistent.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[str | None, int]] = defaultdict(dict)

    def inc(self, name: str, label: str | None = None, by: int = 1) -> None:
        """Add ``by`` to counter ``name`` (under ``label`` for map counters)."""
        with self._lock:
            entry = self._values[name]
            entry[label] = entry.get(label, 0) + by

    def get(self, name: str, label: str | None = None) -> int:
        """Current value of a counter (0 if never incremented)."""
        with self._lock:
            return self._values.get(name, {}).get(label, 0)

    def snapshot(self) -> dict[str, dict[str | None, int]]:
        """A copy of every counter: name -> {label or None: value}."""
        with self._lock:
            return {name: dict(vals) for name, vals in self._values.items()}
