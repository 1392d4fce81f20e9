"""The example post-data hook in etc/ gives per-user sender rules on top of auth_sender_policy."""

from __future__ import annotations

import shutil
import smtplib
from pathlib import Path

from helpers.daemon import DaemonFactory, Setup

HOOK = Path(__file__).parent.parent.parent / "etc" / "chasquid" / "hooks"
HOOK = HOOK / "post-data-sender-allowlist"


def _send(setup: Setup, sender: str) -> tuple[int, bytes]:
    """Send as ``sender`` (written verbatim in MAIL FROM); the reply to the data."""
    with smtplib.SMTP_SSL(
        "127.0.0.1", setup.submission_tls_port, context=setup.client_context(), timeout=30
    ) as c:
        c.login(setup.user_addr, setup.password)
        assert c.docmd(f"MAIL FROM:<{sender}>")[0] == 250
        assert c.rcpt("someone@elsewhere.example")[0] == 250
        return c.data(b"Subject: s\r\n\r\nbody\r\n")


def test_example_sender_allowlist_hook(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    s = chasquid_setup
    s.extra_conf.append("auth_sender_policy: any")
    s.write_conf()
    hooks = s.config_dir / "hooks"
    hooks.mkdir(exist_ok=True)
    shutil.copy(HOOK, hooks / "post-data")
    chasquid_daemon()

    # No rules file: a temporary failure, never an open door.
    assert _send(s, s.user_addr)[0] == 451

    (s.config_dir / "sender-allowlist").write_text(
        f"# login  sender pattern\n{s.user_addr} *@{s.domain}\n{s.user_addr} me@elsewhere.example\n"
        "other@testserver *\n"
    )
    for sender in (s.user_addr, f"anything@{s.domain}", "me@elsewhere.example"):
        assert _send(s, sender)[0] == 250, sender
    refused = (554, b"5.7.1 This sender is not allowed for this user")
    for sender in (
        "ceo@bank.test",
        "me@elsewhere.example.bank.test",
        '"$(touch${IFS}pwned)`touch${IFS}pwned`"@bank.test',
    ):
        assert _send(s, sender) == refused, sender
    assert not list(s.root.rglob("pwned"))
