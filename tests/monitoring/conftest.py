"""A daemon that has handled real mail, for the tests of its monitoring pages.

``served`` starts chasquid with its monitoring server on a free loopback port
and sends, over SMTP, one message of each fate: delivered, deferred by the
MDA, bounced by the MDA (its DSN then delivered), deferred for a remote
domain (its MX refuses connections), plus a failed AUTH and a session whose
HELO, MAIL FROM and AUTH carry HTML.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.daemon import DaemonFactory, Setup, chasquid_daemon, chasquid_setup
from helpers.dns import Zone, dns_server
from helpers.mail import wait_until
from helpers.monitoring import Served, hostile_sessions, submit
from helpers.ports import free_port

__all__ = ["chasquid_daemon", "chasquid_setup", "served"]


@pytest.fixture
def served(chasquid_setup: Setup, chasquid_daemon: DaemonFactory) -> Iterator[Served]:
    s = chasquid_setup
    port = free_port()
    s.extra_conf.append(f'monitoring_address: "127.0.0.1:{port}"')
    s.write_conf()
    for user in ("deferred", "bounced"):
        s.add_user(user, "x-unused-password")
    # The MDA's arguments are -f <from> -d <user>: the user decides the message's fate.
    s.set_mda(
        'cat >/dev/null\ncase "$4" in deferred) echo "mailbox busy" >&2; exit 75;;\n'
        '  bounced) echo "no such mailbox" >&2; exit 1;;\nesac\nexit 0'
    )
    zone: Zone = {
        "remote.example": {"MX": [(10, "mx.remote.example")]},
        "mx.remote.example": {"A": ["127.0.0.1"]},
    }
    with dns_server(zone) as dns:
        # Nothing listens on the remote MX's port: a quick temporary failure.
        env = {"CHASQUID_TEST_DNS": dns, "CHASQUID_TEST_SMTP_PORT": str(free_port())}
        # No retry during the test: the deferred items stay as they are.
        daemon = chasquid_daemon("--testing__retry_schedule=1h", env=env)
        delivered = submit(s, "user@testserver")
        deferred = submit(s, "deferred@testserver")
        bounced = submit(s, "bounced@testserver")
        remote = submit(s, "someone@remote.example")
        hostile_sessions(s)
        served = Served(s, daemon, port, delivered, deferred, bounced, remote)

        def settled() -> bool:
            text = served.get("/debug/queue?format=text").text
            # Delivered and bounced (with its DSN) are gone; the two deferred ones
            # stay, each with its error recorded.
            return text.count("## Item ") == 2 and text.count('last failure: ""') == 0

        wait_until(settled, 30, "the queue to settle")
        yield served
