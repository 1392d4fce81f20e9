"""Local RPC: the params encoding and a real server on a unix socket in tmp_path."""

from __future__ import annotations

import asyncio
import socket
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from chasquid.confdir.aliases import Recipient, RecipientKind
from chasquid.confdir.domaininfo import DomainInfoError
from chasquid.localrpc import client, protocol
from chasquid.localrpc import server as rpcserver
from chasquid.localrpc.protocol import DaemonNotRunningError, Handler, Params, ParamsError, RPCError


def test_encoding_of_the_spec_example() -> None:
    params = [("(pipe)", "cmd args"), ("(email)", "r1@r1.com")]
    assert protocol.encode_params(params) == "%28email%29=r1%40r1.com&%28pipe%29=cmd+args"
    assert protocol.decode_params("%28email%29=r1%40r1.com&%28pipe%29=cmd+args") == [
        ("(email)", "r1@r1.com"),
        ("(pipe)", "cmd args"),
    ]


def test_encoding_keeps_unreserved_and_order_within_a_key() -> None:
    encoded = protocol.encode_params([("k", "b"), ("a", "x-_.~ñ"), ("k", "a")])
    assert encoded == "a=x-_.~%C3%B1&k=b&k=a"
    assert protocol.decode_params(encoded) == [("a", "x-_.~ñ"), ("k", "b"), ("k", "a")]
    assert protocol.encode_params([]) == ""
    assert protocol.decode_params("") == []


@pytest.mark.parametrize("bad", ["a=%zz", "a=%4", "a=b;c=d", "a=%ff"])
def test_decoding_rejects_bad_params(bad: str) -> None:
    with pytest.raises(ParamsError):
        protocol.decode_params(bad)


@dataclass
class Resolver:
    async def resolve(self, addr: str) -> list[Recipient]:
        if addr == "test@test.com":
            return [Recipient("r1@r1.com"), Recipient("cmd args", RecipientKind.PIPE)]
        if addr == "broken@test.com":
            raise RPCError("exit status 1")
        return [Recipient(addr)]


class DomainInfo:
    def __init__(self) -> None:
        self.cleared: list[str] = []

    def clear(self, domain: str) -> None:
        if domain != "known.org":
            raise DomainInfoError("does not exist")
        self.cleared.append(domain)


class Server:
    """The RPC server on its own event loop in a thread, as in the daemon."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            rpcserver.start_server(path, handlers), self.loop
        ).result(10)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, DomainInfo]]:
    info = DomainInfo()
    path = tmp_path / "localrpc-v1"
    path.write_text("stale")
    server = Server(path, rpcserver.standard_handlers(Resolver, info))
    yield server, info
    server.close()


def raw_exchange(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(request)
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def test_alias_resolve_wire_format(served: tuple[Server, DomainInfo]) -> None:
    server, _ = served
    reply = raw_exchange(server.path, b"AliasResolve Address=test%40test.com\r\n")
    assert reply == b"200 %28email%29=r1%40r1.com&%28pipe%29=cmd+args\r\n"
    # LF alone is accepted too.
    assert (
        raw_exchange(server.path, b"AliasResolve Address=x%40y\n") == b"200 %28email%29=x%40y\r\n"
    )


def test_errors_on_the_wire(served: tuple[Server, DomainInfo]) -> None:
    server, _ = served
    assert raw_exchange(server.path, b"Nope a=b\r\n") == b"500 unknown method\r\n"
    assert raw_exchange(server.path, b"AliasResolve Address=%zz\r\n").startswith(
        b"500 invalid URL escape"
    )
    assert raw_exchange(server.path, b"AliasResolve Address=broken%40test.com\r\n") == (
        b"500 exit status 1\r\n"
    )
    assert raw_exchange(server.path, b"DomaininfoClear Domain=x.org\r\n") == (
        b"500 does not exist\r\n"
    )


def test_client_calls(served: tuple[Server, DomainInfo]) -> None:
    server, info = served
    result = client.call(server.path, "AliasResolve", [("Address", "test@test.com")])
    assert result == [("(email)", "r1@r1.com"), ("(pipe)", "cmd args")]
    assert client.call(server.path, "DomaininfoClear", [("Domain", "known.org")]) == []
    assert info.cleared == ["known.org"]
    with pytest.raises(RPCError, match=r"^does not exist$"):
        client.call(server.path, "DomaininfoClear", [("Domain", "other.org")])


def test_client_without_daemon(tmp_path: Path) -> None:
    path = tmp_path / "localrpc-v1"
    with pytest.raises(DaemonNotRunningError, match="no such file or directory"):
        client.call(path, "AliasResolve", [("Address", "a@b")])


def test_deadline_closes_a_silent_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpcserver, "DEADLINE", 0.3)

    async def echo(params: Params) -> Params:
        return params

    server = Server(tmp_path / "sock", {"Echo": echo})
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(server.path))
            s.sendall(b"Echo a=1")  # no line end: the server waits, then gives up
            assert s.recv(100) == b""
        assert client.call(server.path, "Echo", [("a", "1")]) == [("a", "1")]
    finally:
        server.close()


def test_overlong_request_gets_an_answer(served: tuple[Server, DomainInfo]) -> None:
    server, _ = served
    request = b"AliasResolve Address=" + b"a" * rpcserver.MAX_REQUEST + b"\r\n"
    assert raw_exchange(server.path, request).startswith(b"500 request longer than")


def test_socket_is_only_for_the_daemons_user_and_group(
    served: tuple[Server, DomainInfo],
) -> None:
    server, _ = served
    assert stat.S_ISSOCK(server.path.stat().st_mode)
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o660
