"""Sending mail through the real daemon with smtplib, msmtp and swaks, on all three ports."""

from __future__ import annotations

import signal
import smtplib
import subprocess
from pathlib import Path

import pytest
from helpers.daemon import DaemonFactory, Setup, require_program, start

MESSAGE = b"From: user@testserver\r\nTo: someone@testserver\r\nSubject: hi\r\n\r\nHello.\r\n"


def queued(setup: Setup) -> list[Path]:
    """The queue item files."""
    if not setup.queue_dir.exists():
        return []
    return sorted(p for p in setup.queue_dir.iterdir() if p.name.startswith("m:"))


def test_smtp_port_starttls(chasquid_setup: Setup, chasquid_daemon: DaemonFactory) -> None:
    s = chasquid_setup
    d = chasquid_daemon()
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=30) as c:
        c.starttls(context=s.client_context())
        c.ehlo("client.example")
        refused = c.sendmail("sender@example.org", [s.user_addr], MESSAGE)
    assert refused == {}
    assert len(queued(s)) == 1
    d.wait_for_log(
        rf"^\S+ \S+ \S+ from=sender@example.org queued ip=127\.0\.0\.1:\d+ to=\[{s.user_addr}\]$",
        mail_log=True,
    )


def test_submission_requires_auth_and_relays(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    s = chasquid_setup
    d = chasquid_daemon()
    with smtplib.SMTP("127.0.0.1", s.submission_port, timeout=30) as c:
        c.starttls(context=s.client_context())
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            c.sendmail(s.user_addr, ["someone@elsewhere.example"], MESSAGE)
        assert e.value.smtp_code == 550
        c.login(s.user_addr, s.password)
        assert c.sendmail(s.user_addr, ["someone@elsewhere.example"], MESSAGE) == {}
    assert len(queued(s)) == 1
    d.wait_for_log(rf"auth succeeded for {s.user_addr}$", mail_log=True)


def test_submission_over_tls(chasquid_setup: Setup, chasquid_daemon: DaemonFactory) -> None:
    s = chasquid_setup
    chasquid_daemon()
    with smtplib.SMTP_SSL(
        "127.0.0.1", s.submission_tls_port, context=s.client_context(), timeout=30
    ) as c:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.login(s.user_addr, "wrong password")
        c.login(s.user_addr, s.password)
        assert c.sendmail(s.user_addr, ["a@elsewhere.example", s.user_addr], MESSAGE) == {}
    assert len(queued(s)) == 1


def _msmtp(setup: Setup, port: int, tls_mode: str, rcpt: str, auth: bool) -> None:
    msmtp = require_program("msmtp")
    conf = setup.root / f"msmtprc.{port}"
    lines = [
        "account default",
        "host 127.0.0.1",
        f"port {port}",
        "tls on",
        f"tls_starttls {'on' if tls_mode == 'starttls' else 'off'}",
        f"tls_trust_file {setup.ca_file}",
        "tls_host_override testserver",
        f"from {setup.user_addr}",
        "domain client.example",
    ]
    if auth:
        lines += ["auth plain", f"user {setup.user_addr}", f"password {setup.password}"]
    else:
        lines += ["auth off"]
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o600)
    proc = subprocess.run(
        [msmtp, "-C", str(conf), rcpt], input=MESSAGE, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


def test_msmtp_all_ports(chasquid_setup: Setup, chasquid_daemon: DaemonFactory) -> None:
    s = chasquid_setup
    chasquid_daemon()
    _msmtp(s, s.smtp_port, "starttls", s.user_addr, auth=False)
    _msmtp(s, s.submission_port, "starttls", "far@elsewhere.example", auth=True)
    _msmtp(s, s.submission_tls_port, "implicit", "far@elsewhere.example", auth=True)
    assert len(queued(s)) == 3


def _swaks(setup: Setup, port: int, *extra: str) -> str:
    swaks = require_program("swaks")
    proc = subprocess.run(
        [
            swaks,
            "--server",
            f"127.0.0.1:{port}",
            "--helo",
            "client.example",
            "--tls-verify",
            "--tls-ca-path",
            str(setup.ca_file),
            "--tls-sni",
            "testserver",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_swaks_all_ports(chasquid_setup: Setup, chasquid_daemon: DaemonFactory) -> None:
    s = chasquid_setup
    chasquid_daemon()
    auth = ["--auth", "PLAIN", "--auth-user", s.user_addr, "--auth-password", s.password]
    out = _swaks(s, s.smtp_port, "--tls", "--from", "x@example.org", "--to", s.user_addr)
    assert "250 2.0.0" in out
    out = _swaks(
        s, s.submission_port, "--tls", *auth, "--from", s.user_addr, "--to", "y@elsewhere.example"
    )
    assert "235 2.7.0" in out
    _swaks(
        s,
        s.submission_tls_port,
        "--tls-on-connect",
        "--auth",
        "LOGIN",
        "--auth-user",
        s.user_addr,
        "--auth-password",
        s.password,
        "--from",
        s.user_addr,
        "--to",
        "z@elsewhere.example",
    )
    assert len(queued(s)) == 3


def test_on_disk_before_250_and_kill9_loses_nothing(chasquid_setup: Setup) -> None:
    s = chasquid_setup
    d = start(s)
    try:
        with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=30) as c:
            c.starttls(context=s.client_context())
            c.ehlo("client.example")
            c.mail("sender@example.org")
            c.rcpt(s.user_addr)
            code, _ = c.data(MESSAGE)
            # Right after the 250, before anything else can happen: kill -9.
            d.proc.send_signal(signal.SIGKILL)
            assert code == 250
    finally:
        d.proc.wait(10)
    items = queued(s)
    assert len(items) == 1
    assert b"Hello." in items[0].read_bytes()
    # A restarted daemon loads the item and serves again.
    d2 = start(s)
    try:
        assert len(queued(s)) == 1
        d2.wait_for_log("Server listening")
    finally:
        assert d2.stop() == 0
