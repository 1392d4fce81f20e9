"""DKIM with real daemons: keys at start-up and SIGHUP, signing on 587, verifying on 25.

The done-when of the feature: mail an authenticated user sends on 587 reaches
a second daemon signed, OpenDKIM verifies the signature as delivered, and the
second daemon says `dkim=pass` in its Authentication-Results.
"""

from __future__ import annotations

import re
import signal
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.daemon import DaemonFactory, Setup, messages, run_to_exit
from helpers.dkimtest import dkimpy_sign, opendkim_verify, port53_dns, write_key, zone_for
from helpers.dns import dns_server
from helpers.mail import maildir_mda, maildir_messages, wait_until
from helpers.mailnet import MailNet, mail_net

A_HOST, B_HOST = "127.0.0.2", "127.0.0.3"


def submit_587(setup: Setup, rcpt: str, subject: str = "signed") -> None:
    """Send as the test user on the submission port: STARTTLS, AUTH, one message."""
    data = (
        f"From: {setup.user_addr}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        f"Date: Tue, 03 Jun 2025 10:11:12 +0200\r\nMessage-ID: <{time.time_ns()}@t>\r\n"
        "\r\nHello  there,\r\n\r\n  and bye.\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=60) as c:
        c.starttls(context=setup.client_context())
        c.login(setup.user_addr, setup.password)
        assert c.sendmail(setup.user_addr, [rcpt], data) == {}


def header_block(message: bytes) -> str:
    """The header section as text with LF line ends (Maildir files may hold CRLF)."""
    return message.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[MailNet]:
    with mail_net(tmp_path) as n:
        yield n


def test_mail_sent_on_587_arrives_signed_and_verified(net: MailNet, tmp_path: Path) -> None:
    a = net.add_peer("a", "srv-a.test", A_HOST)
    b = net.add_peer("b", "srv-b.test", B_HOST)
    domain_dir = a.setup.config_dir / "domains" / "srv-a.test"
    keys = [
        write_key(domain_dir, "srv-a.test", "2025rsa", "rsa"),
        write_key(domain_dir, "srv-a.test", "2025ed", "ed25519"),
    ]
    net.zone.update(zone_for(keys))
    net.start(a)
    net.start(b)

    submit_587(a.setup, "user@srv-b.test")
    b.wait_mail(1)
    (delivered,) = b.raw_mailbox()
    head = header_block(delivered)
    # B's own result: both of A's signatures pass.
    results = re.search(r"^Authentication-Results: mx\.srv-b\.test\n((?:\t.*\n?)+)", head, re.M)
    assert results, head
    dkim = [line.strip() for line in results.group(1).splitlines() if ";dkim=" in line]
    assert len(dkim) == 2, head
    assert all(
        re.fullmatch(r";dkim=pass  header\.b=\S{12}  header\.d=srv-a\.test", d) for d in dkim
    )
    assert head.count("DKIM-Signature: v=1;") == 2
    # A signs the message as it arrived, then adds its Received: above the
    # signatures, so that field is not covered by them.
    assert head.index("by mx.srv-a.test") < head.index("DKIM-Signature:")

    # An independent verifier agrees on the message as delivered.
    with port53_dns(net.zone, tmp_path) as resolv:
        ok = opendkim_verify(delivered, resolv)
        assert ok.returncode == 0, ok.stderr
        bad = opendkim_verify(delivered.replace(b"and bye", b"and hi"), resolv)
        assert bad.returncode != 0


@pytest.fixture
def maildir_setup(chasquid_setup: Setup) -> Setup:
    chasquid_setup.set_mda(maildir_mda(chasquid_setup.root))
    return chasquid_setup


def selectors(message: bytes) -> list[str]:
    return re.findall(r"DKIM-Signature: [^\n]*(?:\n[ \t][^\n]*)*?\bs=([\w.-]+);", message.decode())


def test_sighup_loads_new_keys_and_keeps_them_when_one_breaks(
    maildir_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    s = maildir_setup
    domain_dir = s.config_dir / "domains" / s.domain
    write_key(domain_dir, s.domain, "one", "ed25519")
    d = chasquid_daemon()
    assert f"  {s.domain} (1 users, 0 aliases, 1 DKIM keys)" in messages(d.log_text())

    submit_587(s, s.user_addr)
    wait_until(lambda: len(maildir_messages(s.root, s.user)) == 1, what="first message")
    assert selectors(maildir_messages(s.root, s.user)[0]) == ["one"]

    write_key(domain_dir, s.domain, "two", "rsa")
    d.signal(signal.SIGHUP)
    d.wait_for_log(r"Received SIGHUP, reloading")

    def signed_with_two() -> bool:
        submit_587(s, s.user_addr)
        wait_until(lambda: len(maildir_messages(s.root, s.user)) >= sent[0] + 1)
        sent[0] += 1
        return "two" in selectors(maildir_messages(s.root, s.user)[-1])

    sent = [1]
    wait_until(signed_with_two, timeout=30, what="a signature with the new key")
    # Last key on top, each signature separate.
    assert selectors(maildir_messages(s.root, s.user)[-1]) == ["two", "one"]

    (domain_dir / "dkim:three.pem").write_text("-----BEGIN PRIVATE KEY-----\nbroken\n")
    d.signal(signal.SIGHUP)
    d.wait_for_log(
        r"Error reloading domains, keeping the previous ones: "
        rf"{re.escape(s.domain)}: DKIM loading error: .*dkim:three\.pem: error decoding PEM block"
    )
    submit_587(s, s.user_addr)
    wait_until(lambda: len(maildir_messages(s.root, s.user)) == sent[0] + 1)
    assert selectors(maildir_messages(s.root, s.user)[-1]) == ["two", "one"]


def test_broken_key_is_fatal_at_start(chasquid_setup: Setup) -> None:
    path = chasquid_setup.config_dir / "domains" / chasquid_setup.domain / "dkim:x.pem"
    path.write_text("not a key\n")
    status, log = run_to_exit(chasquid_setup)
    assert status == 1
    (fatal,) = messages(log, "☠")
    assert fatal == (
        f"  {chasquid_setup.domain}: DKIM loading error: "
        f"domains/{chasquid_setup.domain}/dkim:x.pem: error decoding PEM block"
    )


MESSAGE = (
    b"From: Ana <ana@signer.example>\n"
    b"To: user@testserver\n"
    b"Subject: incoming\n"
    b"Date: Tue, 03 Jun 2025 10:11:12 +0200\n"
    b"Message-ID: <in@signer.example>\n"
    b"\n"
    b"Body  text\n"
)


def test_incoming_signatures_get_a_result_each(
    maildir_setup: Setup, chasquid_daemon: DaemonFactory, tmp_path: Path
) -> None:
    s = maildir_setup
    keydir = tmp_path / "signer-keys"
    keydir.mkdir()
    rsa = write_key(keydir, "signer.example", "rsa1", "rsa")
    ed = write_key(keydir, "signer.example", "ed1", "ed25519")
    gone = write_key(keydir, "signer.example", "gone", "ed25519")
    slow = write_key(keydir, "signer.example", "slow", "ed25519")
    zone: dict[str, object] = dict(zone_for([rsa, ed]))
    zone[slow.dns_name()] = {"RCODE": ["NOREPLY"]}
    huge = b"".join(b"X-Filler-%d: %s\n" % (i, b"x" * 990) for i in range(300))
    by_rsa = dkimpy_sign(MESSAGE, rsa, tmp_path)
    by_ed = dkimpy_sign(MESSAGE, ed, tmp_path)
    passed = r";dkim=pass  header\.b=\S{12}  header\.d=signer\.example"
    cases = {
        "pass rsa": (by_rsa, passed),
        "pass ed25519": (by_ed, passed),
        "tampered body": (
            by_rsa.replace(b"Body", b"Bod"),
            r';dkim=fail  reason="body hash mismatch',
        ),
        "tampered header": (
            by_ed.replace(b"incoming", b"outgoing"),
            r';dkim=fail  reason="signature did not verify"',
        ),
        "missing key": (
            dkimpy_sign(MESSAGE, gone, tmp_path),
            r';dkim=permerror  reason="no key for signature \(NXDOMAIN\)"',
        ),
        "dns timeout": (
            dkimpy_sign(MESSAGE, slow, tmp_path),
            r';dkim=temperror  reason="key look-up timed out"',
        ),
        "no signature": (MESSAGE, r";dkim=none"),
        "malformed": (
            b"DKIM-Signature: v=1; a=rsa-sha256; b=\n" + MESSAGE,
            r';dkim=permerror  reason="malformed signature',
        ),
        "l= beyond body": (
            by_rsa.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; l=9999;"),
            r';dkim=permerror  reason="l= is beyond the end of the body"',
        ),
        "huge headers": (
            huge + by_rsa,
            r';dkim=permerror  reason="not verified: header section over',
        ),
    }
    with dns_server(zone) as addr:  # type: ignore[arg-type]
        chasquid_daemon(env={"CHASQUID_TEST_DNS": addr})
        with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=60) as c:
            for name, (data, _) in cases.items():
                # X-Case is not signed: it only tells the test which message is which.
                data = b"X-Case: " + name.encode() + b"\n" + data
                refused = c.sendmail(
                    "ana@signer.example", [s.user_addr], data.replace(b"\n", b"\r\n")
                )
                assert refused == {}
    wait_until(lambda: len(maildir_messages(s.root, s.user)) == len(cases), what="every message")
    delivered = {}
    for message in maildir_messages(s.root, s.user):
        head = header_block(message)
        case = re.search(r"^X-Case: (.*)$", head, re.M)
        assert case is not None
        delivered[case.group(1)] = head
    for name, (_, expected) in cases.items():
        head = delivered[name]
        assert head.startswith("Authentication-Results: testserver\n\t;spf=none"), (name, head)
        assert re.search("^\t" + expected, head, re.M), (name, head)
