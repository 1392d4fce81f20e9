"""Values rendered for people: safe text, relative times, Go-style durations and clocks."""

from __future__ import annotations

import re
from datetime import datetime

from chasquid.durations import format_duration

# C0 controls (but tab and newline), DEL and C1 controls: shown as \xNN so a
# client that puts a terminal escape or a NUL in its HELO cannot garble a page.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe_text(text: str) -> str:
    """Text that encodes as UTF-8 and shows its control characters.

    Undecodable bytes carried as lone surrogates (surrogateescape) become
    ``\\udcNN`` escapes; control characters become ``\\xNN``.
    """
    if text.isprintable() or not _CONTROLS.search(text):
        cleaned = text
    else:
        cleaned = _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    try:
        cleaned.encode("utf-8")
    except UnicodeEncodeError:
        cleaned = cleaned.encode("utf-8", "backslashreplace").decode("utf-8")
    return cleaned


def ago(seconds: float) -> str:
    """How long ago, as a person says it: ``just now``, ``12 s ago``, ``3 min ago``, ``in 2 h``."""
    future = seconds < 0
    s = abs(seconds)
    if s < 1:
        return "just now" if not future else "now"
    if s < 60:
        amount = f"{int(s)} s"
    elif s < 3600:
        amount = f"{int(s // 60)} min"
    elif s < 86400:
        hours, rest = divmod(int(s), 3600)
        minutes = rest // 60
        amount = f"{hours} h {minutes} min" if minutes and hours < 10 else f"{hours} h"
    else:
        days = int(s // 86400)
        amount = f"{days} day" if days == 1 else f"{days} days"
    return f"in {amount}" if future else f"{amount} ago"


def go_duration_rounded(seconds: float, unit: float) -> str:
    """A Go duration rounded to ``unit`` seconds (1 for uptime, 0.001 for latencies)."""
    return format_duration(round(seconds / unit) * unit)


def clock(when: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS ±hhmm`` in local time."""
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def day_clock(when: datetime) -> str:
    """``Mon, YYYY-MM-DD HH:MM:SS ±hhmm`` in local time (the index's start time)."""
    return when.astimezone().strftime("%a, %Y-%m-%d %H:%M:%S %z")


def go_time(when: datetime) -> str:
    """A time as Go prints it by default: ``2025-01-02 15:04:05.123456 +0000 UTC``."""
    local = when.astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S.%f %z ") + (local.tzname() or "")
