"""The version of this chasquid and the date of its source, for --version, logs and monitoring."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import chasquid


def source_date() -> datetime.datetime:
    """When the source was last changed: SOURCE_DATE_EPOCH, else the package's newest file."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch.isdigit():
        ts = float(epoch)
    else:
        package = Path(chasquid.__file__).parent
        ts = max((p.stat().st_mtime for p in package.rglob("*.py")), default=0.0)
    return datetime.datetime.fromtimestamp(ts).astimezone()


def format_source_date(when: datetime.datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS ±hhmm ZONE``, as Go renders a time."""
    return when.strftime("%Y-%m-%d %H:%M:%S %z %Z")


def version_line() -> str:
    """What ``chasquid --version`` prints."""
    return f"chasquid {chasquid.__version__} (source date: {format_source_date(source_date())})"
