"""The live reception sessions: for graceful shutdown and the connection limits."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from typing import Protocol


class Tracked(Protocol):
    """What the registry needs from a session."""

    @property
    def in_transaction(self) -> bool:
        """Between an accepted MAIL and the reply to its DATA."""
        ...

    def close(self) -> None:
        """Close the connection; the session's task then ends on its own."""
        ...


class Sessions:
    """The sessions being served, and the work they must not abandon.

    A session adds itself when its connection is made and removes itself when
    its task ends.  Queueing an accepted message runs as a separate task
    (``keep``) so that a client vanishing mid-queueing cannot cancel it; the
    registry holds those tasks until they finish, and ``drain`` waits for them.
    Sessions also ``claim`` a slot for their client (``client_key``) once it
    is known, for the per-client connection limit, and ``release`` it at the end.
    """

    def __init__(self) -> None:
        self._live: set[Tracked] = set()
        self._work: set[asyncio.Task[object]] = set()
        self._per_client: dict[str, int] = {}

    def add(self, session: Tracked) -> None:
        """Register a new session."""
        self._live.add(session)

    def discard(self, session: Tracked) -> None:
        """Forget a session whose connection is gone."""
        self._live.discard(session)

    def claim(self, client: str) -> int:
        """Count one more session from ``client`` (see ``client_key``); the count now."""
        count = self._per_client.get(client, 0) + 1
        self._per_client[client] = count
        return count

    def release(self, client: str) -> None:
        """A session counted with ``claim`` has ended."""
        count = self._per_client.get(client, 0) - 1
        if count > 0:
            self._per_client[client] = count
        else:
            self._per_client.pop(client, None)

    def keep(self, task: asyncio.Task[object]) -> None:
        """Hold a strong reference to ``task`` until it is done."""
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[Tracked]:
        return iter(list(self._live))

    async def drain(self, grace: float, *, poll: float = 0.05) -> None:
        """Close idle sessions now; let transactions finish for up to ``grace`` seconds.

        Sessions close as soon as they leave their transaction (a session
        between transactions counts as idle).  When the grace period ends the
        rest are closed too.  Work kept with ``keep`` is always awaited, since
        it is an accepted message being queued.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            late = loop.time() >= deadline
            pending = False
            for session in list(self._live):
                if session.in_transaction and not late:
                    pending = True
                else:
                    session.close()
            if not pending:
                break
            await asyncio.sleep(poll)
        if self._work:
            await asyncio.gather(*list(self._work), return_exceptions=True)
        # Let the closed sessions' tasks notice the close and end cleanly.
        end = loop.time() + 2.0
        while self._live and loop.time() < end:
            await asyncio.sleep(0.02)


def client_key(ip: str) -> str:
    """What the per-client connection limit counts: an IPv4 address or an IPv6 /64.

    One IPv6 host usually has a whole /64 to pick addresses from.
    """
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)
