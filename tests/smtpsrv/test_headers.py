"""Pure pieces: trace headers, header-section check, PROXY lines, address tokens."""

from __future__ import annotations

import pytest

from chasquid.daemon.smtpsrv import headers
from chasquid.daemon.smtpsrv.address import AddressError, parse_address
from chasquid.daemon.smtpsrv.proxyproto import ProxyError, parse_proxy_line


def test_received_authenticated_tls_hides_ip() -> None:
    value = headers.received(
        helo_domain="laptop",
        client_ip="192.0.2.7",
        hostname="mx.example.com",
        esmtp=True,
        tls=headers.TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
        authenticated=True,
        mode_name="submission+TLS",
        sender='b"ob@example.com',
        now=0,
    )
    lines = value.split("\n")
    assert lines[:4] == [
        "from laptop",
        "by mx.example.com (chasquid) with ESMTPSA",
        "tls TLS_AES_256_GCM_SHA384",
        '(over submission+TLS, TLS-1.3, envelope from "b\\"ob@example.com")',
    ]
    assert lines[4].startswith("; Thu, 01 Jan 1970 ")


@pytest.mark.parametrize(
    ("ip", "literal"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8::7", "IPv6:2001:db8::7"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
    ],
)
def test_ip_literal(ip: str, literal: str) -> None:
    assert headers.ip_literal(ip) == literal


def test_format_header_indents_continuations() -> None:
    assert headers.format_header("A", "x\ny\n") == b"A: x\n\ty\n"


def test_cipher_names() -> None:
    assert headers.cipher_suite_name("ECDHE-RSA-AES128-GCM-SHA256") == (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Hello world\n",
        b" cont: x\n\nbody",
        b"Bad Name\x01: x\n\n",
        b"A: x\x01y\n\n",
        b": x\n",
    ],
)
def test_header_section_errors(data: bytes) -> None:
    with pytest.raises(headers.HeaderError):
        headers.check_header_section(data)


def test_header_section_counts_received() -> None:
    assert headers.check_header_section(b"\nbody") == 0
    assert headers.check_header_section(b"Received: a\n\tb\nRECEIVED : c\nX: y") == 2


@pytest.mark.parametrize(
    ("out", "ok"),
    [
        (b"", True),
        (b"A: b\n", True),
        (b"A: b\n\tc\n", True),
        (b"\n", False),
        (b"A: b", False),
        (b"A: b\n\nC: d\n", False),
        (b" x\n", False),
        (b"nocolon\n", False),
    ],
)
def test_hook_output_validation(out: bytes, ok: bool) -> None:
    assert headers.hook_output_is_valid(out) is ok


def test_proxy_line() -> None:
    h = parse_proxy_line(b"PROXY TCP6 2001:db8::1 ::1 1234 25\r\n")
    assert (h.src_ip, h.src_port, h.dst_port) == ("2001:db8::1", 1234, 25)
    for bad in (
        b"PROXY UNKNOWN\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n",
        b"HELO x\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 x 5.6.7.8 1 2\r\n",
    ):
        with pytest.raises(ProxyError):
            parse_proxy_line(bad)


@pytest.mark.parametrize(
    ("token", "addr"),
    [
        ("<a@b>", "a@b"),
        ("a@b", "a@b"),
        ('<"x y"@b>', "x y@b"),
        ("N<a@b>", "a@b"),
        ("<a@b>(c)", "a@b"),
        ("<ñ@ü.de>", "ñ@ü.de"),
        ("<a@[1.2.3.4]>", "a@[1.2.3.4]"),
    ],
)
def test_parse_address(token: str, addr: str) -> None:
    assert parse_address(token) == addr


@pytest.mark.parametrize("token", ["<a", "<@a:b@c>", "<a@b.>", "<a..b@c>", "<>", "<a@>", "a"])
def test_parse_address_errors(token: str) -> None:
    with pytest.raises(AddressError):
        parse_address(token)
