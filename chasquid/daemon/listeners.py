"""Listening sockets of the three modes: configured ``host:port`` addresses and inherited ones.

An address ``systemd`` stands for the sockets systemd passed under the mode's
name. Binding is separate from serving so the daemon can fail start-up with
one clear line before any session runs.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chasquid.daemon.smtpsrv.server import Mode
from chasquid.daemon.telemetry.maillog import format_client
from chasquid.errors import ChasquidError, os_reason

log = logging.getLogger(__name__)

#: Backlog of self-opened listeners (the kernel caps it at somaxconn).
BACKLOG = 1024


class ListenError(ChasquidError):
    """A listening address is invalid or cannot be bound."""


@dataclass(frozen=True)
class Listener:
    """One socket to serve: its mode, what to call it in logs, and where it came from."""

    mode: Mode
    address: str  # the configured string, or the local address of an inherited socket
    sock: socket.socket | None  # None until bound (configured addresses)
    via_systemd: bool


def split_host_port(address: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` / ``:port``; raises ListenError when malformed."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ListenError(f"listen tcp {address}: address {address}: missing port in address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ListenError(f"listen tcp {address}: address {address}: too many colons in address")
    try:
        port = socket.getservbyname(port_text, "tcp") if not port_text.isdigit() else int(port_text)
    except OSError as e:
        raise ListenError(f"listen tcp {address}: unknown port {port_text!r}") from e
    if not 0 <= port <= 65535:
        raise ListenError(f"listen tcp {address}: address {port_text}: invalid port")
    return host, port


def bind_tcp(address: str) -> socket.socket:
    """Bind and listen on a configured address; ``:port`` listens on all IPv4 and IPv6 addresses.

    Raises ListenError with a Go-style message such as
    ``listen tcp :25: bind: address already in use``.
    """
    host, port = split_host_port(address)
    if host == "":
        try:
            return _listen(socket.AF_INET6, ("::", port), address, dual_stack=True)
        except ListenError as e:
            # Only fall back to IPv4 when the machine has no IPv6 at all: any
            # other failure (port in use, no permission) is the real answer.
            if e.__cause__ is None or not _is_no_ipv6(e.__cause__):
                raise
            return _listen(socket.AF_INET, ("0.0.0.0", port), address, dual_stack=False)
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise ListenError(f"listen tcp {address}: lookup {host}: {e.strerror}") from e
    family, _type, _proto, _canon, sockaddr = infos[0]
    return _listen(family, sockaddr, address, dual_stack=False)


def _is_no_ipv6(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


def _listen(
    family: int, sockaddr: tuple[object, ...], address: str, dual_stack: bool
) -> socket.socket:
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise ListenError(f"listen tcp {address}: socket: {os_reason(e)}") from e
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise ListenError(f"listen tcp {address}: bind: {os_reason(e)}") from e
    sock.setblocking(False)
    return sock


class EmptyAddressError(ListenError):
    """A mode lists the empty string as an address."""

    def __init__(self, mode: Mode) -> None:
        super().__init__(f"If you want to disable {mode.display}, remove it from the config")
        self.mode = mode


def plan_listeners(
    addresses: Mapping[Mode, Sequence[str]],
    inherited: Mapping[str, list[socket.socket]],
) -> list[Listener]:
    """Decide what to serve for each mode, in mode order; configured addresses are not bound yet.

    ``addresses`` are each mode's configured ones, ``inherited`` the sockets
    systemd passed, by name. Logs the two warning
    lines for a mode without listeners; raises EmptyAddressError for ``""``
    and ListenError ``No address to listen on`` when no mode has any.
    """
    planned: list[Listener] = []
    for mode in Mode:
        count = 0
        for addr in addresses.get(mode, ()):
            if addr == "":
                log.error("Invalid empty listening address for %s", mode.display)
                raise EmptyAddressError(mode)
            if addr == "systemd":
                for sock in inherited.get(mode.systemd_name, []):
                    local = format_client(sock.getsockname())
                    planned.append(Listener(mode, local, sock, via_systemd=True))
                    count += 1
            else:
                planned.append(Listener(mode, addr, None, via_systemd=False))
                count += 1
        if count == 0:
            log.error("Warning: No %s addresses/listeners", mode.display)
            log.error("If using systemd, check that you named the sockets")
    if not planned:
        raise ListenError("No address to listen on")
    return planned
