"""Bounded resources at reception: connections overall and per client, DATA's idle timeout."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
from helpers.reception import Running

from chasquid.daemon.telemetry import metrics

MakeServer = Callable[..., Running]
REFUSED = b"421 4.7.0 Too many connections, try again later\r\n"


class Conn:
    """A raw client connection from a chosen loopback address."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0))
        self.f = self.sock.makefile("rb")

    def line(self) -> bytes:
        return self.f.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed(self) -> bool:
        return self.f.readline() == b""

    def close(self) -> None:
        self.f.close()
        self.sock.close()


@pytest.fixture
def conns() -> Iterator[list[Conn]]:
    opened: list[Conn] = []
    yield opened
    for c in opened:
        c.close()


def _open(conns: list[Conn], port: int, source: str = "127.0.0.1") -> Conn:
    c = Conn(port, source)
    conns.append(c)
    return c


def _refusals(srv: Running, key: str) -> int:
    return srv.ctx.counters.get(metrics.SMTP_IN_CONNECTIONS_REFUSED, key)


def test_per_client_limit(make_server: MakeServer, conns: list[Conn]) -> None:
    srv = make_server(conf="max_connections_per_ip: 2\n")
    first, second = _open(conns, srv.port), _open(conns, srv.port)
    assert first.line().startswith(b"220 ") and second.line().startswith(b"220 ")
    third = _open(conns, srv.port)
    assert third.line() == REFUSED
    assert third.closed()
    assert _refusals(srv, "max_connections_per_ip") == 1
    # Another client is not concerned, and a slot freed is a slot again.
    assert _open(conns, srv.port, "127.0.0.2").line().startswith(b"220 ")
    first.send(b"QUIT\r\n")
    assert first.line().startswith(b"221 ")
    assert first.closed()
    deadline = time.monotonic() + 10
    while True:
        again = _open(conns, srv.port)
        reply = again.line()
        if reply.startswith(b"220 ") or time.monotonic() > deadline:
            break
    assert reply.startswith(b"220 ")


def test_overall_limit(make_server: MakeServer, conns: list[Conn]) -> None:
    srv = make_server(conf="max_connections: 3\n")
    for n in (1, 2, 3):
        assert _open(conns, srv.port, f"127.0.0.{n}").line().startswith(b"220 ")
    late = _open(conns, srv.port, "127.0.0.4")
    assert late.line() == REFUSED
    assert late.closed()
    assert _refusals(srv, "max_connections") == 1
    assert _refusals(srv, "max_connections_per_ip") == 0


def test_per_client_limit_counts_the_proxied_client(
    make_server: MakeServer, conns: list[Conn]
) -> None:
    srv = make_server(conf="max_connections_per_ip: 1\nhaproxy_incoming: true\n")
    a = _open(conns, srv.port)
    a.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 1000 25\r\n")
    assert a.line().startswith(b"220 ")
    b = _open(conns, srv.port)
    b.send(b"PROXY TCP4 192.0.2.8 127.0.0.1 1000 25\r\n")
    assert b.line().startswith(b"220 ")  # same proxy, another client
    c = _open(conns, srv.port)
    c.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 1001 25\r\n")
    assert c.line() == REFUSED


def _start_data(c: Conn) -> None:
    assert c.line().startswith(b"220 ")
    c.send(b"EHLO client\r\nMAIL FROM:<>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n")
    while not c.line().startswith(b"354"):
        pass


def test_data_idle_timeout(make_server: MakeServer, conns: list[Conn]) -> None:
    srv = make_server(data_idle_timeout=1.0)
    idle = _open(conns, srv.port)
    _start_data(idle)
    idle.send(b"Subject: x\r\n\r\nhalf a mess")
    started = time.monotonic()
    assert idle.line() == b"554 error reading command: connection timed out\r\n"
    assert idle.closed()
    assert 0.9 < time.monotonic() - started < 10
    assert not list(srv.queue_dir.iterdir())


def test_slow_but_steady_data_is_not_cut(make_server: MakeServer, conns: list[Conn]) -> None:
    srv = make_server(data_idle_timeout=1.0)
    slow = _open(conns, srv.port)
    _start_data(slow)
    slow.send(b"Subject: x\r\n\r\n")
    for _ in range(6):  # 3 s in all, never 1 s without a byte
        time.sleep(0.5)
        slow.send(b"line\r\n")
    slow.send(b".\r\n")
    assert slow.line().startswith(b"250 2.0.0 Queued as ")
