"""Messages as tests see them: parsing, the Maildir MDA the daemons deliver with, waiting."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def parse_message(data: bytes) -> EmailMessage:
    """Parse raw message bytes with the modern email policy."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def maildir_mda(root: Path) -> str:
    """A shell MDA body (args ``-f SENDER -d USER``): each message into <root>/maildir/<USER>/new.

    The envelope sender is kept beside it in <root>/maildir/<USER>/from/<file>.
    """
    return (
        f'd="{root}/maildir/$4"; mkdir -p "$d/tmp" "$d/new" "$d/from"; '
        'f="$(date +%s%N).$$"; printf "%s" "$2" > "$d/from/$f"; '
        'cat > "$d/tmp/$f" && mv "$d/tmp/$f" "$d/new/$f"'
    )


def maildir_messages(root: Path, user: str) -> list[bytes]:
    """What maildir_mda(root) delivered to user, oldest first, as bytes."""
    d = root / "maildir" / user / "new"
    return [p.read_bytes() for p in sorted(d.iterdir())] if d.exists() else []


def maildir_senders(root: Path, user: str) -> list[str]:
    """The envelope senders maildir_mda(root) recorded for user, oldest first."""
    d = root / "maildir" / user / "from"
    return [p.read_text() for p in sorted(d.iterdir())] if d.exists() else []


def wait_for(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    *,
    failure: Callable[[T], str],
    timeout: float = 30.0,
    interval: float = 0.05,
) -> T:
    """Call ``fetch`` until ``done`` holds for what it returns, and return that.

    After ``timeout`` seconds, fail with ``failure`` of the last value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(failure(value))
        time.sleep(interval)


def wait_until(cond: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``cond`` until it is true; fail after ``timeout`` seconds."""
    message = f"timed out after {timeout}s waiting for {what}"
    wait_for(cond, bool, timeout=timeout, failure=lambda _: message)
