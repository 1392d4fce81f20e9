"""Peers for remote-delivery tests: a test DNS zone, a test CA and SMTP "hosts" on loopback.

Every host is a different 127.0.0.N address listening on the same port
(CHASQUID_TEST_SMTP_PORT), the way the courier expects port 25 everywhere.
Servers run in the test's own event loop (tests call asyncio.run).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session

from chasquid.confdir.domaininfo import DomainInfoStore
from chasquid.daemon.courier.smtp import SMTPCourier, Timeouts
from chasquid.daemon.courier.sts import StsCache
from chasquid.daemon.telemetry.metrics import Counters
from helpers.ports import free_port

HOSTS = [f"127.0.0.{n}" for n in range(2, 10)]


def shared_port() -> int:
    """A TCP port free on every test host address."""
    return free_port(*HOSTS)


@dataclass
class Received:
    """One message a test server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str]
    tls: bool


@dataclass
class Handler:
    """aiosmtpd handler recording messages; replies to chosen RCPTs with an error."""

    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str = "250 2.0.0 Ok: queued"
    received: list[Received] = field(default_factory=list)
    mails: int = 0

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.mails += 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.received.append(
            Received(
                str(envelope.mail_from),
                list(envelope.rcpt_tos),
                content,
                list(envelope.mail_options),
                session.ssl is not None,
            )
        )
        return self.data_reply


@dataclass
class Net:
    """The test network: DNS zone, shared SMTP/HTTPS ports, CA, data dir."""

    zone: dict[str, dict[str, list[Any]]]
    port: int
    https_port: int
    ca: trustme.CA
    tmp: Path
    counters: Counters = field(default_factory=Counters)

    def host(self, name: str, address: str) -> None:
        """Give name an A record."""
        self.zone.setdefault(name, {})["A"] = [address]

    def mx(self, domain: str, *records: tuple[int, str]) -> None:
        """Give domain MX records."""
        self.zone.setdefault(domain, {})["MX"] = list(records)

    def server_tls(self, *names: str, ca: trustme.CA | None = None) -> ssl.SSLContext:
        """A server context with a certificate for names (from the test CA, or ca)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (ca or self.ca).issue_cert(*names).configure_cert(ctx)
        return ctx

    def domaininfo(self) -> DomainInfoStore:
        """The test's domaininfo store (same directory every call)."""
        return DomainInfoStore(self.tmp / "domaininfo")

    def sts_cache(self, **kw: Any) -> StsCache:
        """The test's MTA-STS cache."""
        return StsCache(self.tmp / "sts-cache", counters=self.counters, **kw)

    def courier(self, *, timeouts: Timeouts | None = None, **kw: Any) -> SMTPCourier:
        """A courier for this network with short time limits."""
        return SMTPCourier(
            "client.example.org",
            kw.pop("domaininfo") if "domaininfo" in kw else self.domaininfo(),
            counters=self.counters,
            timeouts=timeouts or Timeouts(dial=5, reply=5, handshake=5, session=20),
            **kw,
        )


@contextlib.asynccontextmanager
async def smtp_server(
    address: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    handler: Handler | None = None,
    **smtp_kw: Any,
) -> AsyncIterator[Handler]:
    """An aiosmtpd server on address:port (STARTTLS offered when tls is given)."""
    handler = handler or Handler()

    def factory() -> SMTP:
        return SMTP(
            handler,
            hostname=f"server-{address}",
            tls_context=tls,
            require_starttls=False,
            **smtp_kw,
        )

    server = await asyncio.get_running_loop().create_server(factory, address, port)
    try:
        yield handler
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def raw_server(
    address: str,
    port: int,
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[None]:
    """A hand-written peer on address:port (for hostile behaviours)."""
    tasks: set[asyncio.Task[None]] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, address, port)
    try:
        yield
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def https_server(
    address: str, port: int, tls: ssl.SSLContext, response: bytes
) -> AsyncIterator[list[bytes]]:
    """An HTTPS server answering every request with response; yields the requests seen."""
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            requests.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(response)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, address, port, ssl=tls)
    try:
        yield requests
    finally:
        server.close()
        await server.wait_closed()


def http_response(body: str, *, status: str = "200 OK", content_type: str = "text/plain") -> bytes:
    """A complete HTTP/1.0 response."""
    data = body.encode()
    head = f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data
