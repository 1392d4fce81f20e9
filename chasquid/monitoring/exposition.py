"""The counters for tools: ``/metrics`` through prometheus-client, ``/debug/vars`` as JSON.

Metric names are chasquid's (``chasquid/queue/putCount`` becomes
``chasquid_queue_putCount``) so dashboards and alerts written for chasquid
keep working. They are exported as untyped (``unknown`` in OpenMetrics):
typing them as counters would make prometheus-client add ``_total`` to every
sample name.
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric, UnknownMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from chasquid.telemetry.metrics import Counters

SOURCE_DATE_TIMESTAMP = "chasquid/sourceDateTimestamp"
SOURCE_DATE_HELP = "timestamp when the binary was built, in seconds since epoch"

_NOT_METRIC_CHAR = re.compile(r"[^a-zA-Z0-9_]")


class MetricSpec(Protocol):
    """How one counter is exported: its variable name, map label (None if plain), help text."""

    @property
    def name(self) -> str: ...

    @property
    def label(self) -> str | None: ...

    @property
    def help(self) -> str: ...


@dataclass(frozen=True)
class BuildInfo:
    """What the daemon exports about itself besides counters."""

    version: str
    source_date: datetime
    argv: Sequence[str]

    @property
    def source_date_text(self) -> str:
        """``YYYY-MM-DD HH:MM:SS ±hhmm``."""
        return self.source_date.strftime("%Y-%m-%d %H:%M:%S %z")


def metric_name(variable: str) -> str:
    """The OpenMetrics name of a variable: every character outside ``[a-zA-Z0-9_]`` becomes
    ``_`` (one per character) and a leading digit gets an ``i`` before it."""
    name = _NOT_METRIC_CHAR.sub("_", variable)
    return "i" + name if name[:1].isdigit() else name


def label_value(key: str) -> str:
    """A map key as a label value: lone surrogates (undecodable bytes) escaped."""
    try:
        key.encode("utf-8")
        return key
    except UnicodeEncodeError:
        return key.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


class CountersCollector(Collector):
    """A prometheus-client collector reading the daemon's counters at each scrape."""

    def __init__(self, counters: Counters, catalogue: Sequence[MetricSpec], build: BuildInfo):
        self.counters = counters
        self.catalogue = catalogue
        self.build = build

    def collect(self) -> Iterator[Metric]:
        """One family per counter of the catalogue (and any counter it does not list), sorted."""
        families: list[Metric] = []
        stamp = UnknownMetricFamily(metric_name(SOURCE_DATE_TIMESTAMP), SOURCE_DATE_HELP)
        stamp.add_metric([], int(self.build.source_date.timestamp()))
        families.append(stamp)
        for spec, values in _counter_values(self.counters, self.catalogue):
            label = spec.label if spec is not None else None
            name = spec.name if spec is not None else ""
            help_text = spec.help if spec is not None else ""
            plain = values.get(None)
            if label is None and set(values) <= {None}:
                family = UnknownMetricFamily(metric_name(name), help_text)
                family.add_metric([], plain or 0)
            else:
                family = UnknownMetricFamily(metric_name(name), help_text, labels=[label or "key"])
                for key in sorted(k for k in values if k is not None):
                    family.add_metric([label_value(key)], values[key])
            families.append(family)
        families.sort(key=lambda f: f.name.encode())
        yield from families


def _counter_values(
    counters: Counters, catalogue: Sequence[MetricSpec]
) -> Iterator[tuple[Any, dict[str | None, int]]]:
    """(spec, values) for every declared counter, then (a stand-in spec, values) for others."""
    snapshot = counters.snapshot()
    declared = set()
    for spec in catalogue:
        declared.add(spec.name)
        yield spec, snapshot.get(spec.name, {})
    for name in sorted(set(snapshot) - declared):
        values = snapshot[name]
        yield _Undeclared(name, None if set(values) <= {None} else "key"), values


@dataclass(frozen=True)
class _Undeclared:
    name: str
    label: str | None
    help: str = ""


def metrics_registry(collector: CountersCollector) -> CollectorRegistry:
    """A registry holding only the daemon's counters (no process or GC collectors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render_metrics(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The exposition for a scraper's Accept header: (body, Content-Type).

    OpenMetrics for scrapers that ask for it (Prometheus does), the classic
    text format otherwise (curl, promtool).
    """
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def variables(
    counters: Counters,
    catalogue: Sequence[MetricSpec],
    build: BuildInfo,
    memstats: Mapping[str, Any],
) -> dict[str, Any]:
    """Every exported variable by name: counters, version, source date, argv and memory."""
    out: dict[str, Any] = {
        "chasquid/version": build.version,
        "chasquid/sourceDateStr": build.source_date_text,
        SOURCE_DATE_TIMESTAMP: int(build.source_date.timestamp()),
        "cmdline": list(build.argv),
        "memstats": dict(memstats),
    }
    for spec, values in _counter_values(counters, catalogue):
        if spec.label is None and set(values) <= {None}:
            out[spec.name] = values.get(None, 0)
        else:
            out[spec.name] = {k: values[k] for k in sorted(k for k in values if k is not None)}
    return out


def render_vars(variables: Mapping[str, Any]) -> bytes:
    """``/debug/vars``: one ``"name": value`` per line, sorted by name."""
    entries = [
        f"{json.dumps(name)}: {json.dumps(value, sort_keys=True)}"
        for name, value in sorted(variables.items())
    ]
    return ("{\n" + ",\n".join(entries) + "\n}\n").encode()


def memstats(tasks: int) -> dict[str, Any]:
    """Memory and runtime figures of the process (the ``memstats`` variable)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = _current_rss()
    return {
        "rss_bytes": rss,
        "max_rss_bytes": usage.ru_maxrss * 1024,
        "gc_counts": list(gc.get_count()),
        "gc_collections": [s["collections"] for s in gc.get_stats()],
        "threads": threading.active_count(),
        "asyncio_tasks": tasks,
        "python": sys.version.split()[0],
    }


def _current_rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")
