"""A tiny authoritative DNS server for tests (dnslib), on 127.0.0.1 UDP port 0.

Usage::

    with dns_server({"example.org": {"TXT": ["v=spf1 -all"], "A": ["127.0.0.1"]}}) as addr:
        monkeypatch.setenv("CHASQUID_TEST_DNS", addr)

Names not in the zone get NXDOMAIN; known names without the asked type get an
empty NOERROR answer.  Supported types: A, AAAA, MX (``(preference, host)``;
host ``"."`` is a null MX), TXT (a string, or a list of strings for a
multi-string record).  The pseudo-type ``"RCODE": ["SERVFAIL"]`` (or
``REFUSED``, ...) answers every question for that name with that error code;
``"RCODE": ["NOREPLY"]`` never answers (a DNS timeout).
The server listens on UDP and TCP on the same port; the zone is read at each
query, so a test may change it while the server runs.
"""

from __future__ import annotations

import functools
import socketserver
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from dnslib import AAAA, MX, QTYPE, RCODE, RR, TXT, A, DNSRecord

Zone = Mapping[str, Mapping[str, Sequence[Any]]]


def _answer(zone: Zone, request: DNSRecord, default_rcode: str = "NXDOMAIN") -> DNSRecord | None:
    reply = request.reply()
    qname = str(request.q.qname).rstrip(".").lower()
    qtype = QTYPE[request.q.qtype]
    records = {k.rstrip(".").lower(): v for k, v in zone.items()}.get(qname)
    if records is None:
        reply.header.rcode = getattr(RCODE, default_rcode)
        return reply
    if "RCODE" in records:
        if str(records["RCODE"][0]).upper() == "NOREPLY":
            return None
        reply.header.rcode = getattr(RCODE, str(records["RCODE"][0]).upper())
        return reply
    for value in records.get(qtype, ()):
        if qtype == "A":
            rdata: Any = A(value)
        elif qtype == "AAAA":
            rdata = AAAA(value)
        elif qtype == "MX":
            rdata = MX(value[1], value[0])
        elif qtype == "TXT":
            rdata = TXT(list(value) if isinstance(value, list | tuple) else value)
        else:
            continue
        reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=60))
    return reply


@contextmanager
def dns_server(
    zone: Zone, default_rcode: str = "NXDOMAIN", host: str = "127.0.0.1", port: int = 0
) -> Iterator[str]:
    """Serve ``zone`` on UDP ``host:port`` while the context is open; yields ``host:port``.

    Names missing from the zone get ``default_rcode``.
    """

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            try:
                request = DNSRecord.parse(data)
            except Exception:
                return
            reply = _answer(zone, request, default_rcode)
            if reply is not None:
                sock.sendto(reply.pack(), self.client_address)

    server = socketserver.ThreadingUDPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        bound_host, bound_port = server.server_address[:2]
        yield f"{bound_host!s}:{bound_port}"
    finally:
        server.shutdown()
        server.server_close()


@functools.cache
def failing_dns() -> str:
    """A server for the whole test process that answers SERVFAIL to every question.

    Daemons started by tests use it unless a test brings its own zone, so nothing
    reaches the real DNS and every look-up fails at once as a temporary error.
    """
    context = dns_server({}, default_rcode="SERVFAIL")
    # Kept referenced for the life of the process: a collected context manager
    # runs its cleanup, which would stop the server right after it started (every
    # look-up then timed out after 20 s instead of failing at once).
    _KEPT.append(context)
    return context.__enter__()


_KEPT: list[AbstractContextManager[str]] = []
