"""The seam to aiosmtpd: the internals it reaches are there, and the adapter behaves.

When a new aiosmtpd release moves one of these internals, the first test
names it: change chasquid/daemon/smtpsrv/aiosmtpd_adapter.py (and only it) to follow,
then widen the pin in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import ssl
import threading
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import aiosmtpd.smtp
import pytest
import trustme

from chasquid.daemon.smtpsrv.aiosmtpd_adapter import ProtocolAdapter

#: The releases the adapter was tested with (pyproject.toml pins the same).
TESTED = ("1.4.6",)


def test_installed_aiosmtpd_is_a_tested_release() -> None:
    assert version("aiosmtpd") in TESTED, (
        f"aiosmtpd {version('aiosmtpd')} is not among {TESTED}: run this file's tests, "
        "adapt chasquid/daemon/smtpsrv/aiosmtpd_adapter.py, then add the release here"
    )


@pytest.mark.parametrize(
    "name", ["_handle_client", "_timeout_cb", "_reset_timeout", "connection_made", "eof_received"]
)
def test_smtp_has_the_methods_the_adapter_overrides_or_calls(name: str) -> None:
    assert callable(getattr(aiosmtpd.smtp.SMTP, name, None)), f"aiosmtpd SMTP.{name} is gone"


def test_handle_client_is_what_connection_made_starts() -> None:
    # The adapter's command loop runs only because connection_made starts _handle_client.
    source = inspect.getsource(aiosmtpd.smtp.SMTP.connection_made)
    assert "self._handle_client()" in source


class Probe(ProtocolAdapter):
    """Exercises every method of the adapter in one scripted dialogue."""

    def __init__(self, context: ssl.SSLContext, seen: dict[str, Any]) -> None:
        super().__init__(hostname="probe.test", software="probe", timeout=10)
        self.context = context
        self.seen = seen

    async def smtp_NOOP(self, params: str) -> str:
        return "noop"

    async def serve_connection(self) -> None:
        seen = self.seen
        reader: Any = self.reader
        seen["internals"] = (type(reader._buffer), reader._transport is self.transport)
        noop = self.command_method("NOOP")
        seen["noop"] = await noop("") if noop is not None else None
        seen["missing"] = self.command_method("NOPE")
        await self.write_reply(b"220 hi\r\n")
        await self.reader.readuntil(b"\n")  # "A", sent together with "B"
        seen["waiting"] = self.input_waiting()
        await self.write_reply(b"250 a\r\n", may_defer=True)
        await self.reader.readuntil(b"\n")  # "B"
        seen["waiting after"] = self.input_waiting()
        await self.write_reply(b"250 b\r\n", may_defer=True)
        await self.reader.readuntil(b"\n")  # "STARTTLS", followed by plaintext junk
        await self.write_reply(b"220 go\r\n")
        self.discard_input()
        seen["tls error"] = await self.start_tls(self.context, 10)
        line = await self.reader.readuntil(b"\n")
        await self.write_reply(b"250 " + line)
        self.set_deadline(0.3)  # the client now waits: on_deadline closes
        seen["rest"] = await self.reader.read()


@pytest.fixture
def served() -> Iterator[tuple[int, trustme.CA, dict[str, Any]]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("probe.test").configure_cert(context)
    seen: dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> asyncio.Server:
        return await loop.create_server(lambda: Probe(context, seen), "127.0.0.1", 0)

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    port = server.sockets[0].getsockname()[1]
    yield port, ca, seen
    loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def read_until(sock: socket.socket | ssl.SSLSocket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_the_adapter_buffers_switches_to_tls_and_times_out(
    served: tuple[int, trustme.CA, dict[str, Any]],
) -> None:
    port, ca, seen = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        assert read_until(raw, b"\r\n") == b"220 hi\r\n"
        raw.sendall(b"A\r\nB\r\n")
        # The reply to A waited for B's, since B was already there.
        assert read_until(raw, b"250 b\r\n") == b"250 a\r\n250 b\r\n"
        raw.sendall(b"STARTTLS\r\nJUNK\r\n")
        assert read_until(raw, b"\r\n") == b"220 go\r\n"
        client = ssl.create_default_context()
        ca.configure_trust(client)
        with client.wrap_socket(raw, server_hostname="probe.test") as tls:
            tls.sendall(b"X\r\n")
            # Not "250 JUNK": plaintext sent before the handshake was dropped.
            assert read_until(tls, b"\r\n") == b"250 X\r\n"
            assert read_until(tls, b"\r\n") == b""  # closed by the deadline
    assert seen["internals"] == (bytearray, True)
    assert (seen["noop"], seen["missing"]) == ("noop", None)
    assert (seen["waiting"], seen["waiting after"]) == (True, False)
    assert seen["tls error"] is None
