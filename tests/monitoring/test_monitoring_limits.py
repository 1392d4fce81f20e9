"""What a hostile or broken HTTP client can cost the monitoring server: little, and briefly."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from helpers.monitoring import InProcess

from chasquid.confdir.config import Config
from chasquid.daemon.monitoring.server import Limits
from chasquid.daemon.monitoring.sources import BuildInfo, Sources
from chasquid.daemon.telemetry.metrics import Counters
from chasquid.daemon.telemetry.trace import Tracer

LIMITS = Limits(max_line=4096, max_headers=32, request_deadline=1.0, max_connections=4)


def sources() -> Sources:
    return Sources(
        config=Config(hostname="mx.example.org"),
        counters=Counters(),
        catalogue=(),
        tracer=Tracer(),
        build=BuildInfo("1", datetime.now(UTC), ["chasquid"]),
        flags=(),
        queue=lambda: None,
        request_exit=lambda: None,
        os_hostname="box",
    )


@pytest.fixture
def server() -> Iterator[InProcess]:
    with InProcess(sources(), LIMITS) as srv:
        yield srv


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes on a fresh connection and read until the server closes or answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in chunk:
                # A keep-alive answer: enough for these tests.
                break
        return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_a_normal_request_works(server: InProcess) -> None:
    answer = raw(server.port, b"GET /debug/flags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200


def test_a_huge_request_line_is_refused(server: InProcess) -> None:
    path = b"/" + b"a" * 10_000
    answer = raw(server.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) in (400, 414)


def test_a_huge_header_is_refused(server: InProcess) -> None:
    answer = raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10_000 + b"\r\n\r\n")
    assert status_of(answer) in (400, 431)


def test_too_many_headers_are_refused(server: InProcess) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(100))
    answer = raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status_of(answer) in (400, 431)


def test_a_body_beyond_the_limit_is_refused(server: InProcess) -> None:
    body = b"x" * 10_000
    answer = raw(
        server.port,
        b"POST /exit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
    )
    # /exit does not read a body; what matters is that nothing breaks and it answers.
    assert status_of(answer) in (200, 413)


def test_a_slow_client_is_disconnected(server: InProcess) -> None:
    """A client that never finishes its request is closed after the deadline."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        try:
            while True:
                s.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.2)
                if time.monotonic() - started > 8:
                    pytest.fail("the server kept a slow client for 8 s")
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert time.monotonic() - started < LIMITS.request_deadline + 3


def test_an_idle_connection_is_closed(server: InProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        started = time.monotonic()
        assert s.recv(100) == b""  # closed by the server, without a word
    assert time.monotonic() - started < LIMITS.request_deadline + 3


def test_connections_beyond_the_limit_get_503_and_the_others_still_work(
    server: InProcess,
) -> None:
    held = [
        socket.create_connection(("127.0.0.1", server.port)) for _ in range(LIMITS.max_connections)
    ]
    try:
        time.sleep(0.2)
        answer = raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(answer) == 503
        # The held connections are served normally.
        held[0].sendall(b"GET /debug/flags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        held[0].settimeout(10)
        assert held[0].recv(100).startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()
    # Once they are gone, new clients are served again.
    deadline = time.monotonic() + 5
    while True:
        answer = raw(
            server.port, b"GET /debug/flags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        if status_of(answer) == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status_of(answer) == 200
