"""Interop with a real Dovecot (tests/helpers/dovecot.py), configured as docs/dovecot.md says.

Covers the fixture itself and mda-lmtp's deliveries into Dovecot's Maildir.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.dovecot import Dovecot, added_headers_removed, delivered_headers

MDA_LMTP = str(Path(sys.executable).parent / "mda-lmtp")
USER = "dovi@example.com"

# Everything a message may hold that a careless relay would break: leading dots,
# a line that is just a dot, bare LF and CRLF mixed, 8-bit text, a long line,
# trailing spaces, an empty line at the end.
MESSAGE = (
    "From: <sender@example.org>\r\n"
    "To: <dovi@example.com>\r\n"
    "Subject: =?utf-8?q?byte=2Dexact?=\r\n"
    "Message-ID: <exact@example.org>\r\n"
    "\r\n"
    ".leading dot\r\n"
    ".\r\n"
    "..two dots\n"
    "bare LF above, ñandú below  \r\n" + "x" * 998 + "\r\n\r\n"
).encode()


def as_stored(message: bytes) -> bytes:
    """What Dovecot's Maildir holds for a message: LF line ends."""
    return message.replace(b"\r\n", b"\n")


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., Dovecot]) -> Dovecot:
    """A private Dovecot with one user."""
    return dovecot_factory(users={USER: "secret"})


def mda_lmtp(dc: Dovecot, *args: str, stdin: bytes = MESSAGE) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [MDA_LMTP, f"--addr={dc.lmtp_socket}", *args], input=stdin, capture_output=True, timeout=60
    )


def test_mda_lmtp_delivers_byte_exact(dovecot: Dovecot) -> None:
    r = mda_lmtp(dovecot, "-f", "sender@example.org", "-d", USER)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    [stored] = dovecot.wait_for_messages(USER)
    assert added_headers_removed(stored) == as_stored(MESSAGE)
    added = delivered_headers(stored)
    assert added["Return-Path"] == "<sender@example.org>"
    assert added["Delivered-To"] == USER


def test_mda_lmtp_null_sender(dovecot: Dovecot) -> None:
    r = mda_lmtp(dovecot, "-f", "<>", "-d", USER, stdin=b"Subject: bounce\n\nbody\n")
    assert r.returncode == 0, r.stdout
    [stored] = dovecot.wait_for_messages(USER)
    assert delivered_headers(stored)["Return-Path"] == "<>"
    assert added_headers_removed(stored) == b"Subject: bounce\n\nbody\n"


def test_mda_lmtp_unknown_user_is_a_temporary_failure(dovecot: Dovecot) -> None:
    r = mda_lmtp(dovecot, "-f", "sender@example.org", "-d", "nobody@example.com")
    assert r.returncode == 75
    assert r.stdout.startswith(b'Sent "RCPT TO:<nobody@example.com>", got 550 "5.1.1 ')
    assert dovecot.messages(USER) == []


def test_mda_lmtp_with_dovecot_stopped_and_back(dovecot: Dovecot) -> None:
    dovecot.stop()
    r = mda_lmtp(dovecot, "-f", "a@example.org", "-d", USER)
    assert r.returncode == 75
    assert r.stdout.decode().startswith(f"Error connecting to (unix, {dovecot.lmtp_socket}): ")
    dovecot.start()
    r = mda_lmtp(dovecot, "-f", "a@example.org", "-d", USER)
    assert r.returncode == 0, r.stdout
    assert len(dovecot.wait_for_messages(USER)) == 1
