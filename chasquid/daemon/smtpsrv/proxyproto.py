"""HAProxy PROXY protocol v1."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from chasquid.errors import ChasquidError


class ProxyError(ChasquidError):
    """The PROXY line is missing or malformed; the connection is closed silently."""


@dataclass(frozen=True)
class ProxyHeader:
    """The addresses carried by a PROXY v1 line."""

    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int


def _port(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ProxyError(f"invalid port {text!r}")
    value = int(text)
    if value > 65535:
        raise ProxyError(f"invalid port {text!r}")
    return value


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ProxyError(f"invalid IP address {text!r}") from None


def parse_proxy_line(line: bytes) -> ProxyHeader:
    """Parse one PROXY v1 line (with or without its CRLF terminator)."""
    try:
        fields = line.decode("ascii").split()
    except UnicodeDecodeError:
        raise ProxyError("invalid PROXY line: not ASCII") from None
    if len(fields) < 2 or fields[0] != "PROXY":
        raise ProxyError("invalid PROXY line: does not start with PROXY")
    if fields[1] not in ("TCP4", "TCP6"):
        raise ProxyError(f"invalid PROXY line: unsupported protocol {fields[1]!r}")
    if len(fields) != 6:
        raise ProxyError(f"invalid PROXY line: expected 6 fields, got {len(fields)}")
    return ProxyHeader(
        src_ip=_ip(fields[2]),
        dst_ip=_ip(fields[3]),
        src_port=_port(fields[4]),
        dst_port=_port(fields[5]),
    )
