"""Reception entry point: listener modes, the shared context and start_server."""

from __future__ import annotations

import asyncio
import enum
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from chasquid.confdir.config import Config
from chasquid.confdir.domaininfo import DomainInfoStore
from chasquid.confdir.domains import Domains
from chasquid.confdir.layout import ConfigDir
from chasquid.daemon.queue.queue import Queue
from chasquid.daemon.smtpsrv.auth import Authenticator
from chasquid.daemon.smtpsrv.certs import Certificates
from chasquid.daemon.smtpsrv.registry import Sessions
from chasquid.daemon.telemetry.maillog import MailLog
from chasquid.daemon.telemetry.metrics import Counters
from chasquid.daemon.telemetry.trace import Trace, Tracer

HANDSHAKE_TIMEOUT = 60.0
#: Connection lifetime.
LIFETIME = 20 * 60.0
#: How long DATA may wait for the client's next bytes (RFC 5321's server timeout).
DATA_IDLE_TIMEOUT = 5 * 60.0
#: Listen backlog: bursts of hundreds of connections must not be refused.
BACKLOG = 1024


class Mode(enum.Enum):
    """A listening mode: what its sessions require, and its names everywhere it appears.

    ``display`` is its name in log lines and ``Received:`` headers,
    ``config_key`` the chasquid.conf key listing its addresses and
    ``systemd_name`` the FileDescriptorName of its systemd socket. Members are
    in the order listeners are planned and started.
    """

    SMTP = ("SMTP", "smtp_address", "smtp")
    SUBMISSION = ("submission", "submission_address", "submission")
    SUBMISSION_TLS = ("submission+TLS", "submission_over_tls_address", "submission_tls")

    def __init__(self, display: str, config_key: str, systemd_name: str) -> None:
        self.display = display
        self.config_key = config_key
        self.systemd_name = systemd_name

    @property
    def is_submission(self) -> bool:
        """Whether MAIL requires a completed AUTH."""
        return self is not Mode.SMTP

    @property
    def implicit_tls(self) -> bool:
        """Whether TLS starts right at connect."""
        return self is Mode.SUBMISSION_TLS


@dataclass(frozen=True)
class ReceptionContext:
    """What every reception session shares.

    ``domains`` and ``certs`` are called for every use so the daemon can swap
    the snapshots atomically on reload.  ``max_received_headers`` is the
    loop-detection limit (chasquid's test flag ``--testing__max_received_headers``
    overrides it); ``lifetime`` is the connection lifetime and
    ``data_idle_timeout`` the longest wait for DATA's next bytes, in seconds
    (test knobs).  ``sessions`` registers the live sessions for graceful shutdown.
    Each connection records a trace (family ``SMTP.Conn``) in ``tracer``;
    ``auth_trace`` is the daemon's long-lived trace of every AUTH attempt.
    """

    config: Config
    config_dir: ConfigDir
    certs: Callable[[], Certificates]
    domains: Callable[[], Domains]
    domaininfo: DomainInfoStore
    queue: Queue
    maillog: MailLog
    counters: Counters = field(default_factory=Counters)
    authenticator: Authenticator = field(default_factory=Authenticator)
    max_received_headers: int = 50
    software: str = "chasquid"
    lifetime: float = LIFETIME
    data_idle_timeout: float = DATA_IDLE_TIMEOUT
    sessions: Sessions = field(default_factory=Sessions)
    tracer: Tracer = field(default_factory=Tracer)
    auth_trace: Trace | None = None

    @property
    def hostname(self) -> str:
        """The configured host name (a session may replace it with a valid SNI)."""
        return self.config.hostname

    @property
    def max_data_size(self) -> int:
        """The DATA size limit in octets."""
        return self.config.max_data_size_mb * 1024 * 1024


async def start_server(sock: socket.socket, mode: Mode, ctx: ReceptionContext) -> asyncio.Server:
    """Serve SMTP in ``mode`` on an already-bound listening socket (implicit TLS included)."""
    from chasquid.daemon.smtpsrv.session import SMTPSession

    loop = asyncio.get_running_loop()
    # Implicit TLS is started by the session itself, so that a failed
    # handshake is logged with the client address (asyncio would only log it
    # in debug mode) and reloaded certificates are used at once.
    return await loop.create_server(lambda: SMTPSession(mode, ctx), sock=sock, backlog=BACKLOG)
