"""Reception tests' server: a real SMTP server on 127.0.0.1 port 0 in a background loop.

tests/smtpsrv/conftest.py imports the fixtures:

    from helpers.reception import ca, conn, make_server, no_real_dns, srv
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from chasquid.confdir import config as configmod
from chasquid.confdir.domaininfo import DomainInfoStore
from chasquid.confdir.domains import Domains, load_domains
from chasquid.confdir.layout import ConfigDir
from chasquid.confdir.userdb import UserDB
from chasquid.daemon.queue.queue import Queue
from chasquid.daemon.queue.store import QueueStore
from chasquid.daemon.smtpsrv.certs import load_certificates
from chasquid.daemon.smtpsrv.server import Mode, ReceptionContext, start_server
from chasquid.daemon.telemetry.maillog import MailLog
from chasquid.daemon.telemetry.metrics import Counters
from helpers.confdirs import write_conf
from helpers.dns import dns_server
from helpers.programs import executable
from helpers.rawclient import RawClient

HOSTNAME = "mx.example.com"
PASSWORD = "secret-pass"


@dataclass
class Running:
    """A started server and what tests need to talk to it and inspect its effects."""

    port: int
    ctx: ReceptionContext
    root: Path
    ca: trustme.CA
    loop: asyncio.AbstractEventLoop

    def client_tls(self) -> ssl.SSLContext:
        """A client context trusting the test CA."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    @property
    def queue_dir(self) -> Path:
        """Where queued items land."""
        return self.root / "data" / "queue"

    def maillog_text(self) -> str:
        """The mail log written so far."""
        path = self.root / "mail.log"
        return path.read_text() if path.exists() else ""


def _write_config(root: Path, ca: trustme.CA, conf: str) -> None:
    cdir = write_conf(
        root / "conf",
        f"hostname: {HOSTNAME}\ndata_dir: {root / 'data'}\nmail_log_path: {root / 'mail.log'}\n"
        + conf,
    )
    for name, hosts in (("a_mx", [HOSTNAME]), ("b_other", ["other.example.net", "*.wild.test"])):
        cert = ca.issue_cert(*hosts)
        d = cdir / "certs" / name
        d.mkdir(parents=True)
        cert.private_key_pem.write_to_path(str(d / "privkey.pem"))
        cert.cert_chain_pems[0].write_to_path(str(d / "fullchain.pem"))
    for domain in ("example.com", "xn--bcher-kva.example"):
        (cdir / "domains" / domain).mkdir(parents=True)
    UserDB().with_user("user", PASSWORD).with_receive_only("recv").save(
        cdir / "domains" / "example.com" / "users"
    )
    (cdir / "domains" / "example.com" / "aliases").write_text("postmaster: user\n")
    (cdir / "hooks").mkdir()


@pytest.fixture(autouse=True)
def no_real_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """SPF look-ups go to an empty test zone unless a test sets its own."""
    with dns_server({}) as addr:
        monkeypatch.setenv("CHASQUID_TEST_DNS", addr)
        yield


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def make_server(tmp_path: Path, ca: trustme.CA) -> Iterator[Callable[..., Running]]:
    """Factory: start a server in ``mode`` with extra chasquid.conf text.

    ``prepare`` is called with the config dir before the domains are loaded.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers: list[asyncio.Server] = []
    contexts: list[ReceptionContext] = []

    def make(
        mode: Mode = Mode.SMTP,
        conf: str = "",
        hook: str | None = None,
        max_received_headers: int = 50,
        lifetime: float = 20 * 60.0,
        aliases: dict[str, str] | None = None,
        data_idle_timeout: float = 5 * 60.0,
        prepare: Callable[[Path], object] | None = None,
    ) -> Running:
        root = tmp_path
        _write_config(root, ca, conf)
        cdir = ConfigDir(root / "conf")
        for domain, text in (aliases or {}).items():
            cdir.aliases_file(domain).write_text(text)
        if prepare is not None:  # e.g. DKIM keys, before the domains load
            prepare(cdir.root)
        if hook is not None:
            executable(cdir.hooks / "post-data", hook)
        config = configmod.load(cdir.root)
        domains: Domains = load_domains(cdir.root, config)
        certs = load_certificates(cdir.certs)
        assert certs is not None
        store = QueueStore(root / "data" / "queue")
        store.ensure()
        counters = Counters()
        queue = Queue(store, lambda: domains.resolver, counters=counters)
        (root / "data" / "domaininfo").mkdir(parents=True, exist_ok=True)
        ctx = ReceptionContext(
            config=config,
            config_dir=cdir,
            certs=lambda: certs,
            domains=lambda: domains,
            domaininfo=DomainInfoStore(root / "data" / "domaininfo"),
            queue=queue,
            maillog=MailLog.open(str(root / "mail.log")),
            counters=counters,
            max_received_headers=max_received_headers,
            lifetime=lifetime,
            data_idle_timeout=data_idle_timeout,
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        server = asyncio.run_coroutine_threadsafe(start_server(sock, mode, ctx), loop).result(10)
        servers.append(server)
        contexts.append(ctx)
        return Running(port=port, ctx=ctx, root=root, ca=ca, loop=loop)

    yield make

    async def stop() -> None:
        for s in servers:
            s.close()
        for ctx in contexts:
            await ctx.sessions.drain(0)
        # Sessions a test left mid-dialogue (or still being accepted): end
        # them here rather than leave pending tasks to a dead loop.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture
def srv(make_server: Callable[..., Running]) -> Running:
    """A server in SMTP mode with the default configuration."""
    return make_server()


@pytest.fixture
def conn(srv: Running) -> Iterator[RawClient]:
    """A raw client connected to ``srv``, past the greeting."""
    c = RawClient(srv.port)
    assert c.reply() == f"220 {HOSTNAME} ESMTP chasquid"
    yield c
    c.close()
