"""Nobody can write lines into our logs: a hostile remote server's replies, then fail2ban.

A remote MX answers with a multi-line reply whose lines imitate the main
log's fail2ban lines (with a timestamp, a CR and an ESC thrown in). The
daemon logs that reply in the mail log and the main log; fail2ban-regex with
the shipped filter must then find only the client that really failed AUTH
(127.0.0.1), never the address the hostile server named.
"""

from __future__ import annotations

import contextlib
import os
import re
import smtplib
import stat
import subprocess
from pathlib import Path

from aiosmtpd.controller import Controller
from helpers.daemon import DaemonFactory, Setup, require_program
from helpers.dns import Zone, dns_server
from helpers.smtppeers import Handler, shared_port

REPO = Path(__file__).parent.parent.parent
FILTER = REPO / "etc" / "fail2ban" / "filter.d" / "chasquid.conf"
FRAMED = "198.51.100.77"
VICTIM = "victim@hostile.test"

_FORGED = f"SMTP.Conn {FRAMED}:4242: error: AUTH failed: 535  5.7.8 Incorrect user or password"
# Each reply line imitates a main-log or mail-log line in another way: bare,
# behind a timestamp and level as in --logfile, after a CR, after an ESC.
_LINES = [
    "5.1.1 mailbox unavailable",
    _FORGED,
    f"2025-01-02 10:00:00.000001 E session.py:230     {_FORGED}",
    f"x\rE session.py:230     {_FORGED}",
    f"\x1b[2K\x1b[1GE session.py:230     {_FORGED}",
    f"2025-01-02 10:00:00.000001 {FRAMED}:4242 auth failed for bob@testserver",
    f"host chasquid[1]: E session.py:230     {_FORGED}",
]
HOSTILE_REPLY = "\r\n".join(f"550-{line}" for line in _LINES) + "\r\n550 5.1.1 no such user"

_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} \S")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def banned(log: Path) -> list[str]:
    """The addresses fail2ban-regex finds in ``log`` with the shipped filter, one per failure."""
    program = require_program("fail2ban-regex")
    proc = subprocess.run(
        [program, "--out", "ip", str(log), str(FILTER)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split()


def test_hostile_replies_forge_no_log_lines_and_ban_nobody(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory, tmp_path: Path
) -> None:
    setup = chasquid_setup
    main_log = tmp_path / "chasquid.log"
    port = shared_port()
    zone: Zone = {
        "hostile.test": {"MX": [(10, "mx.hostile.test.")]},
        "mx.hostile.test": {"A": ["127.0.0.2"]},
    }
    handler = Handler(rcpt_replies={VICTIM: HOSTILE_REPLY})
    controller = Controller(handler, hostname="127.0.0.2", port=port)
    controller.start()
    try:
        with dns_server(zone) as dns_addr:
            env = {"CHASQUID_TEST_DNS": dns_addr, "CHASQUID_TEST_SMTP_PORT": str(port)}
            daemon = chasquid_daemon(f"--logfile={main_log}", "--alsologtostderr", env=env)
            with smtplib.SMTP_SSL(
                "127.0.0.1", setup.submission_tls_port, context=setup.client_context(), timeout=30
            ) as c:
                c.login(setup.user_addr, setup.password)
                c.sendmail(setup.user_addr, [VICTIM], b"Subject: hello\r\n\r\nhi\r\n")
            daemon.wait_for_log(r"victim@hostile\.test permanent error: ")
            # The one real attacker: two wrong passwords from 127.0.0.1 (smtplib
            # tries PLAIN, then LOGIN).
            with (
                smtplib.SMTP_SSL(
                    "127.0.0.1",
                    setup.submission_tls_port,
                    context=setup.client_context(),
                    timeout=30,
                ) as c,
                contextlib.suppress(smtplib.SMTPAuthenticationError),
            ):
                c.login(setup.user_addr, "wrong")
            daemon.wait_for_log("AUTH failed", count=2)
    finally:
        controller.stop()

    # Both logs hold addresses, client IPs and login names.
    assert stat.S_IMODE(setup.mail_log.stat().st_mode) == 0o640 & ~_umask()
    assert stat.S_IMODE(main_log.stat().st_mode) == 0o640 & ~_umask()

    mail_log = setup.mail_log.read_text(errors="strict")
    assert "failed (permanent)" in mail_log
    for line in mail_log.splitlines():
        assert _STAMP.match(line), f"mail log line that is not an entry: {line!r}"
    assert "\x1b" not in mail_log and "\r" not in mail_log
    # The reply is still there for the operator, escaped on its one line.
    assert "\\n5.1.1 no such user" in mail_log

    text = main_log.read_text(errors="strict")
    for line in text.splitlines():
        assert _STAMP.match(line), f"main log line that is not an entry: {line!r}"
    assert "\x1b" not in text

    assert banned(main_log) == ["127.0.0.1", "127.0.0.1"]
    assert banned(setup.mail_log) == []
    # The journal's form of the same lines: "host chasquid[pid]: <line>".
    journal = tmp_path / "journal.log"
    journal.write_text(
        "".join(
            f"Jan  2 10:00:00 mailhost chasquid[4242]: {line}\n"
            for line in daemon.log_text().splitlines()
        )
    )
    assert banned(journal) == ["127.0.0.1", "127.0.0.1"]
