"""Reload on SIGHUP and graceful shutdown on SIGTERM/SIGINT, on the real daemon."""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import ssl
import time

import pytest
import trustme
from helpers.daemon import DaemonFactory, Setup, messages

from chasquid.fileio import atomic_write

MESSAGE = b"Subject: hi\r\n\r\nHello.\r\n"


def _login(setup: Setup, user: str, password: str) -> bool:
    with smtplib.SMTP_SSL(
        "127.0.0.1", setup.submission_tls_port, context=setup.client_context(), timeout=30
    ) as c:
        try:
            c.login(user, password)
        except smtplib.SMTPAuthenticationError:
            return False
        return True


def test_sighup_picks_up_new_user_and_survives_broken_file(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    s = chasquid_setup
    d = chasquid_daemon()
    assert not _login(s, "new@testserver", "newpassword")

    s.add_user("new", "newpassword")
    d.signal(signal.SIGHUP)
    d.wait_for_log("Received SIGHUP, reloading")
    deadline = time.monotonic() + 10
    while not _login(s, "new@testserver", "newpassword"):
        assert time.monotonic() < deadline, d.log_text()
        time.sleep(0.1)

    s.users_file().write_text("users:\n  bad: [unterminated\n")
    d.signal(signal.SIGHUP)
    d.wait_for_log("Received SIGHUP, reloading", count=2)
    log = d.wait_for_log(r"Error reloading domains", timeout=10)
    errors = messages(log, "E")
    # The error names the file and the line of the problem.
    assert any(re.search(r"domains/testserver/users:\d+: ", line) for line in errors), log
    # The old snapshot is still in force and the server still serves.
    assert d.proc.poll() is None
    assert _login(s, "new@testserver", "newpassword")
    assert _login(s, s.user_addr, s.password)


def test_periodic_reload(chasquid_setup: Setup, chasquid_daemon: DaemonFactory) -> None:
    s = chasquid_setup
    d = chasquid_daemon("--testing__reload_every=300ms")
    s.add_user("later", "laterpassword")
    deadline = time.monotonic() + 15
    while not _login(s, "later@testserver", "laterpassword"):
        assert time.monotonic() < deadline, d.log_text()
        time.sleep(0.2)
    # Replaced in one rename, as an editor saving the file would: a reload that read
    # a half-written (empty) file would load zero users instead of failing.
    atomic_write(s.users_file(), b"users: [\n")
    d.wait_for_log(r"Error reloading domains", timeout=10)
    assert d.proc.poll() is None
    assert _login(s, "later@testserver", "laterpassword")


@pytest.mark.parametrize(
    ("sig", "name"), [(signal.SIGTERM, "terminated"), (signal.SIGINT, "interrupt")]
)
def test_exit_signal_finishes_transaction_in_flight(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory, sig: int, name: str
) -> None:
    s = chasquid_setup
    d = chasquid_daemon()
    idle = socket.create_connection(("127.0.0.1", s.smtp_port), timeout=30)
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=30) as c:
        c.ehlo("client.example")
        c.mail("sender@example.org")
        c.rcpt(s.user_addr)
        code, _ = c.docmd("DATA")
        assert code == 354
        c.send(b"Subject: in flight\r\n\r\nfirst half\r\n")

        d.signal(sig)
        d.wait_for_log(f"Got signal to exit: {name}")
        # The listeners are closed: no new connection is served.
        time.sleep(0.3)
        with pytest.raises(OSError):
            late = socket.create_connection(("127.0.0.1", s.smtp_port), timeout=5)
            late.recv(1) or (_ for _ in ()).throw(ConnectionResetError("closed"))
        # The idle connection was closed by the server.
        idle.settimeout(10)
        assert idle.recv(1024).startswith(b"220 ")
        assert idle.recv(1024) == b""
        idle.close()
        assert d.proc.poll() is None, "still finishing the transaction"

        c.send(b"second half\r\n.\r\n")
        code, _ = c.getreply()
        assert code == 250
    assert d.wait(45) == 0
    items = list(s.queue_dir.glob("m:*"))
    assert len(items) == 1
    assert b"second half" in items[0].read_bytes()


def test_sighup_reloads_certificates(chasquid_setup: Setup, chasquid_daemon: DaemonFactory) -> None:
    s = chasquid_setup
    d = chasquid_daemon()
    new_ca = trustme.CA()
    leaf = new_ca.issue_cert("testserver", "localhost", "127.0.0.1")
    cert_dir = s.config_dir / "certs" / "testserver"
    (cert_dir / "fullchain.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(cert_dir / "privkey.pem"))
    new_ctx = ssl.create_default_context()
    new_ca.configure_trust(new_ctx)

    d.signal(signal.SIGHUP)
    d.wait_for_log("Received SIGHUP, reloading")
    deadline = time.monotonic() + 10
    while True:
        try:
            with smtplib.SMTP_SSL(
                "127.0.0.1", s.submission_tls_port, context=new_ctx, timeout=30
            ) as c:
                c.login(s.user_addr, s.password)
            break
        except ssl.SSLError:
            assert time.monotonic() < deadline, d.log_text()
            time.sleep(0.1)
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=30) as c:
        c.starttls(context=new_ctx)
        assert c.ehlo()[0] == 250
