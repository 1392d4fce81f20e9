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
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric, UnknownMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from chasquid.daemon.monitoring.sources import MetricSpec, Sources
from chasquid.daemon.telemetry import metrics
from chasquid.daemon.telemetry.metrics import Counters

SOURCE_DATE_TIMESTAMP = "chasquid/sourceDateTimestamp"
SOURCE_DATE_HELP = "timestamp when the binary was built, in seconds since epoch"

_NOT_METRIC_CHAR = re.compile(r"[^a-zA-Z0-9_]")


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
    """A prometheus-client collector reading the daemon's variables at each scrape."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        """One family per counter of the catalogue (and any it does not list) and per
        number about the daemon (source date, queue length), sorted by name."""
        families: list[Metric] = []
        for name, help_text, value in _numbers(self.sources):
            family = UnknownMetricFamily(metric_name(name), help_text)
            family.add_metric([], value)
            families.append(family)
        for spec, values in _counter_values(self.sources.counters, self.sources.catalogue):
            if spec.label is None and set(values) <= {None}:
                family = UnknownMetricFamily(metric_name(spec.name), spec.help)
                family.add_metric([], values.get(None, 0))
            else:
                family = UnknownMetricFamily(
                    metric_name(spec.name), spec.help, labels=[spec.label or "key"]
                )
                for key in sorted(k for k in values if k is not None):
                    family.add_metric([label_value(key)], values[key])
            families.append(family)
        families.sort(key=lambda f: f.name.encode())
        yield from families


def _numbers(sources: Sources) -> Iterator[tuple[str, str, int]]:
    """(name, help, value) of the numbers that are not counters."""
    yield SOURCE_DATE_TIMESTAMP, SOURCE_DATE_HELP, int(sources.build.source_date.timestamp())
    queue = sources.queue()
    if queue is not None:
        yield metrics.QUEUE_LENGTH.name, metrics.QUEUE_LENGTH.help, len(queue)


def _counter_values(
    counters: Counters, catalogue: Sequence[MetricSpec]
) -> Iterator[tuple[MetricSpec, dict[str | None, int]]]:
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


def variables(sources: Sources, memstats: Mapping[str, Any]) -> dict[str, Any]:
    """Every exported variable by name: counters, version, source date, argv and memory."""
    build = sources.build
    out: dict[str, Any] = {
        "chasquid/version": build.version,
        "chasquid/sourceDateStr": build.source_date_text,
        "cmdline": list(build.argv),
        "memstats": dict(memstats),
    }
    for name, _, value in _numbers(sources):
        out[name] = value
    for spec, values in _counter_values(sources.counters, sources.catalogue):
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
