"""Values rendered for people: relative times, Go-style durations and clocks."""

from __future__ import annotations

from datetime import datetime

from chasquid.durations import format_duration


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
