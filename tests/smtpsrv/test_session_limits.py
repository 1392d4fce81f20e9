"""Reception limits and failure paths: lifetime, AUTH line limit, TLS handshake and read errors."""

from __future__ import annotations

import base64
import logging
import socket
import time
from collections.abc import Callable

import pytest
from helpers.rawclient import RawClient
from helpers.reception import HOSTNAME, Running

from chasquid.daemon.smtpsrv.server import Mode

MakeServer = Callable[..., Running]


def _wait_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5.0) -> str:
    """The first captured log message containing ``text`` (the server logs from its thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in caplog.records:
            if text in r.getMessage():
                return r.getMessage()
        time.sleep(0.02)
    raise AssertionError(f"no log line with {text!r}: {[r.getMessage() for r in caplog.records]}")


def _connect(srv: Running) -> RawClient:
    c = RawClient(srv.port)
    assert c.reply() == f"220 {HOSTNAME} ESMTP chasquid"
    return c


def test_connection_lifetime_closes_without_reply(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    srv = make_server(lifetime=0.5)
    c = _connect(srv)
    assert c.cmd("NOOP").startswith("250")
    time.sleep(0.7)
    # Checked when the loop starts waiting for a command: the command
    # already awaited is served, the next one is not, and gets no reply.
    assert c.cmd("NOOP").startswith("250")
    c.send("NOOP\r\n")
    assert c.closed()
    line = _wait_log(caplog, "connection deadline exceeded")
    assert line.startswith("SMTP.Conn 127.0.0.1:")
    c.close()


def test_lifetime_bounds_data(make_server: MakeServer) -> None:
    srv = make_server(lifetime=1.0)
    c = _connect(srv)
    c.cmd("HELO x")
    c.cmd("MAIL FROM:<>")
    assert c.cmd("RCPT TO:<user@example.com>").startswith("250")
    assert c.cmd("DATA").startswith("354")
    c.send("Subject: slow\r\n\r\n")
    start = time.monotonic()
    # The server cuts the transfer at the deadline; nothing is queued.
    c.sock.settimeout(10)
    while not c.closed():
        pass
    assert time.monotonic() - start < 5
    assert not list(srv.queue_dir.glob("m:*"))
    c.close()


def test_auth_response_line_limit(srv_tls: tuple[Running, RawClient]) -> None:
    _, c = srv_tls
    assert c.cmd("AUTH PLAIN") == "334 "
    # 1001 octets: not read as a response; the session goes on.
    assert c.cmd("A" * 1001).startswith("554 5.4.0")
    assert c.cmd("NOOP").startswith("250")
    # Exactly 1000 octets is a response, decoded and checked.
    raw = b"\0user@example.com\0" + b"p" * (750 - 18)
    response = base64.b64encode(raw).decode()
    assert len(response) == 1000
    assert c.cmd("AUTH PLAIN") == "334 "
    assert c.cmd(response).startswith("535 5.7.8")


@pytest.fixture
def srv_tls(make_server: MakeServer) -> tuple[Running, RawClient]:
    srv = make_server(Mode.SUBMISSION_TLS)
    c = RawClient(srv.port)
    c.wrap(srv.client_tls(), HOSTNAME)
    assert c.reply().startswith("220 ")
    return srv, c


def test_failed_starttls_is_logged_with_client(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = make_server()
    c = _connect(srv)
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    c.send(b"this is not a TLS client hello\r\n" * 4)
    assert c.closed()
    line = _wait_log(caplog, "Error in TLS handshake")
    port = c.sock.getsockname()[1]
    assert line.startswith(f"SMTP.Conn 127.0.0.1:{port}: error: STARTTLS failed: 554  5.5.0 ")
    c.close()
    # The server is still up.
    _connect(srv).close()


def test_failed_implicit_tls_is_logged_with_client(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = make_server(Mode.SUBMISSION_TLS)
    c = RawClient(srv.port)
    c.send(b"EHLO plain.example\r\n" * 4)
    assert c.closed()
    port = c.sock.getsockname()[1]
    line = _wait_log(caplog, "error completing TLS handshake")
    assert line.startswith(f"SMTP.Conn 127.0.0.1:{port}: error: error completing TLS handshake: ")
    c.close()


def test_eof_on_command_gets_554(make_server: MakeServer) -> None:
    srv = make_server()
    c = _connect(srv)
    c.send("NOOP\r\n")
    assert c.reply().startswith("250")
    c.sock.shutdown(socket.SHUT_WR)
    assert c.reply().startswith("554 ")
    assert c.closed()
    c.close()


def test_reset_on_command_is_logged(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = make_server()
    c = _connect(srv)
    c.send("NOOP\r\n")
    assert c.reply().startswith("250")
    # An RST instead of a FIN: a read error other than EOF.
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.sock.close()
    _wait_log(caplog, "exiting with error:")
    _connect(srv).close()
