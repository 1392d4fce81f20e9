"""Large messages sent at once to a real daemon, with its memory sampled (tests and bench)."""

from __future__ import annotations

import signal
import smtplib
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from helpers.daemon import make_setup, start
from helpers.rss import PeakSampler, rss_mib


@dataclass(frozen=True)
class Figures:
    """RSS in MiB: before sending, the peak while sending, and once all are queued."""

    before: float
    peak: float
    queued: float
    seconds: float
    queue_bytes: int


def message(mib: int) -> bytes:
    """A message of about ``mib`` MiB: a header and 78-byte base64-looking lines."""
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0"
    lines = (mib * 1024 * 1024) // (len(line) + 2)
    return b"Subject: large\r\n\r\n" + (line + b"\r\n") * lines


def measure(root: Path, count: int, mib: int, timeout: float = 600.0) -> Figures:
    """Send ``count`` messages of ``mib`` MiB at once to a fresh daemon under ``root``.

    The MDA fails temporarily, so the messages stay queued (and are tried again).
    """
    setup = make_setup(root)
    setup.extra_conf.append(f"max_data_size_mb: {mib + 1}")
    setup.write_conf()
    daemon = start(setup)
    try:
        pid = daemon.proc.pid
        time.sleep(1.0)
        before = rss_mib(pid)
        body = message(mib)
        errors: list[BaseException] = []

        def send() -> None:
            try:
                with smtplib.SMTP("127.0.0.1", setup.smtp_port, timeout=timeout) as c:
                    c.sendmail("", [setup.user_addr], body)
            except BaseException as e:
                errors.append(e)

        sampler = PeakSampler(pid)
        sampler.start()
        started = time.monotonic()
        senders = [threading.Thread(target=send) for _ in range(count)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(timeout)
        elapsed = time.monotonic() - started
        time.sleep(2.0)  # the first delivery attempts read every message once
        peak = sampler.stop()
        queued = rss_mib(pid)
        if errors:
            raise RuntimeError(f"{len(errors)} of {count} sends failed: {errors[0]!r}")
        size = sum(
            p.stat().st_size for p in setup.queue_dir.iterdir() if p.name.startswith(("m:", "s:"))
        )
        return Figures(before, peak, queued, elapsed, size)
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            daemon.proc.wait(60)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait(10)
