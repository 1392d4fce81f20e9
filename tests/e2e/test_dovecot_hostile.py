"""The daemon with dovecot_auth pointed at fake Dovecots that stall, babble or flood.

Whatever the fake does, AUTH gets 454 4.7.0 and RCPT 451 4.4.3, within the
client's bounds (5 s to connect, 5 s for the exchange), and never a 235 or a
250 for a user nobody vouched for. The real Dovecot is in tests/interop/.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import smtplib
import socket
import socketserver
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.daemon import DaemonFactory, Setup

#: What a fake does once a client is connected.
Behaviour = Callable[[socket.socket], None]


def _stall(conn: socket.socket) -> None:
    conn.settimeout(30)
    conn.recv(1 << 16)
    time.sleep(30)


def _garbage(conn: socket.socket) -> None:
    conn.sendall(b"\x00\xff GARBAGE\r\nMORE\r\nDONE\r\nOK\t2\r\nUSER\t2\r\n")
    conn.settimeout(30)
    while conn.recv(1 << 16):
        pass


def _huge_line(conn: socket.socket) -> None:
    conn.sendall(b"VERSION\t1\t1" + b"x" * 1_000_000 + b"\n")
    conn.settimeout(30)
    while conn.recv(1 << 16):
        pass


class FakeDovecot:
    """Both auth sockets of a fake Dovecot in a short temporary directory, served from threads."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fdc-", dir="/tmp"))
        self.connections = 0

        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                fake.connections += 1
                with contextlib.suppress(OSError):
                    behaviour(self.request)

        self.servers = []
        for name in ("userdb", "client"):
            server = socketserver.ThreadingUnixStreamServer(str(self.dir / name), Handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
            self.servers.append(server)

    def conf(self) -> str:
        return (
            "dovecot_auth: true\n"
            f'dovecot_userdb_path: "{self.dir / "userdb"}"\n'
            f'dovecot_client_path: "{self.dir / "client"}"\n'
        )

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(params=[_stall, _garbage, _huge_line], ids=["stall", "garbage", "1 MB line"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeDovecot]:
    f = FakeDovecot(request.param)
    yield f
    f.close()


# Connect (immediate here) + the 5 s exchange bound, plus the ~100 ms AUTH padding and slack.
BOUND = 5.0 + 3.0


def test_hostile_dovecot_gives_temporary_errors_in_time(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory, fake: FakeDovecot
) -> None:
    s = chasquid_setup
    chasquid_daemon(f"--config_overrides={fake.conf()}")
    with smtplib.SMTP("127.0.0.1", s.submission_port, timeout=30) as c:
        c.starttls(context=s.client_context())
        start = time.monotonic()
        plain = base64.b64encode(b"\0dovi@testserver\0whatever").decode()
        code, msg = c.docmd("AUTH", f"PLAIN {plain}")
        assert (code, msg[:5]) == (454, b"4.7.0")
        assert time.monotonic() - start < BOUND
        # chasquid's own users do not depend on Dovecot.
        c.login(s.user_addr, s.password)
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=30) as c:
        c.ehlo("client.example")
        assert c.mail("<>")[0] == 250
        start = time.monotonic()
        code, msg = c.rcpt("dovi@testserver")
        assert (code, msg[:5]) == (451, b"4.4.3")
        assert time.monotonic() - start < BOUND
        assert c.rcpt(s.user_addr)[0] == 250
    assert fake.connections >= 2
