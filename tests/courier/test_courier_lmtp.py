"""The LMTP courier against aiosmtpd's LMTP server on a unix socket and on TCP."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.lmtp import LMTP
from helpers.bigbody import big_body, crlf

from chasquid.daemon.courier.base import DeliveryError
from chasquid.daemon.courier.lmtp import LMTPCourier, parse_address
from chasquid.msgbody import Body


class Handler:
    """Per-recipient replies chosen by the local part; records what was delivered."""

    def __init__(self, close_on_data: int = 0, pipelining: bool = False) -> None:
        self.delivered: list[tuple[str, list[str], bytes, list[str]]] = []
        # Close the connection at end of data this many times before answering.
        self.close_on_data = close_on_data
        # Offer PIPELINING in the LHLO reply (aiosmtpd handles pipelined
        # commands but does not advertise them); Dovecot and the bench sink do.
        self.pipelining = pipelining
        self.rsets = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self.rsets += 1
        return "250 OK"

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("nomail"):
            return "451 4.3.0 sender refused for now"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("norcpt"):
            return "550 5.1.1 no such user here"
        if address.startswith("tmprcpt"):
            return "450 4.2.1 mailbox busy"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.close_on_data > 0:
            self.close_on_data -= 1
            server.transport.close()
            return "421 closing"
        replies = []
        for rcpt in envelope.rcpt_tos:
            if rcpt.startswith("bad"):
                replies.append("550 5.2.1 mailbox disabled")
            elif rcpt.startswith("later"):
                replies.append("451 4.3.0 try again\r\n")
            else:
                self.delivered.append(
                    (envelope.mail_from, [rcpt], envelope.content, envelope.mail_options)
                )
                replies.append("250 2.0.0 delivered")
        return "\r\n".join(r.rstrip() for r in replies)


class Server:
    """A running LMTP server and the sessions it has accepted."""

    def __init__(self, handler: Handler, smtputf8: bool) -> None:
        self.handler = handler
        self.smtputf8 = smtputf8
        self.protocols: list[LMTP] = []
        self.server: asyncio.Server | None = None
        self.address = ""

    def factory(self) -> LMTP:
        proto = LMTP(self.handler, hostname="lmtp.test", enable_SMTPUTF8=self.smtputf8)
        self.protocols.append(proto)
        return proto

    async def start(self, kind: str, sockdir: Path) -> None:
        loop = asyncio.get_running_loop()
        if kind == "unix":
            path = str(sockdir / "lmtp.sock")
            self.server = await loop.create_unix_server(self.factory, path)
            self.address = path
        else:
            self.server = await loop.create_server(self.factory, "127.0.0.1", 0)
            port = self.server.sockets[0].getsockname()[1]
            self.address = f"127.0.0.1:{port}"

    async def stop(self) -> None:
        for p in self.protocols:
            if p.transport is not None:
                p.transport.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
def sockdir() -> Any:
    # Unix socket paths are limited to ~107 bytes; tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="lmtp") as d:
        yield Path(d)


Scenario = Callable[[Server, LMTPCourier], Awaitable[None]]


def run(
    kind: str,
    sockdir: Path,
    scenario: Scenario,
    handler: Handler | None = None,
    *,
    smtputf8: bool = False,
    pool_size: int = 2,
) -> None:
    async def main() -> None:
        server = Server(handler or Handler(), smtputf8)
        server.handler.pipelining = kind.endswith("+pipelining")
        await server.start(kind.removesuffix("+pipelining"), sockdir)
        courier = LMTPCourier(server.address, "chasquid.test", pool_size, timeout=5)
        try:
            await asyncio.wait_for(scenario(server, courier), 30)
        finally:
            await courier.close()
            await server.stop()

    asyncio.run(main())


KINDS = ["unix", "tcp", "unix+pipelining", "tcp+pipelining"]


@pytest.mark.parametrize("kind", KINDS)
def test_delivers_with_exact_data(kind: str, sockdir: Path) -> None:
    async def scenario(server: Server, courier: LMTPCourier) -> None:
        await courier.deliver(
            "from@x", "user@dom", Body.of(b"Subject: t\n\n.dot line\n..two\nlast")
        )
        assert server.handler.delivered == [
            (
                "from@x",
                ["user@dom"],
                b"Subject: t\r\n\r\n.dot line\r\n..two\r\nlast\r\n",
                ["BODY=8BITMIME"],
            )
        ]

    run(kind, sockdir, scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_per_recipient_results(kind: str, sockdir: Path) -> None:
    async def scenario(server: Server, courier: LMTPCourier) -> None:
        rcpts = ["ok1@d", "bad@d", "later@d", "norcpt@d", "tmprcpt@d", "ok2@d"]
        results = await courier.deliver_many("<>", rcpts, Body.of(b"Subject: x\n\nbody\n"))
        assert list(results) != []
        assert results["ok1@d"] is None
        assert results["ok2@d"] is None
        kinds = {r: (e.permanent, e.message) for r, e in results.items() if e is not None}
        assert kinds == {
            "bad@d": (True, "LMTP DATA closing: 550 5.2.1 mailbox disabled"),
            "later@d": (False, "LMTP DATA closing: 451 4.3.0 try again"),
            "norcpt@d": (True, "LMTP RCPT: 550 5.1.1 no such user here"),
            "tmprcpt@d": (False, "LMTP RCPT: 450 4.2.1 mailbox busy"),
        }
        assert [d[1][0] for d in server.handler.delivered] == ["ok1@d", "ok2@d"]
        assert [d[0] for d in server.handler.delivered] == ["<>", "<>"]
        assert len(server.protocols) == 1

    run(kind, sockdir, scenario)


def test_deliver_raises_delivery_error(sockdir: Path) -> None:
    async def scenario(server: Server, courier: LMTPCourier) -> None:
        with pytest.raises(DeliveryError) as info:
            await courier.deliver("a@b", "bad@d", Body.of(b"x\n"))
        assert info.value.permanent

    run("unix", sockdir, scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_pool_reuses_connections(kind: str, sockdir: Path) -> None:
    async def scenario(server: Server, courier: LMTPCourier) -> None:
        for i in range(3):
            await courier.deliver("a@b", f"u{i}@d", Body.of(b"x\n"))
        assert len(server.protocols) == 1
        assert courier.connections_opened == 1
        await asyncio.gather(
            *(courier.deliver("a@b", f"c{i}@d", Body.of(b"x\n")) for i in range(8))
        )
        assert len(server.handler.delivered) == 11
        assert 1 <= len(server.protocols) <= 2

    run(kind, sockdir, scenario, pool_size=2)


@pytest.mark.parametrize("kind", ["unix", "unix+pipelining"])
def test_stale_pooled_connection_is_replaced(kind: str, sockdir: Path) -> None:
    async def scenario(server: Server, courier: LMTPCourier) -> None:
        await courier.deliver("a@b", "u1@d", Body.of(b"x\n"))
        for p in server.protocols:
            if p.transport is not None:
                p.transport.close()
        await asyncio.sleep(0.05)
        await courier.deliver("a@b", "u2@d", Body.of(b"x\n"))
        assert [d[1][0] for d in server.handler.delivered] == ["u1@d", "u2@d"]
        assert len(server.protocols) == 2

    run(kind, sockdir, scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_server_closing_mid_way_retries_once_on_fresh_connection(kind: str, sockdir: Path) -> None:
    async def scenario(server: Server, courier: LMTPCourier) -> None:
        results = await courier.deliver_many("a@b", ["u1@d", "u2@d"], Body.of(b"x\n"))
        assert results == {"u1@d": None, "u2@d": None}
        assert len(server.protocols) == 2
        assert len(server.handler.delivered) == 2

    run(kind, sockdir, scenario, Handler(close_on_data=1))


@pytest.mark.parametrize("kind", ["tcp", "tcp+pipelining"])
def test_server_closing_twice_is_temporary(kind: str, sockdir: Path) -> None:
    async def scenario(server: Server, courier: LMTPCourier) -> None:
        results = await courier.deliver_many("a@b", ["u1@d", "bad@d"], Body.of(b"x\n"))
        for r in ("u1@d", "bad@d"):
            err = results[r]
            assert err is not None
            assert not err.permanent
            assert "closed" in err.message
        assert len(server.protocols) == 2
        assert server.handler.delivered == []
        # The pool recovers: the next delivery works.
        await courier.deliver("a@b", "u3@d", Body.of(b"x\n"))
        assert len(server.handler.delivered) == 1

    run(kind, sockdir, scenario, Handler(close_on_data=2))


def test_unreachable_server_is_temporary(sockdir: Path) -> None:
    async def main() -> None:
        courier = LMTPCourier(str(sockdir / "nothing.sock"), "h", 1, timeout=2)
        with pytest.raises(DeliveryError) as info:
            await courier.deliver("a@b", "u@d", Body.of(b"x\n"))
        assert not info.value.permanent
        assert "connecting" in info.value.message

    asyncio.run(main())


def test_smtputf8_used_when_offered(sockdir: Path) -> None:
    async def scenario(server: Server, courier: LMTPCourier) -> None:
        await courier.deliver("ñandú@x", "jósé@dóm", Body.of("Subject: ñ\n\nñ\n".encode()))
        (mail_from, rcpts, content, options) = server.handler.delivered[0]
        assert (mail_from, rcpts) == ("ñandú@x", ["jósé@dóm"])
        assert "SMTPUTF8" in options
        assert content == "Subject: ñ\r\n\r\nñ\r\n".encode()

    run("unix", sockdir, scenario, smtputf8=True)


def test_non_ascii_without_smtputf8(sockdir: Path) -> None:
    async def scenario(server: Server, courier: LMTPCourier) -> None:
        results = await courier.deliver_many("a@b", ["jósé@d", "user@dóm"], Body.of(b"x\n"))
        err = results["jósé@d"]
        assert err is not None
        assert err.permanent
        assert "SMTPUTF8" in err.message
        assert results["user@dóm"] is None
        assert server.handler.delivered[0][1] == ["user@xn--dm-5ja"]
        assert "SMTPUTF8" not in server.handler.delivered[0][3]

    run("unix", sockdir, scenario, smtputf8=False)


def test_parse_address() -> None:
    assert parse_address("/run/dovecot/lmtp") == "/run/dovecot/lmtp"
    assert parse_address("127.0.0.1:24") == ("127.0.0.1", 24)
    assert parse_address("[::1]:2424") == ("::1", 2424)
    for bad in ("localhost", "host:", ":24", "host:99999", "host:x"):
        with pytest.raises(Exception, match="host:port"):
            parse_address(bad)


@pytest.mark.parametrize("kind", KINDS)
def test_refused_sender_fails_every_recipient_and_keeps_the_connection(
    kind: str, sockdir: Path
) -> None:
    async def scenario(server: Server, courier: LMTPCourier) -> None:
        results = await courier.deliver_many("nomail@x", ["u1@d", "u2@d"], Body.of(b"x\n"))
        for r in ("u1@d", "u2@d"):
            err = results[r]
            assert err is not None
            assert (err.permanent, err.message) == (
                False,
                "LMTP MAIL: 451 4.3.0 sender refused for now",
            )
        assert server.handler.delivered == []
        await courier.deliver("a@b", "u3@d", Body.of(b"x\n"))
        assert [d[1] for d in server.handler.delivered] == [["u3@d"]]
        assert courier.connections_opened == 1

    run(kind, sockdir, scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_no_rset_between_successful_transactions(kind: str, sockdir: Path) -> None:
    async def scenario(server: Server, courier: LMTPCourier) -> None:
        for i in range(3):
            await courier.deliver("a@b", f"u{i}@d", Body.of(b"x\n"))
        assert server.handler.rsets == 0
        # A refused transaction is reset, so the next one starts clean.
        assert (await courier.deliver_many("a@b", ["norcpt@d"], Body.of(b"x\n")))["norcpt@d"]
        assert server.handler.rsets == 1
        await courier.deliver("a@b", "u9@d", Body.of(b"x\n"))
        assert [d[1][0] for d in server.handler.delivered] == ["u0@d", "u1@d", "u2@d", "u9@d"]
        assert courier.connections_opened == 1

    run(kind, sockdir, scenario, pool_size=1)


@pytest.mark.parametrize("pipelining", [False, True])
def test_silent_server_times_out(pipelining: bool, sockdir: Path) -> None:
    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 silent\r\n")
            await reader.readline()
            ext = b"250-PIPELINING\r\n" if pipelining else b""
            writer.write(b"250-silent\r\n" + ext + b"250 8BITMIME\r\n")
            await reader.read()  # says nothing more until the client leaves

        path = str(sockdir / "silent.sock")
        server = await asyncio.start_unix_server(serve, path)
        courier = LMTPCourier(path, "h", 1, timeout=0.3)
        try:
            start = asyncio.get_running_loop().time()
            results = await asyncio.wait_for(
                courier.deliver_many("a@b", ["u@d"], Body.of(b"x\n")), 10
            )
            elapsed = asyncio.get_running_loop().time() - start
        finally:
            server.close()
        err = results["u@d"]
        assert err is not None
        assert not err.permanent
        assert err.message == "LMTP MAIL: timed out"
        # One time-out per attempt, and one retry on a fresh connection.
        assert 0.5 < elapsed < 3

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["unix", "tcp+pipelining"])
def test_large_body_streams_from_its_file(kind: str, sockdir: Path, tmp_path: Path) -> None:
    body, data = big_body(tmp_path / "message")

    async def scenario(server: Server, courier: LMTPCourier) -> None:
        assert await courier.deliver_many("a@b", ["u1@d", "u2@d"], body) == {
            "u1@d": None,
            "u2@d": None,
        }
        # What the server got back after undoing the dot-stuffing.
        assert [d[2] for d in server.handler.delivered] == [crlf(data) + b"\r\n"] * 2

    run(kind, sockdir, scenario)


def test_unreadable_body_drops_the_connection(sockdir: Path, tmp_path: Path) -> None:
    body, _ = big_body(tmp_path / "message")
    path = tmp_path / "message"
    path.write_bytes(path.read_bytes()[: 3 * 1024 * 1024])  # cut short

    async def scenario(server: Server, courier: LMTPCourier) -> None:
        results = await courier.deliver_many("a@b", ["u1@d"], body)
        error = results["u1@d"]
        assert error is not None and not error.permanent
        assert "ends before its message does" in error.message
        assert server.handler.delivered == []

    run("unix", sockdir, scenario)
