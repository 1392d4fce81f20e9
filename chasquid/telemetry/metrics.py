"""The daemon's counters: every one declared once here, with its name, label and help text.

Names are chasquid's expvar names (``chasquid/smtpIn/commandCount``), so
dashboards built for chasquid keep working. A counter is either plain (one
number) or labelled (one number per label value: ``label`` says what the
values are). ``CATALOGUE`` lists them all in declaration order, for a
monitoring page or exporter to publish as is; ``Counters`` holds the values
of one running daemon.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Counter:
    """One counter of the catalogue; ``label`` is None for a plain counter."""

    name: str
    help: str
    label: str | None = None


_declared: dict[str, Counter] = {}


def _declare(name: str, help: str, label: str | None = None) -> Counter:
    if name in _declared:
        raise ValueError(f"counter {name} declared twice")
    counter = Counter(name, help, label)
    _declared[name] = counter
    return counter


# --- reception (chasquid.smtpsrv).
SMTP_IN_COMMANDS = _declare(
    "chasquid/smtpIn/commandCount",
    "SMTP commands received; unknown ones as unknown<VERB>",
    label="command",
)
SMTP_IN_RESPONSE_CODES = _declare(
    "chasquid/smtpIn/responseCodeCount", "Replies sent to SMTP clients", label="reply code"
)
SMTP_IN_WRONG_PROTOCOL = _declare(
    "chasquid/smtpIn/wrongProtoCount",
    "Connections closed for speaking another protocol (HTTP)",
    label="command",
)
SMTP_IN_SPF_RESULTS = _declare(
    "chasquid/smtpIn/spfResultCount", "SPF results of incoming mail", label="SPF result"
)
SMTP_IN_SECURITY_CHECKS = _declare(
    "chasquid/smtpIn/securityLevelChecks",
    "Checks of a sending domain's security level against the one on record",
    label="pass, fail or skip",
)
SMTP_IN_TLS = _declare(
    "chasquid/smtpIn/tlsCount", "Messages received, by transport", label="tls or plain"
)
SMTP_IN_LOOPS = _declare(
    "chasquid/smtpIn/loopsDetected", "Messages refused for carrying too many Received: headers"
)
SMTP_IN_CONNECTIONS_REFUSED = _declare(
    "chasquid/smtpIn/connectionsRefused",
    "count of connections refused for going over a connection limit, by limit",
    "limit",
)
SMTP_IN_HOOK_RESULTS = _declare(
    "chasquid/smtpIn/hookResults",
    "Outcomes of the post-data hook",
    label="post-data:skip, fail, badoutput or success",
)

# --- aliases (the resolver of chasquid.confdir, counted by the daemon).
ALIAS_HOOK_RESULTS = _declare(
    "chasquid/aliases/hookResults",
    "Outcomes of the alias-resolve hook",
    label="resolve:notset, skip, success, fail or parse_err",
)

# --- the queue (chasquid.queue).
QUEUE_PUTS = _declare("chasquid/queue/putCount", "Messages accepted into the queue")
QUEUE_ITEMS_WRITTEN = _declare(
    "chasquid/queue/itemsWritten", "Queue item files written (new items and updates)"
)
QUEUE_DELIVERY_ATTEMPTS = _declare(
    "chasquid/queue/deliverAttempts",
    "Delivery attempts, one per recipient",
    label="pipe, forward, email:local or email:remote",
)
QUEUE_DSNS = _declare("chasquid/queue/dsnQueued", "Delivery status notifications queued")

# --- remote delivery (chasquid.courier.smtp).
SMTP_OUT_TLS = _declare(
    "chasquid/smtpOut/tlsCount",
    "Outgoing SMTP sessions, by security reached",
    label="plain, tls:insecure, tls:secure or tls:failed",
)
SMTP_OUT_SECURITY_CHECKS = _declare(
    "chasquid/smtpOut/securityLevelChecks",
    "Checks of a destination's security level against the one on record",
    label="pass or fail",
)
SMTP_OUT_STS_MODES = _declare(
    "chasquid/smtpOut/sts/mode", "Deliveries under an MTA-STS policy", label="policy mode"
)
SMTP_OUT_STS_SECURITY = _declare(
    "chasquid/smtpOut/sts/security",
    "Sessions checked against an enforced MTA-STS policy",
    label="pass or fail",
)

# --- the MTA-STS policy cache (chasquid.courier.sts).
STS_CACHE_FETCHES = _declare("chasquid/sts/cache/fetches", "MTA-STS policies fetched")
STS_CACHE_FAILED_FETCHES = _declare(
    "chasquid/sts/cache/failedFetch", "MTA-STS policy fetches that failed"
)
STS_CACHE_HITS = _declare("chasquid/sts/cache/hits", "MTA-STS policies found in the cache")
STS_CACHE_EXPIRED = _declare(
    "chasquid/sts/cache/expired", "MTA-STS policies found in the cache but expired"
)
STS_CACHE_INVALID = _declare(
    "chasquid/sts/cache/invalid", "Cached MTA-STS policies that were not valid"
)
STS_CACHE_IO_ERRORS = _declare(
    "chasquid/sts/cache/ioErrors", "Errors reading or writing the MTA-STS cache"
)
STS_CACHE_UNMARSHAL_ERRORS = _declare(
    "chasquid/sts/cache/unmarshalErrors", "Cache files that could not be parsed"
)
STS_CACHE_MARSHAL_ERRORS = _declare(
    "chasquid/sts/cache/marshalErrors", "Policies that could not be written to the cache"
)
STS_CACHE_REFRESH_CYCLES = _declare(
    "chasquid/sts/cache/refreshCycles", "Background refreshes of the whole cache"
)
STS_CACHE_REFRESHES = _declare("chasquid/sts/cache/refreshes", "Cached MTA-STS policies refreshed")
STS_CACHE_REFRESH_ERRORS = _declare(
    "chasquid/sts/cache/refreshErrors", "Cached MTA-STS policies that failed to refresh"
)

#: Every counter, in declaration order.
CATALOGUE: tuple[Counter, ...] = tuple(_declared.values())


class Counters:
    """The values of the catalogue's counters in one daemon.

    A lock keeps increments from worker threads (queue, hooks) consistent.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[str | None, int]] = defaultdict(dict)

    def inc(self, counter: Counter, label: str | None = None, by: int = 1) -> None:
        """Add ``by`` to counter (under ``label`` for a labelled one)."""
        with self._lock:
            entry = self._values[counter.name]
            entry[label] = entry.get(label, 0) + by

    def get(self, counter: Counter, label: str | None = None) -> int:
        """Current value of a counter (0 if never incremented)."""
        with self._lock:
            return self._values.get(counter.name, {}).get(label, 0)

    def snapshot(self) -> dict[str, dict[str | None, int]]:
        """A copy of every counter incremented so far: name -> {label or None: value}."""
        with self._lock:
            return {name: dict(vals) for name, vals in self._values.items()}
