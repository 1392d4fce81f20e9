"""DKIM in the SMTP session: authenticated mail signed, the rest verified, counters, failures."""

from __future__ import annotations

import dataclasses
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.dkimtest import write_key, zone_for
from helpers.dns import dns_server
from helpers.rawclient import RawClient
from helpers.reception import HOSTNAME, PASSWORD, Running
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chasquid.confdir.dkimkeys import DKIMKey, DKIMKeys
from chasquid.daemon.telemetry import metrics
from chasquid.mailauth.dkimsign import sign

MakeServer = Callable[..., Running]
DOMAIN_DIR = ("domains", "example.com")
MESSAGE = b"From: user@example.com\r\nTo: x@remote.example\r\nSubject: hi\r\n\r\nbody\r\n"


def with_keys(*specs: tuple[str, str]) -> Callable[[Path], list[DKIMKey]]:
    """A `prepare` hook writing (selector, algorithm) keys for example.com."""

    def prepare(cdir: Path) -> list[DKIMKey]:
        return [write_key(cdir.joinpath(*DOMAIN_DIR), "example.com", s, a) for s, a in specs]

    return prepare


def submit(
    srv: Running, sender: str, rcpts: list[str], data: bytes
) -> dict[str, tuple[int, bytes]]:
    """Send as the authenticated user over STARTTLS; smtplib's refused-recipients dict."""
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as s:
        tls = srv.client_tls()
        tls.check_hostname = False  # smtplib sends the IP as SNI
        s.starttls(context=tls)
        s.login("user@example.com", PASSWORD)
        return s.sendmail(sender, rcpts, data)


def stored(srv: Running) -> list[bytes]:
    return [item.body.read() for item in srv.ctx.queue.items()]


def count(srv: Running, counter: metrics.Counter) -> int:
    return srv.ctx.counters.get(counter)


def test_authenticated_mail_is_signed_with_every_key(make_server: MakeServer) -> None:
    srv = make_server(prepare=with_keys(("s1", "ed25519"), ("s2", "rsa")))
    submit(srv, "user@example.com", ["x@remote.example"], MESSAGE)
    (data,) = stored(srv)
    received, rest = data.split(b"\nDKIM-Signature: ", 1)
    assert received.startswith(b"Received: from ")
    # The last key's signature is on top; both cover the message as received.
    assert b"s=s2;" in rest.split(b"DKIM-Signature:")[0]
    assert rest.count(b"DKIM-Signature: ") == 1
    assert b"Authentication-Results" not in data
    assert count(srv, metrics.DKIM_SIGNED) == 1
    assert count(srv, metrics.DKIM_VERIFY_NOT_FOUND) == 0


def test_no_keys_or_null_sender_means_unsigned(make_server: MakeServer) -> None:
    # The user may send as another of our domains, which has no key.
    srv = make_server(conf="auth_sender_policy: any\n", prepare=with_keys(("s1", "ed25519")))
    submit(srv, "", ["x@remote.example"], MESSAGE)
    submit(srv, "user@xn--bcher-kva.example", ["x@remote.example"], MESSAGE)
    assert all(b"DKIM-Signature" not in d for d in stored(srv))
    assert count(srv, metrics.DKIM_SIGNED) == 0


def test_signing_failure_is_451_and_keeps_nothing(make_server: MakeServer) -> None:
    srv = make_server(prepare=with_keys(("s1", "ed25519")))
    domains = srv.ctx.domains()
    (key,) = domains.dkim.for_domain("example.com")
    broken = dataclasses.replace(key, signer=object())
    # The session asks ctx.domains() on every use: give it the snapshot with the broken key.
    object.__setattr__(domains, "dkim", DKIMKeys({"example.com": (broken,)}))
    with pytest.raises(smtplib.SMTPDataError) as e:
        submit(srv, "user@example.com", ["x@remote.example"], MESSAGE)
    assert (e.value.smtp_code, e.value.smtp_error) == (451, b"4.3.0 DKIM signing failed")
    assert stored(srv) == []
    assert count(srv, metrics.DKIM_SIGN_ERRORS) == 1
    assert count(srv, metrics.DKIM_SIGNED) == 0


def deliver(srv: Running, data: bytes) -> bytes:
    """Send data unauthenticated on port 25 to user@example.com; the stored message."""
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as s:
        assert s.sendmail("someone@remote.example", ["user@example.com"], data) == {}
    return stored(srv)[-1]


def test_incoming_mail_is_verified(
    make_server: MakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "signer").mkdir()
    keys = [write_key(tmp_path / "signer", "signer.example", "s1", "ed25519")]
    lf = MESSAGE.replace(b"\r\n", b"\n")
    signed = b"".join(sign(lf, keys)) + lf
    with dns_server(zone_for(keys)) as addr:
        monkeypatch.setenv("CHASQUID_TEST_DNS", addr)
        srv = make_server()
        plain = deliver(srv, MESSAGE)
        good = deliver(srv, signed.replace(b"\n", b"\r\n"))
    assert plain.startswith(
        f"Authentication-Results: {HOSTNAME}\n\t;spf=none (no DNS record found)\n"
        "\t;dkim=none\nReceived-SPF: none".encode()
    ), plain
    assert good.startswith(f"Authentication-Results: {HOSTNAME}\n\t;spf=".encode())
    assert b"\n\t;dkim=pass  header.b=" in good and b"  header.d=signer.example\n" in good
    assert count(srv, metrics.DKIM_VERIFY_NOT_FOUND) == 1
    assert count(srv, metrics.DKIM_VERIFY_FOUND) == 1
    assert count(srv, metrics.DKIM_VERIFY_VALID) == 1


def test_forged_authentication_results_are_removed(make_server: MakeServer) -> None:
    srv = make_server()
    forged = (
        f"Authentication-Results: {HOSTNAME}; dkim=pass header.d=bank.example\r\n"
        "Authentication-Results: other.example; dkim=fail\r\n"
    ).encode()
    data = deliver(srv, forged + MESSAGE)
    assert data.count(f"Authentication-Results: {HOSTNAME}".encode()) == 1
    assert b"bank.example" not in data
    assert b"Authentication-Results: other.example; dkim=fail\n" in data


_fields = st.sampled_from(
    [
        b"From: a@example.com\r\n",
        b"Subject: x\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s1; h=from; bh=AAAA; b=AAAA\r\n",
        b"DKIM-Signature: v=1; a=ed25519-sha256; d=; s=; h=; bh=; b=\r\n",
        b"DKIM-Signature: v=1; l=99; a=rsa-sha256; d=x.example; s=y; h=from:from; bh=!; b=?\r\n",
        b"DKIM-Signature: \xff;;=;==\r\n",
        b"dkim-signature : i=a; d=a; v=1\r\n",
        b"Authentication-Results: mx.example.com; x\r\n",
        b" continued\r\n",
        b"X-Long: " + b"a" * 900 + b"\r\n",
    ]
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(headers=st.lists(_fields, max_size=10), body=st.binary(max_size=100))
def test_any_header_set_completes_the_session(
    srv: Running, headers: list[bytes], body: bytes
) -> None:
    lines = body.replace(b"\r", b"").split(b"\n")
    body = b"".join(
        b"." + line + b"\r\n" if line.startswith(b".") else line + b"\r\n" for line in lines
    )
    c = RawClient(srv.port, timeout=30)
    c.reply()
    assert c.cmd("HELO x").startswith("250")
    assert c.cmd("MAIL FROM:<>").startswith("250")
    assert c.cmd("RCPT TO:<user@example.com>").startswith("250")
    assert c.cmd("DATA").startswith("354")
    c.send(b"".join(headers) + b"\r\n" + body + b".\r\n")
    reply = c.reply()
    assert reply.startswith(("250 ", "554 5.6.0")), reply
    assert c.cmd("NOOP").startswith("250")
    c.close()
