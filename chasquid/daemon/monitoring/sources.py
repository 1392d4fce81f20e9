"""What the monitoring server reads from the daemon, handed to it as one frozen object."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from chasquid.confdir.config import Config
from chasquid.daemon.queue.item import QueueItem
from chasquid.daemon.telemetry.metrics import Counters
from chasquid.daemon.telemetry.trace import Tracer


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


class QueueSource(Protocol):
    """The queue as the pages see it (chasquid.daemon.queue.delivery.Delivery is one)."""

    def items(self) -> Iterable[QueueItem]:
        """Every item in the queue, in its current state."""
        ...

    def next_attempt(self, item_id: str) -> datetime | None:
        """When the item's next attempt is due (None while attempting)."""
        ...

    def __len__(self) -> int:
        """How many items are in the queue."""
        ...


@dataclass(frozen=True)
class Flag:
    """One daemon flag as ``/debug/flags`` shows it."""

    name: str
    value: str  # rendered as on the command line: true/false, 30s, ...
    given: bool  # on the command line, rather than its default


@dataclass(frozen=True)
class Sources:
    """Everything the pages show; ``queue`` returns None until the queue is loaded."""

    config: Config
    counters: Counters
    catalogue: Sequence[MetricSpec]
    tracer: Tracer
    build: BuildInfo
    flags: Sequence[Flag]
    queue: Callable[[], QueueSource | None]
    #: Asks the daemon to shut down gracefully (POST /exit).
    request_exit: Callable[[], None]
    #: The OS host name, for the index page (the config's hostname may differ).
    os_hostname: str
