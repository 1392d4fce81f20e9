"""Stopping the daemon (SIGTERM, SIGINT) never delivers a message twice; see docs/delivery.md.

Attempts in flight when the stop comes run to their end and their outcome is
on disk before the daemon exits; one still running when the grace ends is
stopped and recorded as not done, and retried after the restart.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from helpers.daemon import Daemon, DaemonFactory, Setup
from helpers.dns import Zone, dns_server
from helpers.mail import maildir_mda, wait_until
from helpers.restarts import Load, maildir_files, message_ids
from helpers.smtppeers import shared_port

from chasquid.daemon.queue.delivery import INTERRUPTED_MESSAGE

#: Long enough after writing the message that a stop often comes in between.
MDA_LINGER = "sleep 1"


def queue_files(setup: Setup) -> list[str]:
    """The queue's item, segment and state files."""
    return sorted(p.name for p in setup.queue_dir.iterdir() if p.name[:2] in ("m:", "s:", "e:"))


def stop_at_random_moments(start: Callable[[], Daemon], rounds: int, rng: random.Random) -> Daemon:
    """``rounds`` times: start, then SIGTERM or SIGINT at a random moment. Then start again."""
    for _ in range(rounds):
        d = start()
        time.sleep(rng.uniform(0.2, 1.5))
        d.signal(rng.choice([signal.SIGTERM, signal.SIGINT]))
        assert d.wait(60) == 0, d.log_text()
    return start()


def test_sigterm_at_random_moments_of_local_delivery_delivers_exactly_once(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    s = chasquid_setup
    s.set_mda(maildir_mda(s.root) + f" && {MDA_LINGER}")
    rng = random.Random()
    load = Load(s, count=60, rcpt=s.user_addr, connections=4)
    load.start()
    try:
        d = stop_at_random_moments(chasquid_daemon, rounds=4, rng=rng)
        wait_until(load.done, timeout=90, what="every message accepted")
        wait_until(lambda: not queue_files(s), timeout=60, what="an empty queue")
    finally:
        load.stop()
    assert load.check_copies(message_ids(maildir_files(s.root))) == []
    d.signal(signal.SIGINT)
    assert d.wait(60) == 0


@dataclass
class SlowSink:
    """A remote server that takes its time to answer DATA (a stop comes in between)."""

    received: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(envelope.original_content or b"")
        await asyncio.sleep(1)
        return "250 2.0.0 Ok: queued"


@contextmanager
def remote_sink(setup: Setup) -> Iterator[tuple[SlowSink, dict[str, str]]]:
    """``mx.remote.test`` on 127.0.0.2 with STARTTLS; the daemon's environment to reach it."""
    port = shared_port()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    setup.ca.issue_cert("mx.remote.test").configure_cert(tls)
    zone: Zone = {
        "remote.test": {"MX": [(10, "mx.remote.test.")]},
        "mx.remote.test": {"A": ["127.0.0.2"]},
    }
    sink = SlowSink()
    controller = Controller(
        sink, hostname="127.0.0.2", port=port, tls_context=tls, require_starttls=False
    )
    controller.start()
    try:
        with dns_server(zone) as dns_addr:
            yield (
                sink,
                {
                    "CHASQUID_TEST_DNS": dns_addr,
                    "CHASQUID_TEST_SMTP_PORT": str(port),
                    "SSL_CERT_FILE": str(setup.ca_file),
                },
            )
    finally:
        controller.stop()


def test_sigterm_at_random_moments_of_remote_delivery_delivers_exactly_once(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    s = chasquid_setup
    rng = random.Random()
    with remote_sink(s) as (sink, env):
        load = Load(s, count=40, rcpt="someone@remote.test", connections=4, submit=True)
        load.start()
        try:

            def start() -> Daemon:
                return chasquid_daemon(env=env)

            d = stop_at_random_moments(start, rounds=4, rng=rng)
            wait_until(load.done, timeout=90, what="every message accepted")
            wait_until(lambda: not queue_files(s), timeout=60, what="an empty queue")
        finally:
            load.stop()
        assert load.check_copies(message_ids(sink.received)) == []
        assert d.stop() == 0


def test_attempt_in_flight_at_sigterm_ends_and_is_recorded(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    s = chasquid_setup
    started = s.root / "mda-started"
    s.set_mda(f"touch {started}; " + maildir_mda(s.root) + "; sleep 1.5")
    d = chasquid_daemon()
    Load(s, count=1, rcpt=s.user_addr, connections=1).start()
    wait_until(started.exists, what="the MDA to start")
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0
    # The MDA ran to its end and the daemon recorded it: nothing left to deliver.
    assert queue_files(s) == []
    assert len(maildir_files(s.root)) == 1
    assert " sent" in s.mail_log.read_text()


def test_attempt_still_running_at_the_end_of_the_grace_is_recorded_as_not_done(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    s = chasquid_setup
    started = s.root / "mda-started"
    finished = s.root / "mda-finished"
    s.set_mda(f"touch {started}; sleep 20; touch {finished}; exit 0")
    d = chasquid_daemon("--testing__shutdown_grace=1s")
    Load(s, count=1, rcpt=s.user_addr, connections=1).start()
    wait_until(started.exists, what="the MDA to start")
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0
    assert time.monotonic() - t0 < 10
    [state, item] = queue_files(s)
    assert item.startswith("m:") and state.startswith("e:")
    envelope = (s.queue_dir / state).read_text()
    assert '"status":"pending"' in envelope
    assert INTERRUPTED_MESSAGE in envelope
    assert re.search(r"failed \(temporary\).*interrupted", s.mail_log.read_text())
    # The MDA was stopped with the attempt.
    time.sleep(0.5)
    assert not finished.exists()

    # Retried at the next start, delivered once.
    s.set_mda(maildir_mda(s.root))
    d2 = chasquid_daemon()
    wait_until(lambda: not queue_files(s), what="the retry")
    assert len(maildir_files(s.root)) == 1
    assert d2.stop() == 0
