"""TCP ports for test listeners that stay free between choosing them and binding them.

Asking the kernel for port 0 and closing the socket races: the port comes from
the ephemeral range, so any outgoing connection made before the listener binds
(another xdist worker's client, Postfix, the daemon's own courier) may take it,
and the listener then fails with "address already in use". CI hit exactly that.

So ports here come from below (or above) the kernel's ephemeral range, which
the kernel never hands to outgoing connections, and each xdist worker walks its
own slice of that range, so two workers never pick the same port.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

_LOWEST = 10000  # leave well-known and commonly configured ports alone
_HIGHEST = 65535


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _worker_slice() -> range:
    """The ports this xdist worker (or the only process) may hand out."""
    eph_lo, eph_hi = _ephemeral_range()
    below = range(_LOWEST, max(_LOWEST, eph_lo))
    above = range(min(eph_hi + 1, _HIGHEST + 1), _HIGHEST + 1)
    pool = below if len(below) >= len(above) else above
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = len(pool) // workers
    start = pool.start + (worker % workers) * size
    return range(start, start + size)


def _candidates() -> Iterator[int]:
    ports = _worker_slice()
    # A random starting point, so a rerun right after a crashed run does not
    # meet its predecessor's lingering listeners first.
    offset = random.randrange(len(ports))
    return itertools.cycle([*ports[offset:], *ports[:offset]])


_next = _candidates()


def _bindable(port: int, hosts: Sequence[str]) -> bool:
    socks: list[socket.socket] = []
    try:
        for host in hosts:
            s = socket.socket()
            socks.append(s)
            s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def free_port(*hosts: str) -> int:
    """A TCP port nothing listens on right now on every one of ``hosts`` (default 127.0.0.1)."""
    hosts = hosts or ("127.0.0.1",)
    for _ in range(1000):
        port = next(_next)
        if _bindable(port, hosts):
            return port
    raise RuntimeError(f"no free TCP port on {', '.join(hosts)} in this worker's range")
