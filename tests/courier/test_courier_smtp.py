"""The remote SMTP courier against real servers on loopback.

Hosts are 127.0.0.N addresses served by the test DNS; each runs aiosmtpd (or
a hand-written hostile peer) on the port given by CHASQUID_TEST_SMTP_PORT.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trustme
from helpers.bigbody import big_body, crlf
from helpers.smtppeers import Handler, Net, raw_server, smtp_server

from chasquid.confdir.domaininfo import DomainInfoStore, SecLevel
from chasquid.daemon.courier.base import DeliveryError, Results
from chasquid.daemon.courier.smtp import SMTPCourier, Timeouts
from chasquid.daemon.telemetry import metrics
from chasquid.msgbody import Body

MSG = b"Subject: hi\n\nline one\n.leading dot\n..two dots\nlast"


def one_mx(net: Net, domain: str = "dest.test", address: str = "127.0.0.2") -> str:
    host = f"mx.{domain}"
    net.mx(domain, (10, host))
    net.host(host, address)
    return host


def outgoing_level(info: DomainInfoStore, domain: str) -> SecLevel:
    record = info.get(domain)
    assert record is not None, f"no domain info recorded for {domain}"
    return record.outgoing


def error_of(result: Results, rcpt: str) -> DeliveryError:
    error = result[rcpt]
    assert error is not None, f"{rcpt} was delivered"
    return error


async def deliver(
    courier: SMTPCourier, rcpts: list[str], sender: str = "a@src.test", *, via: Sequence[str] = ()
) -> Results:
    return await courier.deliver_many(sender, rcpts, Body.of(MSG), via=via)


def test_secure_delivery_records_level_and_sends_crlf_dot_stuffed_data(net: Net) -> None:
    host = one_mx(net)
    info = net.domaininfo()

    async def run() -> Handler:
        async with smtp_server("127.0.0.2", net.port, tls=net.server_tls(host)) as h:
            result = await deliver(net.courier(domaininfo=info), ["b@dest.test"])
            assert result == {"b@dest.test": None}
            return h

    h = asyncio.run(run())
    [msg] = h.received
    assert msg.tls
    assert msg.mail_from == "a@src.test"
    assert msg.rcpt_tos == ["b@dest.test"]
    assert msg.content == b"Subject: hi\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\nlast\r\n"
    assert "BODY=8BITMIME" in msg.mail_options
    assert outgoing_level(info, "dest.test") == SecLevel.TLS_SECURE
    assert net.counters.get(metrics.SMTP_OUT_TLS, "tls:secure") == 1
    assert net.counters.get(metrics.SMTP_OUT_SECURITY_CHECKS, "pass") == 1


def test_one_transaction_for_all_recipients_of_a_domain(net: Net) -> None:
    one_mx(net)
    handler = Handler(
        rcpt_replies={
            "perm@dest.test": "550 5.1.1 no such user",
            "temp@dest.test": "451 4.3.0 try later",
        }
    )

    async def run() -> dict[str, DeliveryError | None]:
        async with smtp_server("127.0.0.2", net.port, handler=handler):
            rcpts = ["ok1@dest.test", "perm@dest.test", "temp@dest.test", "ok2@dest.test"]
            return await deliver(net.courier(), rcpts)

    result = asyncio.run(run())
    assert handler.mails == 1
    assert [m.rcpt_tos for m in handler.received] == [["ok1@dest.test", "ok2@dest.test"]]
    assert result["ok1@dest.test"] is None and result["ok2@dest.test"] is None
    perm, temp = result["perm@dest.test"], result["temp@dest.test"]
    assert perm is not None and perm.permanent
    assert perm.message == "MAIL+RCPT 550 5.1.1 no such user"
    assert temp is not None and not temp.permanent
    assert "451 4.3.0 try later" in temp.message
    assert temp.message.startswith("all MXs returned transient failures (last: ")


def test_data_rejection_is_per_reply_class(net: Net) -> None:
    one_mx(net)
    handler = Handler(data_reply="554 5.7.1 spam")

    async def run() -> dict[str, DeliveryError | None]:
        async with smtp_server("127.0.0.2", net.port, handler=handler):
            return await deliver(net.courier(), ["x@dest.test"])

    err = asyncio.run(run())["x@dest.test"]
    assert err is not None and err.permanent
    assert err.message == "DATA closing 554 5.7.1 spam"


def test_falls_back_to_next_mx_in_preference_order(net: Net) -> None:
    net.mx("dest.test", (20, "mx2.dest.test"), (10, "mx1.dest.test"))
    net.host("mx1.dest.test", "127.0.0.3")  # nothing listens there
    net.host("mx2.dest.test", "127.0.0.4")

    async def run() -> tuple[dict[str, DeliveryError | None], Handler]:
        async with smtp_server("127.0.0.4", net.port) as h:
            return await deliver(net.courier(), ["x@dest.test"]), h

    result, h = asyncio.run(run())
    assert result == {"x@dest.test": None}
    assert len(h.received) == 1


def test_all_hosts_down_is_temporary_with_last_error(net: Net) -> None:
    one_mx(net, address="127.0.0.5")
    result = asyncio.run(deliver(net.courier(), ["x@dest.test"]))
    err = result["x@dest.test"]
    assert err is not None and not err.permanent
    assert err.message.startswith("all MXs returned transient failures (last: Could not dial: ")


def test_permanent_error_stops_trying_other_hosts(net: Net) -> None:
    net.mx("dest.test", (10, "mx1.dest.test"), (20, "mx2.dest.test"))
    net.host("mx1.dest.test", "127.0.0.2")
    net.host("mx2.dest.test", "127.0.0.3")
    first = Handler(rcpt_replies={"x@dest.test": "550 5.1.1 unknown"})

    async def run() -> tuple[DeliveryError | None, Handler]:
        async with (
            smtp_server("127.0.0.2", net.port, handler=first),
            smtp_server("127.0.0.3", net.port) as second,
        ):
            return (await deliver(net.courier(), ["x@dest.test"]))["x@dest.test"], second

    err, second = asyncio.run(run())
    assert err is not None and err.permanent
    assert second.mails == 0


def test_domain_with_only_an_a_record(net: Net) -> None:
    net.host("aonly.test", "127.0.0.6")

    async def run() -> tuple[dict[str, DeliveryError | None], Handler]:
        async with smtp_server("127.0.0.6", net.port) as h:
            return await deliver(net.courier(), ["x@aonly.test"]), h

    result, h = asyncio.run(run())
    assert result == {"x@aonly.test": None}
    assert h.received[0].rcpt_tos == ["x@aonly.test"]


def test_nxdomain_and_null_mx_fail_permanently_servfail_temporarily(net: Net) -> None:
    net.mx("nullmx.test", (0, "."))
    net.zone["broken.test"] = {"RCODE": ["SERVFAIL"]}
    result = asyncio.run(
        deliver(net.courier(), ["a@nowhere.test", "b@nullmx.test", "c@broken.test"])
    )
    assert error_of(result, "a@nowhere.test").permanent
    assert error_of(result, "b@nullmx.test").permanent
    assert not error_of(result, "c@broken.test").permanent
    for err in result.values():
        assert err is not None and err.message.startswith("Could not find mail server: ")


def test_untrusted_certificate_is_tls_insecure(net: Net) -> None:
    host = one_mx(net)
    other_ca = trustme.CA()
    info = net.domaininfo()

    async def run() -> Handler:
        async with smtp_server("127.0.0.2", net.port, tls=net.server_tls(host, ca=other_ca)) as h:
            assert await deliver(net.courier(domaininfo=info), ["x@dest.test"]) == {
                "x@dest.test": None
            }
            return h

    h = asyncio.run(run())
    assert [m.tls for m in h.received] == [True]
    assert outgoing_level(info, "dest.test") == SecLevel.TLS_INSECURE
    assert net.counters.get(metrics.SMTP_OUT_TLS, "tls:insecure") == 1


def test_certificate_for_another_name_is_tls_insecure(net: Net) -> None:
    one_mx(net)
    info = net.domaininfo()

    async def run() -> None:
        async with smtp_server("127.0.0.2", net.port, tls=net.server_tls("other.test")):
            await deliver(net.courier(domaininfo=info), ["x@dest.test"])

    asyncio.run(run())
    assert outgoing_level(info, "dest.test") == SecLevel.TLS_INSECURE


def test_downgrade_refused_after_secure_delivery_until_cleared(net: Net) -> None:
    host = one_mx(net)
    info = net.domaininfo()
    courier = net.courier(domaininfo=info)

    async def run() -> tuple[DeliveryError | None, DeliveryError | None, Handler]:
        async with smtp_server("127.0.0.2", net.port, tls=net.server_tls(host)):
            assert await deliver(courier, ["x@dest.test"]) == {"x@dest.test": None}
        async with smtp_server("127.0.0.2", net.port) as plain:
            refused = (await deliver(courier, ["x@dest.test"]))["x@dest.test"]
            info.clear("dest.test")
            allowed = (await deliver(courier, ["x@dest.test"]))["x@dest.test"]
            return refused, allowed, plain

    refused, allowed, plain = asyncio.run(run())
    assert refused is not None and not refused.permanent
    assert "Security level check failed (level:PLAIN)" in refused.message
    assert allowed is None
    assert len(plain.received) == 1
    assert net.counters.get(metrics.SMTP_OUT_SECURITY_CHECKS, "fail") == 1


async def _bad_tls_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Offers STARTTLS, then answers the handshake with garbage; plain mail works."""
    writer.write(b"220 bad-tls ESMTP\r\n")
    while line := await reader.readline():
        cmd = line.decode().strip().upper()
        if cmd.startswith("EHLO"):
            writer.write(b"250-bad-tls\r\n250-STARTTLS\r\n250 8BITMIME\r\n")
        elif cmd == "STARTTLS":
            writer.write(b"220 go ahead\r\n")
            await writer.drain()
            await reader.read(1024)
            writer.write(b"this is not TLS at all\r\n" * 10)
            await writer.drain()
            return
        elif cmd == "DATA":
            writer.write(b"354 go\r\n")
            await writer.drain()
            while (await reader.readline()) not in (b".\r\n", b""):
                pass
            writer.write(b"250 ok\r\n")
        elif cmd == "QUIT":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            return
        else:
            writer.write(b"250 ok\r\n")
        await writer.drain()


def test_failed_handshake_retries_in_plain(net: Net) -> None:
    one_mx(net)

    async def run() -> dict[str, DeliveryError | None]:
        async with raw_server("127.0.0.2", net.port, _bad_tls_peer):
            return await deliver(net.courier(), ["x@dest.test"])

    assert asyncio.run(run()) == {"x@dest.test": None}
    assert net.counters.get(metrics.SMTP_OUT_TLS, "tls:failed") == 1
    assert net.counters.get(metrics.SMTP_OUT_TLS, "plain") == 1


def test_failed_handshake_not_retried_in_plain_for_a_tls_domain(net: Net) -> None:
    one_mx(net)
    info = net.domaininfo()
    info.outgoing_ok("dest.test", SecLevel.TLS_INSECURE)

    async def run() -> DeliveryError | None:
        async with raw_server("127.0.0.2", net.port, _bad_tls_peer):
            return (await deliver(net.courier(domaininfo=info), ["x@dest.test"]))["x@dest.test"]

    err = asyncio.run(run())
    assert err is not None and not err.permanent
    assert "Security level check failed (level:PLAIN)" in err.message
    assert net.counters.get(metrics.SMTP_OUT_TLS, "plain") == 0


def test_smtputf8_used_when_offered(net: Net) -> None:
    one_mx(net)

    async def run() -> tuple[dict[str, DeliveryError | None], Handler]:
        async with smtp_server("127.0.0.2", net.port, enable_SMTPUTF8=True) as h:
            return await deliver(net.courier(), ["ñandú@dest.test"], sender="josé@src.test"), h

    result, h = asyncio.run(run())
    assert result == {"ñandú@dest.test": None}
    assert h.received[0].mail_from == "josé@src.test"
    assert "SMTPUTF8" in h.received[0].mail_options


def test_without_smtputf8_domains_go_ascii_and_local_parts_fail(net: Net) -> None:
    one_mx(net, domain="xn--aca-6ma.test")

    async def run() -> tuple[dict[str, DeliveryError | None], Handler]:
        async with smtp_server("127.0.0.2", net.port, enable_SMTPUTF8=False) as h:
            result = await deliver(
                net.courier(), ["user@ñaca.test", "ñandú@ñaca.test"], sender="a@ñaca.test"
            )
            return result, h

    result, h = asyncio.run(run())
    assert result["user@ñaca.test"] is None
    err = result["ñandú@ñaca.test"]
    assert err is not None and err.permanent
    assert "599 local part is not ASCII but server does not support SMTPUTF8" in err.message
    [msg] = h.received
    assert msg.mail_from == "a@xn--aca-6ma.test"
    assert msg.rcpt_tos == ["user@xn--aca-6ma.test"]
    assert "SMTPUTF8" not in msg.mail_options


def test_line_break_in_an_address_is_never_sent(net: Net) -> None:
    one_mx(net)
    sneaky = "b>\r\nRCPT TO:<evil@dest.test"

    async def run() -> tuple[Results, Handler]:
        async with smtp_server("127.0.0.2", net.port) as h:
            return await deliver(net.courier(), [sneaky, "c@dest.test"]), h

    result, h = asyncio.run(run())
    assert error_of(result, sneaky).permanent
    assert "line break" in error_of(result, sneaky).message
    assert result["c@dest.test"] is None
    [msg] = h.received
    assert msg.rcpt_tos == ["c@dest.test"]


def test_message_over_advertised_size_fails_permanently(net: Net) -> None:
    one_mx(net)

    async def run() -> DeliveryError | None:
        async with smtp_server("127.0.0.2", net.port, data_size_limit=10) as h:
            err = (await deliver(net.courier(), ["x@dest.test"]))["x@dest.test"]
            assert h.mails == 0
            return err

    err = asyncio.run(run())
    assert err is not None and err.permanent
    assert "552" in err.message


def test_forward_via_servers_without_mx(net: Net) -> None:
    net.host("relay.test", "127.0.0.7")

    async def run() -> tuple[dict[str, DeliveryError | None], Handler]:
        async with smtp_server("127.0.0.7", net.port) as h:
            result = await deliver(net.courier(), ["x@nomx.test"], via=["down.test", "relay.test"])
            return result, h

    result, h = asyncio.run(run())
    assert result == {"x@nomx.test": None}
    assert h.received[0].rcpt_tos == ["x@nomx.test"]


def test_forward_all_servers_down(net: Net) -> None:
    err = asyncio.run(deliver(net.courier(), ["x@nomx.test"], via=["down.test"]))["x@nomx.test"]
    assert err is not None and not err.permanent
    assert err.message.startswith("all servers returned transient failures (last: ")


def test_deliver_raises_for_one_recipient(net: Net) -> None:
    one_mx(net)
    handler = Handler(rcpt_replies={"x@dest.test": "550 5.1.1 gone"})

    async def run() -> None:
        async with smtp_server("127.0.0.2", net.port, handler=handler):
            await net.courier().deliver("a@src.test", "x@dest.test", Body.of(MSG))

    try:
        asyncio.run(run())
    except DeliveryError as e:
        assert e.permanent
    else:
        raise AssertionError("deliver did not raise")


# Hostile peers: each must give a temporary failure quickly, never a hang.


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"\x00\xffHELLO THERE not smtp\r\n")
    await writer.drain()
    await reader.read(100)


async def _endless_multiline(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 ok\r\n")
    await reader.readline()
    chunk = b"250-still going, and going\r\n" * 1000
    for _ in range(400):  # 11 MiB: far more than the 2 MiB a connection may read
        writer.write(chunk)
        if writer.transport.is_closing():
            return
        await writer.drain()


async def _stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 ok\r\n")
    await reader.readline()
    await asyncio.sleep(30)


async def _huge_banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 " + b"x" * 5_000_000 + b"\r\n")
    await writer.drain()


async def _bad_greeting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"554 go away\r\n")
    await writer.drain()


#: Short enough that a peer which stalls fails the test run quickly.
HOSTILE_TIMEOUTS = Timeouts(dial=2, reply=3, handshake=2, session=6)


def _hostile(
    net: Net,
    peer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    expect: str,
    timeouts: Timeouts = HOSTILE_TIMEOUTS,
) -> None:
    one_mx(net)

    async def run() -> DeliveryError | None:
        async with raw_server("127.0.0.2", net.port, peer):
            courier = net.courier(timeouts=timeouts)
            return (await deliver(courier, ["x@dest.test"]))["x@dest.test"]

    start = time.monotonic()
    err = asyncio.run(run())
    assert time.monotonic() - start < timeouts.session + 4
    assert err is not None and not err.permanent
    assert expect in err.message, err.message


def test_garbage_greeting(net: Net) -> None:
    _hostile(net, _garbage, "Error creating client: malformed reply line")


def test_endless_multiline_reply(net: Net) -> None:
    # Only the size cap may end this one: a loaded machine reads 2 MiB of lines slowly.
    slow_ok = Timeouts(dial=2, reply=30, handshake=2, session=40)
    _hostile(net, _endless_multiline, "Error saying hello: replies exceeded", slow_ok)


def test_stalled_peer(net: Net) -> None:
    _hostile(net, _stall, "Error saying hello: timed out")


def test_huge_banner(net: Net) -> None:
    _hostile(net, _huge_banner, "Error creating client: reply line too long")


def test_rejecting_greeting(net: Net) -> None:
    _hostile(net, _bad_greeting, "Error creating client: 554 go away")


def test_large_body_streams_from_its_file(net: Net, tmp_path: Path) -> None:
    host = one_mx(net)
    body, data = big_body(tmp_path / "message")

    async def run() -> Handler:
        async with smtp_server("127.0.0.2", net.port, tls=net.server_tls(host)) as h:
            result = await net.courier().deliver_many("a@src.test", ["b@dest.test"], body)
            assert result == {"b@dest.test": None}
            return h

    [msg] = asyncio.run(run()).received
    assert msg.content == crlf(data) + b"\r\n"


def test_unreadable_body_is_a_temporary_failure(net: Net, tmp_path: Path) -> None:
    one_mx(net)
    body, _ = big_body(tmp_path / "message")
    path = tmp_path / "message"
    path.write_bytes(path.read_bytes()[: 3 * 1024 * 1024])  # cut short

    async def run() -> tuple[Handler, Results]:
        async with smtp_server("127.0.0.2", net.port) as h:
            return h, await net.courier().deliver_many("a@src.test", ["b@dest.test"], body)

    h, result = asyncio.run(run())
    error = error_of(result, "b@dest.test")
    assert not error.permanent and "ends before its message does" in error.message
    assert h.received == []
