"""Talk to a monitoring HTTP server: an in-process one on loopback, or a daemon's.

``InProcess`` runs ``MonitoringServer`` in an event loop of its own thread,
on a loopback socket, so tests can use blocking HTTP clients against it;
``Feed`` is the daemon state its pages read (counters, traces, queue items),
built by the test. ``fetch`` is a plain http.client request.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import re
import smtplib
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from chasquid.confdir.config import Config
from chasquid.daemon.monitoring.server import DEFAULT_LIMITS, Limits, MonitoringServer
from chasquid.daemon.monitoring.sources import BuildInfo, Flag, Sources
from chasquid.daemon.queue.item import QueuedRecipient, QueueItem
from chasquid.daemon.telemetry import metrics
from chasquid.daemon.telemetry.metrics import Counters
from chasquid.daemon.telemetry.trace import Trace, Tracer
from chasquid.msgbody import Body
from helpers.daemon import Daemon, Setup

T = TypeVar("T")


@dataclass(frozen=True)
class Response:
    """What a client got back."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        """The body as UTF-8 text."""
        return self.body.decode("utf-8")


def fetch(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> Response:
    """One HTTP request on its own connection."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        resp = conn.getresponse()
        body = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    finally:
        conn.close()


class InProcess:
    """A MonitoringServer on 127.0.0.1 in a loop thread; use as a context manager."""

    def __init__(self, sources: Sources, limits: Limits = DEFAULT_LIMITS) -> None:
        self.sources = sources
        self.limits = limits
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port: int = self.sock.getsockname()[1]
        self.server = MonitoringServer(sources, limits=limits)

    def __enter__(self) -> InProcess:
        self._thread.start()
        self.call(self.server.start(self.sock))
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def call(self, coro: object) -> object:
        """Run a coroutine in the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def run(self, fn: Callable[[], T]) -> T:
        """Run a plain function in the server's loop (traces are loop-only)."""

        async def wrapper() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(30)

    def get(self, path: str, **kwargs: object) -> Response:
        """``fetch`` against this server."""
        return fetch(self.port, path, **kwargs)  # type: ignore[arg-type]


@dataclass
class Items:
    """Queue items and their next attempts, as the delivery loop would report them."""

    items: list[QueueItem] = field(default_factory=list)
    next: dict[str, datetime] = field(default_factory=dict)

    def __iter__(self) -> Iterator[QueueItem]:
        return iter(self.items)

    def next_attempt(self, item_id: str) -> datetime | None:
        return self.next.get(item_id)


@dataclass
class Feed:
    """The state the pages read, and what POST /exit did."""

    counters: Counters = field(default_factory=Counters)
    tracer: Tracer = field(default_factory=Tracer)
    queue: Items | None = None
    exits: int = 0

    def sources(self) -> Sources:
        queue = self.queue

        class View:
            def items(self) -> Iterable[QueueItem]:
                return list(queue or [])

            def next_attempt(self, item_id: str) -> datetime | None:
                return queue.next_attempt(item_id) if queue else None

            def __len__(self) -> int:
                return len(list(queue or []))

        def request_exit() -> None:
            self.exits += 1

        return Sources(
            config=Config(hostname="mx.example.org", data_dir="/var/lib/chasquid"),
            counters=self.counters,
            catalogue=metrics.CATALOGUE,
            tracer=self.tracer,
            build=BuildInfo(
                "1.2.3",
                datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                ["chasquid", "-config_dir=/etc/chasquid", "-v=1"],
            ),
            flags=[
                Flag("v", "1", True),
                Flag("config_dir", "/etc/chasquid", True),
                Flag("logtime", "false", False),
                Flag("testing__reload_every", "30s", False),
            ],
            queue=lambda: View() if queue is not None else None,
            request_exit=request_exit,
            os_hostname="box",
        )


def queue_item(item_id: str, *rcpts: QueuedRecipient, age: float = 60) -> QueueItem:
    return QueueItem(
        id=item_id,
        sender="sender@example.org",
        to=tuple(r.original_address or r.address for r in rcpts),
        rcpts=rcpts,
        body=Body.of(b"Subject: secret body text\r\n\r\nthe body must never show\r\n"),
        created_at=datetime.now(UTC) - timedelta(seconds=age),
    )


def conversation(tracer: Tracer, helo: str = "client.example") -> tuple[Trace, Trace, Trace]:
    """A connection that queued an item that had one delivery attempt."""
    conn = tracer.new("SMTP.Conn", "127.0.0.1:40000")
    conn.debug("Connected, mode: SMTP")
    conn.debug(f"-> HELO {helo}")
    conn.debug("<- 250  mx.example.org")
    loop = tracer.new("Queue.SendLoop", "AbCdEfGhIjK")
    conn.link(loop, "queued as AbCdEfGhIjK")
    loop.link(conn, "received on SMTP.Conn 127.0.0.1:40000")
    conn.finish()
    attempt = loop.child("Courier.SMTP.Deliver", "someone@remote.example")
    attempt.error("451 4.7.0 try again later")
    attempt.finish()
    loop.debug("someone@remote.example temporary error: 451 4.7.0 try again later")
    return conn, loop, attempt


# --- a daemon that handled real mail (tests/monitoring/conftest.py's ``served``).

HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1">'

MESSAGE = b"From: user@testserver\r\nSubject: the body is secret\r\n\r\nbody text never shown\r\n"


@dataclass
class Served:
    """The daemon, its monitoring port, and the queue ids of the mail it was sent."""

    setup: Setup
    daemon: Daemon
    port: int
    delivered: str
    deferred: str
    bounced: str
    remote: str

    def get(self, path: str, **kwargs: object) -> Response:
        """A request to the daemon's monitoring server."""
        return fetch(self.port, path, **kwargs)  # type: ignore[arg-type]

    @property
    def base(self) -> str:
        """The monitoring server's URL."""
        return f"http://127.0.0.1:{self.port}"


def submit(setup: Setup, rcpt: str) -> str:
    """Send MESSAGE over authenticated submission; the queue id from the 250 reply."""
    with smtplib.SMTP_SSL(
        "127.0.0.1", setup.submission_tls_port, context=setup.client_context(), timeout=30
    ) as c:
        c.login(setup.user_addr, setup.password)
        c.mail(setup.user_addr)
        code, _ = c.rcpt(rcpt)
        assert code == 250, rcpt
        code, reply = c.data(MESSAGE)
        assert code == 250, reply
    m = re.search(rb"Queued as (\S+)", reply)
    assert m, reply
    return m.group(1).decode()


def hostile_sessions(setup: Setup) -> None:
    """HTML in HELO, MAIL FROM and the AUTH identity, and a wrong password.

    Two sessions: three errors end a session.
    """
    with smtplib.SMTP("127.0.0.1", setup.smtp_port, timeout=30) as c:
        c.docmd("HELO", HOSTILE)
        c.docmd("MAIL", f"FROM:<{HOSTILE}@example.com>")
        c.docmd("RSET")
    with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=30) as c:
        c.starttls(context=setup.client_context())
        c.ehlo("client.example")
        token = base64.b64encode(f"\0{HOSTILE}@testserver\0wrong".encode()).decode()
        c.docmd("AUTH", f"PLAIN {token}")
        wrong = base64.b64encode(b"\0user@testserver\0wrong password").decode()
        code, _ = c.docmd("AUTH", f"PLAIN {wrong}")
        assert code == 535
