"""Strings and lists quoted the way Go's fmt does (%q, %+q), for log and print-config lines.

Logs, print-config and some error messages reproduce what chasquid (written
in Go) prints, because operator tooling such as fail2ban filters matches
those texts.
"""

from __future__ import annotations

from collections.abc import Iterable

_SHORT_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def utf8_bytes(s: str) -> bytes:
    """UTF-8 bytes of s; lone surrogates come back as the bytes they stand for."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def _units_of(s: str | bytes) -> list[tuple[str, bytes]]:
    """Split into (character, original bytes); invalid UTF-8 bytes get char ''."""
    data = s if isinstance(s, bytes) else utf8_bytes(s)
    out: list[tuple[str, bytes]] = []
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b < 0x80:
            width = 1
        elif 0xC2 <= b <= 0xDF:
            width = 2
        elif 0xE0 <= b <= 0xEF:
            width = 3
        elif 0xF0 <= b <= 0xF4:
            width = 4
        else:
            width = 0
        if width:
            chunk = data[i : i + width]
            try:
                ch = chunk.decode("utf-8")
            except UnicodeDecodeError:
                ch = ""
            if ch:
                out.append((ch, chunk))
                i += width
                continue
        out.append(("", data[i : i + 1]))
        i += 1
    return out


def _escape_char(ch: str, raw: bytes, ascii_only: bool) -> str:
    if not ch:
        return f"\\x{raw[0]:02x}"
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    cp = ord(ch)
    printable = ch.isprintable()
    if printable and (cp < 0x80 or not ascii_only):
        return ch
    if cp < 0x80:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def go_quote(s: str | bytes) -> str:
    """Quote like Go's %q: printable Unicode kept, everything else escaped."""
    return '"' + "".join(_escape_char(ch, raw, False) for ch, raw in _units_of(s)) + '"'


def go_quote_ascii(s: str | bytes) -> str:
    """Quote like Go's %+q: as go_quote, but every non-ASCII character escaped."""
    return '"' + "".join(_escape_char(ch, raw, True) for ch, raw in _units_of(s)) + '"'


def go_list(items: Iterable[str]) -> str:
    """Render a list like Go's %q on a []string: ["a" "b"]."""
    return "[" + " ".join(go_quote(i) for i in items) + "]"


def go_list_plain(items: Iterable[str]) -> str:
    """Render a list like Go's %v on a []string: [a b]."""
    return "[" + " ".join(items) + "]"
