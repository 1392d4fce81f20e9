"""Outgoing STARTTLS: the intermediate suites first, ECDHE with AES-CBC as a last resort, no less.

The peers accept everything (TLS 1.0 up, every suite OpenSSL has), so what
they share with the courier is what the courier offers.
"""

from __future__ import annotations

import asyncio
import ssl
import warnings
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP, Envelope, Session
from helpers.smtppeers import Handler, Net, smtp_server

from chasquid.daemon.telemetry import metrics
from chasquid.msgbody import Body
from chasquid.tlsprofile import CLIENT_FALLBACK_CIPHERS, INTERMEDIATE_CIPHERS

TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


@dataclass
class TLSRecorder(Handler):
    """Records, per message, the suites shared with the client and the one agreed."""

    shared: list[set[str]] = field(default_factory=list)
    agreed: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        obj = server.transport.get_extra_info("ssl_object") if server.transport else None
        if obj is not None:
            self.shared.append({name for name, _, _ in obj.shared_ciphers() or []})
            cipher = obj.cipher()
            self.agreed.append((obj.version() or "", cipher[0] if cipher else ""))
        return await super().handle_DATA(server, session, envelope)


def _permissive(net: Net, host: str, *, ciphers: str, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = net.server_tls(host)
    with warnings.catch_warnings():
        # Old protocol versions are deprecated: that is the point of these peers.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
    ctx.set_ciphers(ciphers)
    return ctx


def _deliver(net: Net, tls: ssl.SSLContext) -> TLSRecorder:
    net.mx("dest.test", (10, "mx.dest.test"))
    net.host("mx.dest.test", "127.0.0.2")

    async def run() -> TLSRecorder:
        handler = TLSRecorder()
        async with smtp_server("127.0.0.2", net.port, tls=tls, handler=handler):
            result = await net.courier().deliver_many(
                "a@src.test", ["b@dest.test"], Body.of(b"x\n")
            )
        assert result == {"b@dest.test": None}
        return handler

    return asyncio.run(run())


def test_offers_the_profile_suites_and_the_ecdhe_cbc_fallback_only(net: Net) -> None:
    tls = _permissive(
        net, "mx.dest.test", ciphers="ALL:@SECLEVEL=0", maximum=ssl.TLSVersion.MAXIMUM_SUPPORTED
    )
    h = _deliver(net, tls)
    [shared] = h.shared
    assert shared == {*INTERMEDIATE_CIPHERS, *CLIENT_FALLBACK_CIPHERS, *TLS13_SUITES}
    assert h.agreed[0][0] == "TLSv1.3"


def test_server_with_only_a_cbc_suite_still_gets_tls(net: Net) -> None:
    tls = _permissive(
        net,
        "mx.dest.test",
        ciphers="ECDHE-ECDSA-AES256-SHA384:@SECLEVEL=0",
        maximum=ssl.TLSVersion.TLSv1_2,
    )
    h = _deliver(net, tls)
    assert h.agreed == [("TLSv1.2", "ECDHE-ECDSA-AES256-SHA384")]
    assert h.received[0].tls
    assert net.counters.get(metrics.SMTP_OUT_TLS, "tls:secure") == 1


def test_server_with_only_tls_1_1_gets_plain_text(net: Net) -> None:
    tls = _permissive(
        net, "mx.dest.test", ciphers="ALL:@SECLEVEL=0", maximum=ssl.TLSVersion.TLSv1_1
    )
    h = _deliver(net, tls)
    assert h.agreed == []
    assert not h.received[0].tls
    assert net.counters.get(metrics.SMTP_OUT_TLS, "tls:failed") == 1
