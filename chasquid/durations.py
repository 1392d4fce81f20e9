"""Durations in Go's syntax (``20h``, ``1h30m``, ``2.5s``): read from config and flags, logged.

chasquid.conf and the command line take durations the way Go's
time.ParseDuration does, and logs print them as Go's Duration.String() would,
so existing configs and log-reading tools keep working.
"""

from __future__ import annotations

from chasquid.errors import ChasquidError
from chasquid.goquote import utf8_bytes

_NANOSECOND = 1
_MICROSECOND = 1000 * _NANOSECOND
_MILLISECOND = 1000 * _MICROSECOND
_SECOND = 1000 * _MILLISECOND
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE

_UNITS: dict[str, int] = {
    "ns": _NANOSECOND,
    "us": _MICROSECOND,
    "\u00b5s": _MICROSECOND,  # MICRO SIGN
    "\u03bcs": _MICROSECOND,  # GREEK SMALL LETTER MU
    "ms": _MILLISECOND,
    "s": _SECOND,
    "m": _MINUTE,
    "h": _HOUR,
}

# Go durations are int64 nanoseconds; parsing accumulates in uint64 and
# rejects anything beyond these bounds.
_MAX_ABS = 1 << 63


class DurationError(ChasquidError):
    """A duration string that Go's time.ParseDuration would reject."""


def _time_quote(s: str) -> str:
    """Quote like Go's time package does in its errors (non-ASCII as \\x bytes)."""
    parts: list[str] = []
    for ch in utf8_bytes(s).decode("latin-1"):
        c = ord(ch)
        if c >= 0x80 or c < 0x20:
            parts.append(f"\\x{c:02x}")
        elif ch in ('"', "\\"):
            parts.append("\\" + ch)
        else:
            parts.append(ch)
    return '"' + "".join(parts) + '"'


def _frac_digits(frac: int, prec: int) -> str:
    """Fraction of `prec` digits with trailing zeros (and the dot) removed."""
    if frac == 0:
        return ""
    digits = f"{frac:0{prec}d}".rstrip("0")
    return "." + digits


def format_duration_ns(ns: int) -> str:
    """Render integer nanoseconds like Go's time.Duration.String()."""
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u == 0:
        return "0s"
    if u < _SECOND:
        if u < _MICROSECOND:
            return f"{sign}{u}ns"
        if u < _MILLISECOND:
            return f"{sign}{u // _MICROSECOND}{_frac_digits(u % _MICROSECOND, 3)}\u00b5s"
        return f"{sign}{u // _MILLISECOND}{_frac_digits(u % _MILLISECOND, 6)}ms"
    secs, frac = divmod(u, _SECOND)
    text = f"{secs % 60}{_frac_digits(frac, 9)}s"
    minutes = secs // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        hours = minutes // 60
        if hours:
            text = f"{hours}h{text}"
    return sign + text


def format_duration(seconds: float) -> str:
    """Render seconds like Go's time.Duration.String(): 20h0m0s, 1m30s, 1.5s, 500ms, 0s."""
    return format_duration_ns(round(seconds * _SECOND))


def _invalid(orig: str) -> DurationError:
    return DurationError(f"time: invalid duration {_time_quote(orig)}")


def parse_duration_ns(orig: str) -> int:
    """Parse Go duration syntax into integer nanoseconds; DurationError on bad input."""
    s = orig
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise _invalid(orig)
    total = 0
    while s:
        if not (s[0] == "." or "0" <= s[0] <= "9"):
            raise _invalid(orig)
        i = 0
        while i < len(s) and "0" <= s[i] <= "9":
            i += 1
        pre = i > 0
        whole = int(s[:i]) if pre else 0
        if whole > _MAX_ABS:
            raise _invalid(orig)
        s = s[i:]
        frac = 0
        scale = 1
        post = False
        if s and s[0] == ".":
            s = s[1:]
            j = 0
            while j < len(s) and "0" <= s[j] <= "9":
                j += 1
            post = j > 0
            digits = s[:j]
            # Go stops accumulating fraction digits once they would overflow.
            for d in digits:
                if frac > (_MAX_ABS - 1) // 10:
                    break
                frac = frac * 10 + int(d)
                scale *= 10
            s = s[j:]
        if not pre and not post:
            raise _invalid(orig)
        k = 0
        while k < len(s) and not (s[k] == "." or "0" <= s[k] <= "9"):
            k += 1
        if k == 0:
            raise DurationError(f"time: missing unit in duration {_time_quote(orig)}")
        unit_text = s[:k]
        s = s[k:]
        unit = _UNITS.get(unit_text)
        if unit is None:
            raise DurationError(
                f"time: unknown unit {_time_quote(unit_text)} in duration {_time_quote(orig)}"
            )
        if whole > _MAX_ABS // unit:
            raise _invalid(orig)
        value = whole * unit
        if frac:
            value += int(float(frac) * (float(unit) / float(scale)))
            if value > _MAX_ABS:
                raise _invalid(orig)
        total += value
        if total > _MAX_ABS:
            raise _invalid(orig)
    if neg:
        return -total
    if total > _MAX_ABS - 1:
        raise _invalid(orig)
    return total


def parse_duration(s: str) -> float:
    """Parse Go duration syntax (20h, 1h30m, 2.5h, 0) into seconds."""
    return parse_duration_ns(s) / _SECOND
