"""What a reception session knows: about the connection, and about the mail transaction."""

from __future__ import annotations

from dataclasses import dataclass, field

from chasquid.daemon.smtpsrv.headers import TLSInfo
from chasquid.daemon.smtpsrv.spf import SPFResult
from chasquid.daemon.telemetry.maillog import Client


@dataclass
class Session:
    """What the connection has established: who the client is, HELO, TLS, AUTH, errors."""

    #: The TCP peer as ``ip:port`` (a proxy's, behind a PROXY line).
    tcp_peer: str = ""
    #: The client's address: the TCP peer, or the one a PROXY line names.
    client: Client = ""
    client_ip: str = ""
    #: The key the per-client connection limit counts this connection under.
    client_key: str | None = None
    helo_domain: str = ""
    esmtp: bool = False
    tls: TLSInfo | None = None
    authenticated: bool = False
    auth_user: str = ""
    auth_domain: str = ""
    #: Replies of 400 and above sent so far; the third ends the connection.
    errors: int = 0

    @property
    def auth_identity(self) -> str:
        """``user@domain`` of the authenticated user."""
        return f"{self.auth_user}@{self.auth_domain}"


@dataclass
class Envelope:
    """The mail transaction in progress, from MAIL FROM to the reply to DATA; RSET is
    ``Envelope()``."""

    #: The sender; None before MAIL FROM, "" for the null sender.
    mail_from: str | None = None
    rcpts: list[str] = field(default_factory=list)
    spf: SPFResult | None = None
