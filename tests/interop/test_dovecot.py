"""Interop with a real Dovecot (tests/helpers/dovecot.py), configured as docs/dovecot.md says.

First mda-lmtp alone against Dovecot's LMTP socket; then the daemon with
``dovecot_auth`` and each of the two delivery paths of the docs: AUTH and
RCPT answered by Dovecot, mail landing in Dovecot's Maildir byte for byte,
and Dovecot going away and coming back without a message bounced or lost.
"""

from __future__ import annotations

import base64
import re
import smtplib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.daemon import Daemon, DaemonFactory, Setup, messages
from helpers.dovecot import (
    EXAMPLE_CONF,
    Dovecot,
    chasquid_conf,
    doc_block,
    headers_added,
)
from helpers.mail import wait_until

MDA_LMTP = str(Path(sys.executable).parent / "mda-lmtp")
USER = "dovi@example.com"

# Everything a message may hold that a careless relay would break: leading dots,
# a line that is just a dot, bare LF and CRLF mixed, 8-bit text, a long line,
# trailing spaces, an empty line at the end.
MESSAGE = (
    "From: <sender@example.org>\r\n"
    "To: <dovi@example.com>\r\n"
    "Subject: =?utf-8?q?byte=2Dexact?=\r\n"
    "Message-ID: <exact@example.org>\r\n"
    "\r\n"
    ".leading dot\r\n"
    ".\r\n"
    "..two dots\n"
    "bare LF above, ñandú below  \r\n" + "x" * 998 + "\r\n\r\n"
).encode()


# What an SMTP client may send (SMTP lines end in CRLF; the daemon refuses bare LF).
SMTP_MESSAGE = MESSAGE.replace(b"..two dots\n", b"..two dots\r\n")


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., Dovecot]) -> Dovecot:
    """A private Dovecot with one user."""
    return dovecot_factory(users={USER: "secret"})


def mda_lmtp(dc: Dovecot, *args: str, stdin: bytes = MESSAGE) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [MDA_LMTP, f"--addr={dc.lmtp_socket}", *args], input=stdin, capture_output=True, timeout=60
    )


def test_mda_lmtp_delivers_byte_exact(dovecot: Dovecot) -> None:
    r = mda_lmtp(dovecot, "-f", "sender@example.org", "-d", USER)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    [stored] = dovecot.wait_for_messages(USER)
    added = headers_added(stored, MESSAGE)
    assert added["Return-Path"] == "<sender@example.org>"
    assert added["Delivered-To"] == USER


def test_mda_lmtp_null_sender(dovecot: Dovecot) -> None:
    r = mda_lmtp(dovecot, "-f", "<>", "-d", USER, stdin=b"Subject: bounce\n\nbody\n")
    assert r.returncode == 0, r.stdout
    [stored] = dovecot.wait_for_messages(USER)
    assert headers_added(stored, b"Subject: bounce\n\nbody\n")["Return-Path"] == "<>"


def test_mda_lmtp_unknown_user_is_a_temporary_failure(dovecot: Dovecot) -> None:
    r = mda_lmtp(dovecot, "-f", "sender@example.org", "-d", "nobody@example.com")
    assert r.returncode == 75
    assert r.stdout.startswith(b'Sent "RCPT TO:<nobody@example.com>", got 550 "5.1.1 ')
    assert dovecot.messages(USER) == []


def test_mda_lmtp_with_dovecot_stopped_and_back(dovecot: Dovecot) -> None:
    dovecot.stop()
    r = mda_lmtp(dovecot, "-f", "a@example.org", "-d", USER)
    assert r.returncode == 75
    assert r.stdout.decode().startswith(f"Error connecting to (unix, {dovecot.lmtp_socket}): ")
    dovecot.start()
    r = mda_lmtp(dovecot, "-f", "a@example.org", "-d", USER)
    assert r.returncode == 0, r.stdout
    assert len(dovecot.wait_for_messages(USER)) == 1


# --- the daemon with dovecot_auth ---------------------------------------------------------------

DOMAIN = "testserver"  # helpers.daemon's domain
DOVI = f"dovi@{DOMAIN}"  # known only to Dovecot
DOVI_PASSWORD = "dovi's password"
BOTH_DOVECOT_PASSWORD = "the Dovecot password"  # the user of helpers.daemon, in Dovecot too
BROKEN = f"broken@{DOMAIN}"  # known only to Dovecot; its mailbox cannot be created
GHOST = f"ghost@{DOMAIN}"  # known only to chasquid's users file
METHODS = ["native LMTP", "mda-lmtp"]


def test_docs_show_the_tested_dovecot_conf() -> None:
    assert doc_block("etc/dovecot/dovecot.conf") == EXAMPLE_CONF.read_text()


@dataclass
class Pair:
    """A private Dovecot and a chasquid configured for it (started on demand)."""

    setup: Setup
    dovecot: Dovecot
    factory: DaemonFactory
    method: str

    def start(self) -> Daemon:
        conf = chasquid_conf(self.dovecot, self.method, MDA_LMTP)
        return self.factory(f"--config_overrides={conf}", "--testing__retry_schedule=1s")

    def submission(self) -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.setup.submission_port, timeout=30)
        c.starttls(context=self.setup.client_context())
        return c

    def smtp(self) -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.setup.smtp_port, timeout=30)
        c.ehlo("client.example")
        return c


def make_pair(
    method: str,
    setup: Setup,
    daemon_factory: DaemonFactory,
    dovecot_factory: Callable[..., Dovecot],
) -> Pair:
    setup.add_user("ghost", "ghost's password")
    dc = dovecot_factory(
        users={DOVI: DOVI_PASSWORD, setup.user_addr: BOTH_DOVECOT_PASSWORD, BROKEN: "broken"}
    )
    return Pair(setup, dc, daemon_factory, method)


@pytest.fixture(params=METHODS)
def pair(
    request: pytest.FixtureRequest,
    chasquid_setup: Setup,
    chasquid_daemon: DaemonFactory,
    dovecot_factory: Callable[..., Dovecot],
) -> Pair:
    """The pair, once with each delivery method of the docs."""
    return make_pair(request.param, chasquid_setup, chasquid_daemon, dovecot_factory)


@pytest.fixture
def auth_pair(
    chasquid_setup: Setup,
    chasquid_daemon: DaemonFactory,
    dovecot_factory: Callable[..., Dovecot],
) -> Pair:
    """The pair for what does not depend on the delivery method (AUTH, RCPT, start-up)."""
    return make_pair(METHODS[0], chasquid_setup, chasquid_daemon, dovecot_factory)


def auth(c: smtplib.SMTP, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH exchange with the given mechanism; the final reply."""
    if mechanism == "PLAIN":
        resp = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return c.docmd("AUTH", f"PLAIN {resp}")
    code, _ = c.docmd("AUTH", "LOGIN")
    assert code == 334
    code, _ = c.docmd(base64.b64encode(user.encode()).decode())
    assert code == 334
    return c.docmd(base64.b64encode(password.encode()).decode())


def rcpt(c: smtplib.SMTP, address: str) -> tuple[int, bytes]:
    c.rset()
    code, msg = c.mail("sender@example.org")
    assert code == 250, msg
    return c.rcpt(address)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_through_dovecot_and_send(auth_pair: Pair, mechanism: str) -> None:
    pair = auth_pair
    d = pair.start()
    with pair.submission() as c:
        assert auth(c, mechanism, DOVI, "wrong")[0] == 535
        assert auth(c, mechanism, f"nobody@{DOMAIN}", DOVI_PASSWORD)[0] == 535
        assert auth(c, mechanism, DOVI, DOVI_PASSWORD)[0] == 235
        assert c.sendmail(DOVI, [DOVI], b"Subject: from Dovecot's user\r\n\r\nhi\r\n") == {}
    d.wait_for_log(rf"auth failed for {DOVI}$", mail_log=True)
    d.wait_for_log(rf"auth succeeded for {DOVI}$", mail_log=True)
    [stored] = pair.dovecot.wait_for_messages(DOVI)
    headers_added(stored, b"Subject: from Dovecot's user\n\nhi\n")


def test_startup_probe_and_dovecot_coming_later(auth_pair: Pair) -> None:
    pair = auth_pair
    dc = pair.dovecot
    dc.stop()
    d = pair.start()
    log = d.log_text()
    assert f'Fallback authenticator: DovecotAuth("{dc.userdb_socket}", "{dc.client_socket}")' in log
    [warning] = messages(log, "E")
    assert re.fullmatch(
        "Warning: Dovecot auth is not responding: failed to connect to dovecot: "
        f"dial unix {re.escape(str(dc.userdb_socket))}: connect: "
        "(connection refused|no such file or directory)",
        warning,
    ), warning
    with pair.submission() as c:
        assert auth(c, "PLAIN", DOVI, DOVI_PASSWORD)[0] == 454
    dc.start()
    with pair.submission() as c:
        assert auth(c, "PLAIN", DOVI, DOVI_PASSWORD)[0] == 235
    d.stop()
    # With Dovecot there, nothing to warn about.
    d = pair.start()
    assert messages(d.log_text(), "E") == []


def test_rcpt_existence_and_temporary_errors(auth_pair: Pair) -> None:
    pair = auth_pair
    d = pair.start()

    def check(address: str) -> tuple[int, bytes]:
        # A connection per check: refusals count towards the session's error limit.
        with pair.smtp() as c:
            code, msg = rcpt(c, address)
        return code, msg[:5]

    assert check(DOVI) == (250, b"2.1.5")
    assert check(f"Dovi+tag@{DOMAIN}") == (250, b"2.1.5")
    assert check(f"nobody@{DOMAIN}") == (550, b"5.1.1")
    pair.dovecot.stop()
    assert check(DOVI) == (451, b"4.4.3")
    # Unknown or not, nobody can tell now.
    assert check(f"nobody@{DOMAIN}") == (451, b"4.4.3")
    # Users of chasquid's own file do not need Dovecot.
    assert check(pair.setup.user_addr) == (250, b"2.1.5")
    assert check(GHOST) == (250, b"2.1.5")
    with pair.submission() as c:
        code, msg = auth(c, "PLAIN", DOVI, DOVI_PASSWORD)
        assert (code, msg[:5]) == (454, b"4.7.0")
    pair.dovecot.start()
    assert check(DOVI) == (250, b"2.1.5")
    d.wait_for_log(rf"to=\[{DOVI}\] - error checking if user exists: ", mail_log=True)


def test_user_in_both_chasquid_answers_first(auth_pair: Pair) -> None:
    pair = auth_pair
    s = pair.setup
    pair.start()
    with pair.submission() as c:
        assert auth(c, "PLAIN", s.user_addr, s.password)[0] == 235
    # chasquid's file says no to this one, so Dovecot is asked, and says yes.
    with pair.submission() as c:
        assert auth(c, "LOGIN", s.user_addr, BOTH_DOVECOT_PASSWORD)[0] == 235
    pair.dovecot.stop()
    # chasquid's own answer needs no Dovecot.
    with pair.submission() as c:
        assert auth(c, "PLAIN", s.user_addr, s.password)[0] == 235
    with pair.submission() as c:
        assert auth(c, "PLAIN", s.user_addr, BOTH_DOVECOT_PASSWORD)[0] == 454


def test_delivery_is_byte_exact(pair: Pair) -> None:
    s = pair.setup
    pair.start()
    with pair.submission() as c:
        assert auth(c, "PLAIN", DOVI, DOVI_PASSWORD)[0] == 235
        assert c.sendmail(DOVI, [DOVI, s.user_addr], SMTP_MESSAGE) == {}
    for rcpt_addr in (DOVI, s.user_addr):
        [stored] = pair.dovecot.wait_for_messages(rcpt_addr)
        # Dovecot's and chasquid's header fields on top, then the message as sent.
        added = headers_added(stored, SMTP_MESSAGE)
        assert added["Return-Path"] == f"<{DOVI}>"
        if pair.method == "mda-lmtp":
            # Dovecot names the recipient only in a transaction with one (native LMTP
            # sends both in one).
            assert added["Delivered-To"] == rcpt_addr


def test_dovecot_stopped_mid_test_loses_nothing(pair: Pair) -> None:
    s = pair.setup
    d = pair.start()
    pair.dovecot.stop()
    with pair.smtp() as c:
        # chasquid knows this user itself: accepted while Dovecot is away.
        assert c.sendmail("<>", [s.user_addr], b"Subject: while away\r\n\r\nkept\r\n") == {}
    d.wait_for_log(rf"to={s.user_addr} failed \(temporary\): ", mail_log=True, count=2)
    assert pair.dovecot.messages(s.user_addr) == []
    pair.dovecot.start()
    [stored] = pair.dovecot.wait_for_messages(s.user_addr)
    headers_added(stored, b"Subject: while away\r\n\r\nkept\r\n")
    wait_until(lambda: not list(s.queue_dir.glob("m:*")), what="an empty queue")
    log = d.mail_log_text()
    assert "(permanent)" not in log
    assert len(re.findall(rf"to={s.user_addr} sent$", log, re.M)) == 1
    # Delivered once: no copy arrives later.
    assert len(pair.dovecot.messages(s.user_addr)) == 1


def test_per_recipient_results(pair: Pair) -> None:
    """One message, three fates: delivered, retried until its mailbox works, refused."""
    s = pair.setup
    dc = pair.dovecot
    # Dovecot answers 4xx for this mailbox only.
    dc.break_mailbox(BROKEN)
    d = pair.start()
    with pair.smtp() as c:
        refused = c.sendmail(
            s.user_addr, [DOVI, BROKEN, GHOST], b"Subject: three fates\r\n\r\nbody\r\n"
        )
    assert refused == {}
    [stored] = dc.wait_for_messages(DOVI)
    headers_added(stored, b"Subject: three fates\r\n\r\nbody\r\n")
    d.wait_for_log(rf"to={BROKEN} failed \(temporary\): ", mail_log=True, count=2)
    # Native LMTP takes Dovecot's 5xx for a user it does not know as final; mda-lmtp
    # exits 75 for every failure, so that recipient is retried instead.
    ghost_fate = "permanent" if pair.method == "native LMTP" else "temporary"
    d.wait_for_log(rf"to={GHOST} failed \({ghost_fate}\): ", mail_log=True)
    assert dc.messages(BROKEN) == []
    dc.repair_mailbox(BROKEN)
    [stored] = dc.wait_for_messages(BROKEN)
    headers_added(stored, b"Subject: three fates\r\n\r\nbody\r\n")
    if pair.method == "native LMTP":
        # Every recipient settled: the sender gets a bounce for the refused one.
        [dsn] = dc.wait_for_messages(s.user_addr)
        assert b"report-type=delivery-status" in dsn
        assert f"Final-Recipient: utf-8; {GHOST}".encode() in dsn
        assert BROKEN.encode() not in dsn
    else:
        d.wait_for_log(rf"to={GHOST} failed \(temporary\): ", mail_log=True, count=3)
        assert dc.messages(s.user_addr) == []
    # DOVI got it once, not again with the retries.
    assert len(dc.messages(DOVI)) == 1
