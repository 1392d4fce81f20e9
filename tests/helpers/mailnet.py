"""Several real chasquid daemons mailing each other on loopback "hosts".

Each daemon listens for SMTP on its own 127.0.0.N address and the same port
(CHASQUID_TEST_SMTP_PORT), finds the others through a per-test DNS zone
(CHASQUID_TEST_DNS) and trusts one test CA (SSL_CERT_FILE). Local mail goes
into Maildirs through a shell MDA. Also here: a STARTTLS-stripping relay
(a downgrade attacker, or simply a peer without TLS) and an HTTPS server for
MTA-STS policies, both in threads so the tests themselves stay synchronous.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.parser
import email.policy
import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme

from helpers.daemon import Daemon, Setup, make_setup, start
from helpers.dns import dns_server
from helpers.mail import maildir_mda, maildir_messages, maildir_senders, parse_message, wait_until
from helpers.smtppeers import shared_port

#: A short retry schedule so a temporary failure is retried within a second or so.
FAST_RETRY = "--testing__retry_schedule=1s"


@dataclass
class Peer:
    """One daemon of the network: its setup, its process, its loopback host."""

    name: str
    setup: Setup
    host: str
    daemon: Daemon | None = None

    @property
    def domain(self) -> str:
        """The daemon's (first) local domain."""
        return self.setup.domain

    @property
    def user_addr(self) -> str:
        """The test user's address."""
        return self.setup.user_addr

    def mailbox(self, user: str = "user") -> list[email.message.EmailMessage]:
        """Messages delivered to a local user, oldest first, parsed."""
        return [parse_message(m) for m in self.raw_mailbox(user)]

    def raw_mailbox(self, user: str = "user") -> list[bytes]:
        """Messages delivered to a local user, oldest first, as bytes."""
        return maildir_messages(self.setup.root, user)

    def envelope_senders(self, user: str = "user") -> list[str]:
        """Envelope senders of the messages delivered to a local user, oldest first."""
        return maildir_senders(self.setup.root, user)

    def wait_mail(self, count: int = 1, user: str = "user", timeout: float = 30.0) -> None:
        """Wait until ``count`` messages reached the user's Maildir."""
        wait_until(
            lambda: len(self.mailbox(user)) >= count,
            timeout,
            f"{count} message(s) for {user} on {self.name}",
        )

    def send(
        self,
        rcpts: Sequence[str],
        body: str = "hello\r\n",
        *,
        sender: str | None = None,
        subject: str = "test",
    ) -> None:
        """Submit a message as the test user (implicit TLS + AUTH) to this daemon."""
        import smtplib

        s = self.setup
        sender = sender or s.user_addr
        data = (
            f"From: {sender}\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.monotonic_ns()}@test>\r\n\r\n{body}"
        ).encode()
        utf8 = not (sender.isascii() and all(r.isascii() for r in rcpts))
        from chasquid.normalize import addr_to_ascii

        with smtplib.SMTP_SSL(
            "127.0.0.1", s.submission_tls_port, context=s.client_context(), timeout=30
        ) as c:
            # smtplib writes AUTH PLAIN in ASCII only: log in with the IDNA form.
            c.login(addr_to_ascii(s.user_addr), s.password)
            refused = c.sendmail(sender, list(rcpts), data, ["SMTPUTF8"] if utf8 else [])
            assert refused == {}, refused

    def util(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run chasquid-util against this daemon's config dir."""
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "from chasquid_util.cli import main; main()",
                f"-C={self.setup.config_dir}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def queue(self) -> list[dict[str, Any]]:
        """``chasquid-util queue list --json`` of the running daemon."""
        r = self.util("queue", "list", "--json")
        assert r.returncode == 0, r.stderr
        items: list[dict[str, Any]] = json.loads(r.stdout)
        return items

    def level(self, domain: str, direction: str = "outgoing") -> str | None:
        """The stored security level of a domain (``outgoing``/``incoming``); None if unknown."""
        from urllib.parse import quote_plus

        path = self.setup.data_dir / "domaininfo" / ("s:" + quote_plus(domain, safe="-_.~"))
        if not path.exists():
            return None
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == f"{direction}_sec_level":
                return value.strip()
        return "PLAIN"


@dataclass(frozen=True)
class DSN:
    """A delivery status notification as a mail reader sees it."""

    message: email.message.EmailMessage
    text: str
    recipients: list[dict[str, str]]

    @property
    def failed(self) -> list[str]:
        """The X-Failed-Recipients addresses."""
        return [a.strip() for a in str(self.message["X-Failed-Recipients"]).split(",") if a.strip()]

    def diagnostic(self, final: str) -> str:
        """The Diagnostic-Code of one recipient (unfolded, without ``smtp; ``)."""
        [block] = [r for r in self.recipients if r["Final-Recipient"] == f"utf-8; {final}"]
        return block["Diagnostic-Code"].removeprefix("smtp; ")


def parse_dsn(raw: bytes) -> DSN:
    """Parse a DSN with Python's email package; checks its MIME structure."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    types = [p.get_content_type() for p in msg.iter_parts()]
    assert types == ["text/plain", "message/global-delivery-status", "message/rfc822"], types
    text = next(msg.iter_parts()).get_content()
    # The email package keeps only the first block of a global-delivery-status
    # body, so the report fields are read from the raw part.
    boundary = msg.get_boundary()
    assert boundary
    [report] = [
        chunk
        for chunk in raw.decode().replace("\r\n", "\n").split("--" + boundary)
        if "Content-Type: message/global-delivery-status" in chunk
    ]
    body = report.split("\n\n", 1)[1]
    blocks = [b for b in body.strip("\n").split("\n\n") if b.strip()]
    parser = email.parser.HeaderParser(policy=email.policy.default)
    fields = [{k: str(v) for k, v in parser.parsestr(b + "\n").items()} for b in blocks]
    assert "Reporting-MTA" in fields[0], fields
    return DSN(msg, text, fields[1:])


@dataclass
class MailNet:
    """The test network: a DNS zone, a shared SMTP port, a trusted CA, the daemons."""

    root: Path
    zone: dict[str, dict[str, list[Any]]]
    dns: str
    port: int
    https_port: int
    ca: trustme.CA = field(default_factory=trustme.CA)
    peers: list[Peer] = field(default_factory=list)

    @property
    def ca_file(self) -> Path:
        """The trusted CA bundle given to every daemon as SSL_CERT_FILE."""
        path = self.root / "trusted-ca.pem"
        if not path.exists():
            self.ca.cert_pem.write_to_path(str(path))
        return path

    def env(self) -> dict[str, str]:
        """The environment pointing a daemon or tool at this network."""
        return {
            "CHASQUID_TEST_DNS": self.dns,
            "CHASQUID_TEST_SMTP_PORT": str(self.port),
            "CHASQUID_TEST_HTTPS_PORT": str(self.https_port),
            "SSL_CERT_FILE": str(self.ca_file),
        }

    def add_host(self, name: str, address: str) -> None:
        """Give a name an A record (keeping its other records)."""
        self.zone.setdefault(name, {})["A"] = [address]

    def set_mx(self, domain: str, *hosts: str) -> None:
        """Point a domain's MX at hosts (preference in order)."""
        self.zone.setdefault(domain, {})["MX"] = [
            (10 * (i + 1), h + ".") for i, h in enumerate(hosts)
        ]

    def add_peer(
        self,
        name: str,
        domain: str,
        host: str,
        *,
        mx: str | None = None,
        extra_cert_names: Sequence[str] = (),
    ) -> Peer:
        """Configure (not start) a daemon for ``domain`` on ``host``; MX and A records too.

        ``mx`` (default ``mx.<domain>``, in ASCII) is the daemon's hostname and the
        name its certificate (from the trusted CA) is issued for.
        """
        from chasquid.normalize import domain_to_ascii

        ascii_domain = domain_to_ascii(domain)
        mx = mx or f"mx.{ascii_domain}"
        setup = make_setup(
            self.root / name,
            domain=domain,
            hostname=mx,
            smtp_host=host,
            smtp_port=self.port,
            ca=self.ca,
            cert_names=(mx, *extra_cert_names),
        )
        setup.set_mda(maildir_mda(setup.root))
        self.add_host(mx, host)
        self.set_mx(ascii_domain, mx)
        peer = Peer(name, setup, host)
        self.peers.append(peer)
        return peer

    def add_cert(self, peer: Peer, dirname: str, names: Sequence[str], ca: trustme.CA) -> None:
        """Give a daemon another certificate (chosen by SNI), e.g. from an untrusted CA."""
        cert_dir = peer.setup.config_dir / "certs" / dirname
        cert_dir.mkdir(parents=True)
        leaf = ca.issue_cert(*names)
        (cert_dir / "fullchain.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(cert_dir / "privkey.pem"))

    def start(self, peer: Peer, *args: str) -> Daemon:
        """Start (or restart) a daemon with a fast retry schedule."""
        if peer.daemon is not None:
            peer.daemon.stop()
        peer.setup.write_conf()
        peer.daemon = start(peer.setup, [FAST_RETRY, *args], env=self.env())
        return peer.daemon

    def stop_all(self) -> None:
        """Stop every daemon."""
        for p in self.peers:
            if p.daemon is not None:
                p.daemon.stop()


@contextmanager
def mail_net(root: Path) -> Iterator[MailNet]:
    """A fresh network (DNS server running); every daemon is stopped at the end."""
    zone: dict[str, dict[str, list[Any]]] = {}
    with dns_server(zone) as dns_addr:
        net = MailNet(root, zone, dns_addr, shared_port(), shared_port())
        try:
            yield net
        finally:
            net.stop_all()


class _Relay:
    """A TCP relay in its own thread that hides STARTTLS from the client."""

    def __init__(self, listen: str, target: str, port: int) -> None:
        self.listen, self.target, self.port = listen, target, port
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, self.listen, self.port)
        )
        self.ready.set()
        self.loop.run_forever()
        self.server.close()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            sreader, swriter = await asyncio.open_connection(self.target, self.port)
        except OSError:
            cwriter.close()
            return

        async def down() -> None:
            while line := await sreader.readline():
                if line.upper().rstrip() != b"250-STARTTLS":
                    cwriter.write(line)
                    await cwriter.drain()
            cwriter.close()

        async def up() -> None:
            while data := await creader.read(65536):
                swriter.write(data)
                await swriter.drain()
            swriter.close()

        await asyncio.gather(down(), up(), return_exceptions=True)

    def __enter__(self) -> _Relay:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def starttls_stripper(listen: str, target: str, port: int) -> _Relay:
    """A relay on listen:port to target:port that removes STARTTLS from EHLO replies."""
    return _Relay(listen, target, port)


@contextmanager
def sts_server(
    address: str, port: int, ca: trustme.CA, policies: Mapping[str, str]
) -> Iterator[list[str]]:
    """Serve MTA-STS policies over HTTPS: ``policies`` maps domain -> policy text.

    The certificate (from ``ca``) covers ``mta-sts.<domain>`` of every domain;
    yields the list of Host headers requested.
    """
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host = (self.headers.get("Host") or "").split(":")[0].lower()
            hosts.append(host)
            body = policies.get(host.removeprefix("mta-sts."))
            if body is None or self.path != "/.well-known/mta-sts.txt":
                self.send_error(404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(f"mta-sts.{d}" for d in policies)).configure_cert(ctx)
    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield hosts
    finally:
        server.shutdown()
        server.server_close()
