"""Mail sent while the daemon stops and starts again: what was accepted, how often it arrived.

``Load`` sends numbered messages from a few client threads and keeps going
across daemon restarts: a message that was not answered ``250`` (the daemon
was stopping, or gone) is sent again on a new connection, as a real client
would retry it. Every try carries its own Message-ID (``<n.try@load.test>``),
so a copy delivered twice by the daemon is told apart from a client's retry
of a message whose ``250`` it never saw (a kill between the fsync and the
reply).
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from helpers.daemon import Setup

_MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)", re.M | re.I)
_TRY = re.compile(r"<(\d+)\.(\d+)@load\.test>")


def message_ids(messages: Iterable[bytes]) -> Counter[str]:
    """How many copies of each Message-ID the messages hold."""
    found: Counter[str] = Counter()
    for data in messages:
        m = _MESSAGE_ID.search(data)
        assert m is not None, data[:300]
        found[m.group(1).decode()] += 1
    return found


def maildir_files(root: Path) -> list[bytes]:
    """Every message in every Maildir under root/maildir (helpers.mail.maildir_mda's layout)."""
    return [p.read_bytes() for p in sorted(root.glob("maildir/*/new/*"))]


def duplicates(accepted: Mapping[int, str], delivered: Counter[str]) -> list[str]:
    """The Message-IDs delivered twice or more; fails if an accepted message never arrived.

    ``accepted`` maps message numbers to the try answered 250; ``delivered``
    counts copies by Message-ID. Anything delivered that the load did not
    send fails too.
    """
    arrived: set[int] = set()
    for mid in delivered:
        m = _TRY.fullmatch(mid)
        assert m is not None, f"unexpected message {mid}"
        arrived.add(int(m.group(1)))
    lost = sorted(set(accepted) - arrived)
    assert not lost, f"accepted but never delivered: {lost}"
    return sorted(mid for mid, copies in delivered.items() if copies > 1)


@dataclass
class Load:
    """Numbered messages sent by ``connections`` threads until each was answered 250.

    With ``submit``, the threads log in on the submission-over-TLS port (as
    the setup's user), so any recipient is accepted; otherwise they send
    from ``sender@load.test`` on the SMTP port.
    """

    setup: Setup
    count: int
    rcpt: str
    connections: int = 4
    submit: bool = False
    timeout: float = 90.0
    #: Message number -> the Message-ID of the try that was answered 250.
    accepted: dict[int, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Start sending in the background."""
        deadline = time.monotonic() + self.timeout
        for k in range(self.connections):
            numbers = range(k, self.count, self.connections)
            t = threading.Thread(target=self._send_all, args=(numbers, deadline), daemon=True)
            t.start()
            self._threads.append(t)

    def done(self) -> bool:
        """Whether every message has been accepted."""
        with self._lock:
            return len(self.accepted) == self.count

    def join(self) -> None:
        """Wait for the senders (they give up at their deadline)."""
        for t in self._threads:
            t.join()

    def stop(self) -> None:
        """Make the senders give up (at the end of a test that failed)."""
        self._stop.set()
        self.join()

    def check_copies(self, delivered: Counter[str]) -> list[str]:
        """``duplicates`` of what was accepted so far."""
        with self._lock:
            accepted = dict(self.accepted)
        return duplicates(accepted, delivered)

    def _client(self) -> smtplib.SMTP:
        s = self.setup
        c: smtplib.SMTP
        if self.submit:
            c = smtplib.SMTP_SSL(
                "127.0.0.1", s.submission_tls_port, context=s.client_context(), timeout=30
            )
            c.login(s.user_addr, s.password)
        else:
            c = smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=30)
            c.ehlo("client.load.test")
        return c

    def _send_all(self, numbers: range, deadline: float) -> None:
        sender = self.setup.user_addr if self.submit else "sender@load.test"
        client: smtplib.SMTP | None = None
        try:
            for n in numbers:
                tries = 0
                while not self._stop.is_set() and time.monotonic() < deadline:
                    tries += 1
                    mid = f"<{n}.{tries}@load.test>"
                    msg = f"Message-ID: {mid}\r\nSubject: load {n}\r\n\r\nmessage {n}\r\n"
                    try:
                        if client is None:
                            client = self._client()
                        client.sendmail(sender, [self.rcpt], msg)
                    except (smtplib.SMTPException, OSError):
                        # Stopping, stopped or not yet started: a new connection, later.
                        _close(client)
                        client = None
                        time.sleep(0.05)
                        continue
                    with self._lock:
                        self.accepted[n] = mid
                    break
        finally:
            _close(client)


def _close(client: smtplib.SMTP | None) -> None:
    if client is not None:
        with contextlib.suppress(OSError):
            client.close()
