"""Reception refuses hostile input before it reaches logs, lookups, headers or hooks."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import pytest
from helpers.rawclient import RawClient
from helpers.reception import HOSTNAME, PASSWORD, Running

MakeServer = Callable[..., Running]


@pytest.fixture
def srv(make_server: MakeServer) -> Running:
    return make_server()


@pytest.fixture
def conn(srv: Running) -> Iterator[RawClient]:
    c = RawClient(srv.port)
    assert c.reply() == f"220 {HOSTNAME} ESMTP chasquid"
    yield c
    c.close()


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
