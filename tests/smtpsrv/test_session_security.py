"""Reception refuses hostile input before it reaches logs, lookups, headers or hooks."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from helpers.rawclient import RawClient
from helpers.reception import HOSTNAME, PASSWORD, Running

MakeServer = Callable[..., Running]


def _tls(c: RawClient, srv: Running) -> None:
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    c.wrap(srv.client_tls(), HOSTNAME)


def _plain(identity: str, password: str) -> str:
    return base64.b64encode(f"\0{identity}\0{password}".encode()).decode()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


FORGED_IDENTITIES = [
    # A line break in the domain would have written a forged success line.
    "x@evil.test\n127.0.0.1:1 auth succeeded for user@example.com",
    "x@evil.test\r127.0.0.1:1 auth succeeded for user@example.com",
    "x@evil\x1b[2K.test",
    "us er@example.com",
    "user\u2028@example.com",
    "user@exa mple.com",
    "user@bad_name.example",
    "user@[127.0.0.1]",
    "user@example..com",
]


@pytest.mark.parametrize("identity", FORGED_IDENTITIES)
def test_auth_plain_refuses_bad_identities_before_logging(
    srv: Running, conn: RawClient, identity: str
) -> None:
    _tls(conn, srv)
    assert conn.cmd("AUTH PLAIN " + _plain(identity, PASSWORD)).startswith("501 5.5.2")
    assert srv.maillog_text() == ""
    # The session goes on: a good identity still logs in.
    assert conn.cmd("AUTH PLAIN " + _plain("user@example.com", PASSWORD)).startswith("235")


# PLAIN cannot carry a NUL in the identity (it separates the fields); LOGIN can.
@pytest.mark.parametrize("identity", [*FORGED_IDENTITIES[:3], "user@example.com\x00"])
def test_auth_login_refuses_bad_identities(srv: Running, conn: RawClient, identity: str) -> None:
    _tls(conn, srv)
    assert conn.cmd("AUTH LOGIN " + _b64(identity)) == "334 UGFzc3dvcmQ6"
    assert conn.cmd(_b64(PASSWORD)).startswith("501 5.5.2")
    assert srv.maillog_text() == ""


def test_valid_international_identity_still_checked(srv: Running, conn: RawClient) -> None:
    _tls(conn, srv)
    assert conn.cmd("AUTH PLAIN " + _plain("user@bücher.example", "x")).startswith("535 5.7.8")
    assert srv.maillog_text().endswith(" auth failed for user@bücher.example\n")


# A hook that records its environment: its presence is what used to turn a NUL
# into a crash (the environment could not be built for the program).
ENV_HOOK = """#!/bin/sh
env > "$PWD/../hook-env"
cat > /dev/null
"""


def _send(c: RawClient, raw: bytes) -> str:
    c.send(raw + b"\r\n")
    return c.reply()


@pytest.mark.parametrize("verb", [b"EHLO", b"HELO"])
@pytest.mark.parametrize(
    "name",
    [
        b"mx.google.com\x1b[31m\x07",
        b"mx.example\x00.com",
        b"mx\x08.example.com",
        b"mx.example.com\x7f",
        b"mx.example.com\xc2\x85",  # NEL, a C1 control
        b"mx.example.com\xe2\x80\xa8",  # LINE SEPARATOR
    ],
)
def test_hello_with_control_characters_is_refused(
    make_server: MakeServer, verb: bytes, name: bytes
) -> None:
    srv = make_server(hook=ENV_HOOK)
    c = RawClient(srv.port)
    c.reply()
    assert _send(c, verb + b" " + name).startswith("501 ")
    # The session goes on, and a clean name is taken.
    assert _send(c, b"EHLO client.example").startswith("250")
    assert _send(c, b"NOOP").startswith("250")
    c.close()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'MAIL FROM:<"a\\\x1b[31m"@example.org>', "501 5.1.7"),
        (b'MAIL FROM:<"a\\\x00b"@example.org>', "501 5.1.7"),
        (b'MAIL FROM:<"a\\\x08b"@example.org>', "501 5.1.7"),
        (b"MAIL FROM:<a@exa\xc2\x85mple.org>", "501 5.1.7"),
        (b"MAIL FROM:<a\x00b@example.org>", "501 5.1.7"),
    ],
)
def test_sender_with_control_characters_is_refused(
    make_server: MakeServer, line: bytes, expected: str
) -> None:
    srv = make_server(hook=ENV_HOOK)
    c = RawClient(srv.port)
    c.reply()
    assert _send(c, b"EHLO client.example").startswith("250")
    assert _send(c, line).startswith(expected)
    assert _send(c, b"NOOP").startswith("250")
    c.close()


@pytest.mark.parametrize(
    "rcpt",
    [b'"us\\\x1ber"@example.com', b'"us\\\x00er"@example.com', b'"x\\\x08y"@elsewhere.example'],
)
def test_recipient_with_control_characters_is_refused(make_server: MakeServer, rcpt: bytes) -> None:
    srv = make_server(hook=ENV_HOOK)
    c = RawClient(srv.port)
    c.reply()
    assert _send(c, b"EHLO client.example").startswith("250")
    assert _send(c, b"MAIL FROM:<a@example.org>").startswith("250")
    assert _send(c, b"RCPT TO:<" + rcpt + b">").startswith("501 5.1.3")
    assert "\x1b" not in srv.maillog_text() and "\x00" not in srv.maillog_text()
    c.close()


@pytest.mark.parametrize(
    ("name", "in_received", "in_env"),
    [
        (b'x(by\\"evil)', b'"x(by\\\\\\"evil)"', b'x(by\\"evil)'),
        # Not UTF-8: accepted as sent, written as escapes in Received.
        (b"mx.\xff.example", b'"mx.\\xff.example"', b"mx.\xff.example"),
    ],
)
def test_odd_hello_is_quoted_in_received(
    make_server: MakeServer, name: bytes, in_received: bytes, in_env: bytes
) -> None:
    srv = make_server(hook=ENV_HOOK)
    c = RawClient(srv.port)
    c.reply()
    assert _send(c, b"EHLO " + name).startswith("250")
    assert _send(c, b"MAIL FROM:<a@example.org>").startswith("250")
    assert _send(c, b"RCPT TO:<user@example.com>").startswith("250")
    assert _send(c, b"DATA").startswith("354")
    reply = _send(c, b"Subject: s\r\n\r\nbody\r\n.")
    assert reply.startswith("250 2.0.0"), reply
    item = srv.ctx.queue.get(reply.rsplit("Queued as ", 1)[1])
    assert item is not None
    assert b"\nReceived: from " + in_received + b" ([127.0.0.1])\n" in item.body.read()
    assert b"\nEHLO_DOMAIN_RAW=" + in_env + b"\n" in (srv.root / "hook-env").read_bytes()
    c.close()
