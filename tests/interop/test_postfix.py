"""Interop with a real third-party MTA: a private Postfix instance on loopback.

The first tests check the Postfix fixture itself (it receives into its
Maildir, it relays over verified STARTTLS, several instances coexist). The
interop tests then have our daemon deliver to Postfix over STARTTLS, and
Postfix deliver to our daemon.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from helpers.daemon import Daemon, DaemonFactory, Setup
from helpers.dns import dns_server
from helpers.mail import parse_message, wait_until
from helpers.ports import free_port
from helpers.postfix import Postfix

from chasquid.msgbody import Body

OURS = "ours.test"


def message(sender: str, rcpt: str, subject: str) -> bytes:
    """A small RFC 5322 message with CRLF line endings."""
    return (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@interop.test>\r\n\r\n"
        f"Body of {subject}.\r\n"
    ).encode()


def send(
    host: str,
    port: int,
    sender: str,
    rcpts: list[str],
    data: bytes,
    *,
    tls: ssl.SSLContext | None = None,
    login: tuple[str, str] | None = None,
) -> None:
    """Send one message with smtplib, optionally after STARTTLS and AUTH."""
    with smtplib.SMTP(host, port, local_hostname="client.interop.test", timeout=30) as c:
        if tls is not None:
            c.starttls(context=tls)
        if login is not None:
            c.login(*login)
        c.sendmail(sender, rcpts, data)


def received_headers(msg: EmailMessage) -> list[str]:
    """The Received: headers, top (newest) first, unfolded."""
    return [" ".join(str(h).split()) for h in msg.get_all("Received", [])]


# --- the fixture itself ------------------------------------------------------------------


def test_postfix_delivers_to_its_maildir_over_starttls(
    postfix_factory: Callable[..., Postfix],
) -> None:
    pf = postfix_factory()
    ctx = ssl.create_default_context(cafile=str(pf.ca_file))
    # Full verification (name 127.0.0.5 included): Postfix serves the fixture's certificate.
    send(
        pf.host,
        pf.port,
        "someone@elsewhere.test",
        [pf.address("alice")],
        message("someone@elsewhere.test", pf.address("alice"), "self test"),
        tls=ctx,
    )
    (msg,) = pf.wait_for_messages("alice")
    assert msg["Subject"] == "self test"
    top = received_headers(msg)[0]
    assert f"by {pf.hostname} (Postfix)" in top
    assert "with ESMTPS" in top
    assert "using TLSv1." in top
    assert pf.messages("bob") == []


def test_postfix_rejects_unknown_user(postfix_factory: Callable[..., Postfix]) -> None:
    pf = postfix_factory()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        send(
            pf.host, pf.port, "x@elsewhere.test", [pf.address("nobody")], b"Subject: x\r\n\r\nx\r\n"
        )
    code, text = e.value.recipients[pf.address("nobody")]
    assert code == 550
    assert b"User unknown" in text


@dataclass
class Sink:
    """What an aiosmtpd sink received: (envelope, TLS version of the session) per message."""

    received: list[tuple[Any, str | None]] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # Read the TLS version now: once the connection is closed the SSL object
        # no longer knows it (seen as a flaky None in CI).
        tls = session.ssl["ssl_object"].version() if session.ssl else None
        self.received.append((envelope, tls))
        self.event.set()
        return "250 2.0.0 OK sunk"


def test_postfix_relays_over_verified_starttls(
    postfix_factory: Callable[..., Postfix],
) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "sink.ours.test").configure_cert(server_ctx)
    sink = Sink()
    port = free_port()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_ctx,
        require_starttls=True,
        server_hostname="sink.ours.test",
    )
    controller.start()
    try:
        pf = postfix_factory(relays={OURS: f"[127.0.0.1]:{port}"}, ca=ca)
        rcpt = f"carol@{OURS}"
        send(pf.host, pf.port, pf.address("alice"), [rcpt], message(pf.address(), rcpt, "relay"))
        assert sink.event.wait(30), f"nothing reached the sink:\n{pf.log_text()}"
    finally:
        controller.stop()
    envelope, tls = sink.received[0]
    assert envelope.rcpt_tos == [rcpt]
    assert envelope.mail_from == pf.address("alice")
    assert tls is not None, "Postfix sent without STARTTLS"
    assert tls in ("TLSv1.2", "TLSv1.3")
    # Postfix checked the sink's certificate against the CA it was given.
    log = pf.wait_for_log(r"status=sent \(250 2\.0\.0 OK sunk\)")
    assert f"Trusted TLS connection established to 127.0.0.1[127.0.0.1]:{port}" in log
    top = received_headers(parse_message(envelope.content))[0]
    assert f"by {pf.hostname} (Postfix) with ESMTP" in top


def test_two_postfix_instances_run_side_by_side(
    postfix_factory: Callable[..., Postfix],
) -> None:
    first = postfix_factory()
    second = postfix_factory()
    assert (first.host, first.port) != (second.host, second.port)
    send(first.host, first.port, "x@e.test", [first.address()], message("x@e.test", "a", "one"))
    send(second.host, second.port, "x@e.test", [second.address()], message("x@e.test", "a", "two"))
    assert [m["Subject"] for m in first.wait_for_messages()] == ["one"]
    assert [m["Subject"] for m in second.wait_for_messages()] == ["two"]
    second.stop()
    # Stopping one instance leaves the other serving.
    send(first.host, first.port, "x@e.test", [first.address()], message("x@e.test", "a", "three"))
    assert len(first.wait_for_messages(count=2)) == 2


# --- interop with our daemon ---------------------------------------------------------------

SINK_MDA = """\
d="{maildir}/$4"
mkdir -p "$d/tmp" "$d/new" "$d/cur" || exit 75
f="$(date +%s%N).$$"
cat > "$d/tmp/$f" && mv "$d/tmp/$f" "$d/new/$f" || exit 75
"""


def postfix_zone(pf: Postfix) -> dict[str, dict[str, list[Any]]]:
    """DNS for Postfix's domain: its MX on the instance's address, SPF allowing loopback."""
    return {
        pf.domain: {"MX": [(10, pf.hostname)], "TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
        pf.hostname: {"A": [pf.host]},
    }


def wait_for_file(directory: Path, timeout: float = 30.0) -> Path:
    """The first file to appear in ``directory``."""
    wait_until(lambda: directory.is_dir() and any(directory.iterdir()), timeout, str(directory))
    return sorted(directory.iterdir())[0]


def wait_for_remote_delivery(pf: Postfix, daemon: Daemon, timeout: float = 45.0) -> EmailMessage:
    """Our daemon's message in Postfix's Maildir."""
    deadline = time.monotonic() + timeout
    while True:
        msgs = pf.messages("alice")
        if msgs:
            return msgs[0]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no delivery to Postfix after {timeout}s\nour mail log:\n"
                f"{daemon.mail_log_text()}\nour main log:\n{daemon.log_text()}\n"
                f"Postfix log:\n{pf.log_text()}"
            )
        time.sleep(0.1)


def test_daemon_delivers_to_postfix_over_verified_starttls(
    postfix_factory: Callable[..., Postfix],
    chasquid_setup: Setup,
    chasquid_daemon: DaemonFactory,
) -> None:
    setup = chasquid_setup
    # One CA for both: Postfix's certificate verifies against SSL_CERT_FILE.
    pf = postfix_factory(ca=setup.ca)
    with dns_server(postfix_zone(pf)) as dns:
        daemon = chasquid_daemon(
            env={
                "CHASQUID_TEST_DNS": dns,
                "CHASQUID_TEST_SMTP_PORT": str(pf.port),
                "SSL_CERT_FILE": str(setup.ca_file),
            }
        )
        rcpt = pf.address("alice")
        send(
            "127.0.0.1",
            setup.submission_port,
            setup.user_addr,
            [rcpt],
            message(setup.user_addr, rcpt, "to postfix"),
            tls=setup.client_context(),
            login=(setup.user_addr, setup.password),
        )
        msg = wait_for_remote_delivery(pf, daemon)
        daemon.wait_for_log(rf"from={setup.user_addr} to=.*{rcpt}.* sent", mail_log=True)
    assert msg["Subject"] == "to postfix"
    assert msg["Return-Path"] == f"<{setup.user_addr}>"
    received = received_headers(msg)
    # Postfix's own trace header: it received over TLS from our daemon's EHLO name.
    assert received[0].startswith(f"from {setup.domain} (")
    assert "using TLSv1." in received[0]
    assert "with ESMTPS" in received[0]
    # Below it, ours from the submission.
    assert f"by {setup.domain} (chasquid) with ESMTPSA" in received[1]
    log = pf.log_text()
    assert "TLS connection established from" in log
    assert f"to=<{rcpt}>, relay=virtual" in log


def test_postfix_delivers_to_daemon_over_verified_starttls(
    postfix_factory: Callable[..., Postfix],
    chasquid_setup: Setup,
    chasquid_daemon: DaemonFactory,
) -> None:
    setup = chasquid_setup
    maildir_root = setup.root / "maildirs"
    setup.set_mda(SINK_MDA.format(maildir=maildir_root))
    pf = postfix_factory(ca=setup.ca, relays={setup.domain: f"[127.0.0.1]:{setup.smtp_port}"})
    with dns_server(postfix_zone(pf)) as dns:
        daemon = chasquid_daemon(env={"CHASQUID_TEST_DNS": dns})
        sender = pf.address("bob")
        send(
            pf.host,
            pf.port,
            sender,
            [setup.user_addr],
            message(sender, setup.user_addr, "to chasquid"),
        )
        delivered = wait_for_file(maildir_root / setup.user / "new")
        daemon.wait_for_log(rf"from={sender} queued ip=127\.0\.0\.1:", mail_log=True)
    msg = parse_message(delivered.read_bytes())
    assert msg["Subject"] == "to chasquid"
    received = received_headers(msg)
    # Ours on top: from Postfix's EHLO name and address, over STARTTLS on the SMTP port.
    assert received[0].startswith(f"from {pf.hostname} ([127.0.0.1]) by {setup.domain} (chasquid)")
    assert "with ESMTPS tls " in received[0]
    assert "(over SMTP, TLS-1." in received[0]
    assert f'envelope from "{sender}")' in received[0]
    assert f"by {pf.hostname} (Postfix)" in received[1]
    assert str(msg["Received-SPF"]).startswith("pass")
    # Postfix verified our certificate with the CA it was given, and saw our 250.
    log = pf.wait_for_log(rf"to=<{setup.user_addr}>.*status=sent")
    assert f"Trusted TLS connection established to 127.0.0.1[127.0.0.1]:{setup.smtp_port}" in log


def test_smtp_courier_delivers_to_postfix_over_verified_starttls(
    postfix_factory: Callable[..., Postfix],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The remote courier on its own (no daemon): MX via test DNS, STARTTLS, verified cert."""
    from chasquid.confdir.domaininfo import DomainInfoStore, SecLevel
    from chasquid.daemon.courier.smtp import SMTPCourier

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    pf = postfix_factory(ca=ca)
    rcpts = [pf.address("alice"), pf.address("bob")]
    with dns_server(postfix_zone(pf)) as dns:
        monkeypatch.setenv("CHASQUID_TEST_DNS", dns)
        monkeypatch.setenv("CHASQUID_TEST_SMTP_PORT", str(pf.port))
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        domaininfo = DomainInfoStore(tmp_path / "domaininfo")
        courier = SMTPCourier("sender.interop.test", domaininfo)
        data = message("someone@sender.interop.test", rcpts[0], "from the courier")
        results = asyncio.run(
            courier.deliver_many("someone@sender.interop.test", rcpts, Body.of(data))
        )
    assert results == dict.fromkeys(rcpts, None)
    # Both recipients in one transaction, each in its own Maildir.
    for user in ("alice", "bob"):
        (msg,) = pf.wait_for_messages(user)
        assert msg["Subject"] == "from the courier"
        top = received_headers(msg)[0]
        assert top.startswith("from sender.interop.test (")
        assert "using TLSv1." in top
    assert pf.log_text().count("client=unknown[127.0.0.1]") == 1
    # A verified certificate: the domain is now pinned to secure TLS for later deliveries.
    info = domaininfo.get(pf.domain)
    assert info is not None
    assert info.outgoing == SecLevel.TLS_SECURE
