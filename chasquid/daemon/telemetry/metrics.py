"""The daemon's counters: every one declared once here, with its name, label and help text.

Names, label names and help texts are chasquid's (``chasquid/smtpIn/commandCount``,
label ``command``), so dashboards built for chasquid keep working. A counter
is either plain (one number) or a map with one number per value of its label
(``label`` is the label's name in /metrics). ``CATALOGUE`` lists them all in
declaration order, for the monitoring server to publish as is; ``Counters``
holds the values of one running daemon.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Counter:
    """One counter of the catalogue; ``label`` (the map's label name) is None for a plain one."""

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


# --- reception (chasquid.daemon.smtpsrv).
SMTP_IN_COMMANDS = _declare(
    "chasquid/smtpIn/commandCount", "count of SMTP commands received, by command", "command"
)
SMTP_IN_RESPONSE_CODES = _declare(
    "chasquid/smtpIn/responseCodeCount", "response codes returned to SMTP commands", "code"
)
SMTP_IN_WRONG_PROTOCOL = _declare(
    "chasquid/smtpIn/wrongProtoCount", "count of commands for other protocols", "command"
)
SMTP_IN_SPF_RESULTS = _declare("chasquid/smtpIn/spfResultCount", "SPF result count", "result")
SMTP_IN_SECURITY_CHECKS = _declare(
    "chasquid/smtpIn/securityLevelChecks", "incoming security level check results", "result"
)
SMTP_IN_TLS = _declare(
    "chasquid/smtpIn/tlsCount", "count of TLS usage in incoming connections", "status"
)
SMTP_IN_LOOPS = _declare("chasquid/smtpIn/loopsDetected", "count of loops detected")
SMTP_IN_CONNECTIONS_REFUSED = _declare(
    "chasquid/smtpIn/connectionsRefused",
    "count of connections refused for going over a connection limit, by limit",
    "limit",
)
SMTP_IN_HOOK_RESULTS = _declare(
    "chasquid/smtpIn/hookResults", "count of hook invocations, by result", "result"
)
# DKIM: messages signed (with every key of the sender's domain; none counted for
# domains without keys) and signing failures; of incoming (unauthenticated)
# messages, those with at least one signature, with none, with at least one valid,
# and those whose header section could not be read for DKIM.
DKIM_SIGNED = _declare("chasquid/smtpIn/dkimSigned", "count of successful DKIM signs")
DKIM_SIGN_ERRORS = _declare("chasquid/smtpIn/dkimSignErrors", "count of DKIM sign errors")
DKIM_VERIFY_FOUND = _declare(
    "chasquid/smtpIn/dkimVerifyFound", "count of messages with at least one DKIM signature"
)
DKIM_VERIFY_NOT_FOUND = _declare(
    "chasquid/smtpIn/dkimVerifyNotFound", "count of messages with no DKIM signatures"
)
DKIM_VERIFY_VALID = _declare(
    "chasquid/smtpIn/dkimVerifyValid",
    "count of messages with at least one valid DKIM signature",
)
DKIM_VERIFY_ERRORS = _declare(
    "chasquid/smtpIn/dkimVerifyErrors", "count of DKIM verification errors"
)

# --- aliases (the resolver of chasquid.confdir reports, the daemon counts).
ALIAS_HOOK_RESULTS = _declare(
    "chasquid/aliases/hookResults", "count of aliases hook results, by hook and result", "result"
)

# --- the queue (chasquid.daemon.queue).
QUEUE_PUTS = _declare(
    "chasquid/queue/putCount", "count of envelopes attempted to be put in the queue"
)
QUEUE_ITEMS_WRITTEN = _declare(
    "chasquid/queue/itemsWritten", "count of items the queue wrote to disk"
)
QUEUE_DELIVERY_ATTEMPTS = _declare(
    "chasquid/queue/deliverAttempts",
    "attempts to deliver mail, by recipient type",
    "recipient_type",
)
QUEUE_DELIVERY_RESULTS = _declare(
    "chasquid/queue/deliveryResults",
    "outcomes of delivery attempts: sent, temporary or permanent failure",
    "result",
)
QUEUE_DSNS = _declare("chasquid/queue/dsnQueued", "count of DSNs that we generated (queued)")

# --- remote delivery (chasquid.daemon.courier.smtp).
SMTP_OUT_TLS = _declare(
    "chasquid/smtpOut/tlsCount", "count of TLS status on outgoing connections", "result"
)
SMTP_OUT_SECURITY_CHECKS = _declare(
    "chasquid/smtpOut/securityLevelChecks",
    "count of security level checks on outgoing connections",
    "result",
)
SMTP_OUT_STS_MODES = _declare(
    "chasquid/smtpOut/sts/mode", "count of STS checks on outgoing connections", "mode"
)
SMTP_OUT_STS_SECURITY = _declare(
    "chasquid/smtpOut/sts/security",
    "count of STS security checks on outgoing connections",
    "result",
)

# --- the MTA-STS policy cache (chasquid.daemon.courier.sts).
STS_CACHE_FETCHES = _declare(
    "chasquid/sts/cache/fetches", "count of total fetches in the STS cache"
)
STS_CACHE_HITS = _declare("chasquid/sts/cache/hits", "count of hits in the STS cache")
STS_CACHE_EXPIRED = _declare(
    "chasquid/sts/cache/expired", "count of expired entries in the STS cache"
)
STS_CACHE_IO_ERRORS = _declare(
    "chasquid/sts/cache/ioErrors", "count of I/O errors when maintaining STS cache"
)
STS_CACHE_FAILED_FETCHES = _declare(
    "chasquid/sts/cache/failedFetch", "count of failed fetches in the STS cache"
)
STS_CACHE_INVALID = _declare(
    "chasquid/sts/cache/invalid", "count of invalid policies in the STS cache"
)
STS_CACHE_MARSHAL_ERRORS = _declare(
    "chasquid/sts/cache/marshalErrors", "count of marshalling errors when maintaining STS cache"
)
STS_CACHE_UNMARSHAL_ERRORS = _declare(
    "chasquid/sts/cache/unmarshalErrors", "count of unmarshalling errors in STS cache"
)
STS_CACHE_REFRESH_CYCLES = _declare(
    "chasquid/sts/cache/refreshCycles", "count of STS cache refresh cycles"
)
STS_CACHE_REFRESHES = _declare("chasquid/sts/cache/refreshes", "count of STS cache refreshes")
STS_CACHE_REFRESH_ERRORS = _declare(
    "chasquid/sts/cache/refreshErrors", "count of STS cache refresh errors"
)

#: Every counter, in declaration order.
CATALOGUE: tuple[Counter, ...] = tuple(_declared.values())


@dataclass(frozen=True)
class Gauge:
    """A value read when the monitoring server publishes it, rather than counted."""

    name: str
    help: str


QUEUE_LENGTH = Gauge("chasquid/queue/length", "count of items in the queue")


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
