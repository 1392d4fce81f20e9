"""Trace headers added to accepted messages and the header-section check.

Pure functions over bytes/str; the message is LF-terminated throughout.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import re
import time
from dataclasses import dataclass

from chasquid.errors import ChasquidError
from chasquid.normalize import valid_hostname

# OpenSSL names of TLS 1.2 suites → IANA names (TLS 1.3 names are already IANA).
_IANA_SUITES = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-RSA-AES128-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-ECDSA-AES128-SHA": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "ECDHE-RSA-AES128-SHA": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "ECDHE-ECDSA-AES256-SHA": "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "ECDHE-RSA-AES256-SHA": "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "AES128-GCM-SHA256": "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "AES256-GCM-SHA384": "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "AES128-SHA": "TLS_RSA_WITH_AES_128_CBC_SHA",
    "AES256-SHA": "TLS_RSA_WITH_AES_256_CBC_SHA",
}
_TLS_VERSIONS = {
    "SSLv3": "SSL-3.0",
    "TLSv1": "TLS-1.0",
    "TLSv1.1": "TLS-1.1",
    "TLSv1.2": "TLS-1.2",
    "TLSv1.3": "TLS-1.3",
}
_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ "
)
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: The longest header line read (RFC 5322 allows 998 octets; mail seen in the wild, more).
MAX_HEADER_LINE = 1024 * 1024


class HeaderError(ChasquidError):
    """The message's header section cannot be parsed."""


@dataclass(frozen=True)
class TLSInfo:
    """What a session's TLS state contributes to trace headers."""

    version: str  # as ssl.SSLObject.version(), e.g. "TLSv1.3"
    cipher: str  # OpenSSL cipher name, as ssl.SSLObject.cipher()[0]


def tls_version_name(version: str) -> str:
    """``TLSv1.3`` → ``TLS-1.3``."""
    return _TLS_VERSIONS.get(version, f"TLS-{version}")


def cipher_suite_name(openssl_name: str) -> str:
    """The IANA name of a cipher suite given its OpenSSL name."""
    if openssl_name.startswith("TLS_"):
        return openssl_name
    return _IANA_SUITES.get(openssl_name, f"TLS_UNKNOWN_CIPHER_SUITE-{openssl_name}")


def quote(s: str) -> str:
    """Double-quote ``s``, escaping ``"``, ``\\`` and non-printable characters."""
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable():
            code = ord(ch)
            if 0xDC80 <= code <= 0xDCFF:
                # A byte that was not valid UTF-8, carried through surrogateescape.
                out.append(f"\\x{code - 0xDC00:02x}")
            else:
                out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


@functools.lru_cache(maxsize=256)
def ip_literal(ip: str) -> str:
    """``192.0.2.7`` / ``IPv6:2001:db8::7``; IPv4-mapped IPv6 as plain IPv4."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return f"IPv6:{addr}"
    return str(addr)


def rfc1123z(now: float | None = None) -> str:
    """Local time as ``Mon, 02 Jan 2006 15:04:05 -0700``."""
    return _rfc1123z_second(int(time.time() if now is None else now))


@functools.lru_cache(maxsize=4)
def _rfc1123z_second(second: int) -> str:
    # Every message received within one second carries the same date.
    return email.utils.formatdate(second, localtime=True)


def received(
    *,
    helo_domain: str,
    client_ip: str | None,
    hostname: str,
    esmtp: bool,
    tls: TLSInfo | None,
    authenticated: bool,
    mode_name: str,
    sender: str,
    now: float | None = None,
) -> str:
    """The value of the ``Received:`` header (lines joined by LF).

    The HELO name is written as sent when it is a host name or an address
    literal, and quoted (``quote``) otherwise, so that what a client chose
    cannot pass for another part of the header.
    """
    first = f"from {helo_domain if _plain_helo(helo_domain) else quote(helo_domain)}"
    if not authenticated and client_ip is not None:
        first += f" ([{ip_literal(client_ip)}])"
    proto = ("ESMTP" if esmtp else "SMTP") + ("S" if tls else "") + ("A" if authenticated else "")
    lines = [first, f"by {hostname} (chasquid) with {proto}"]
    if tls is not None:
        lines.append(f"tls {cipher_suite_name(tls.cipher)}")
        level = tls_version_name(tls.version)
    else:
        level = "plain text!"
    lines.append(f"(over {mode_name}, {level}, envelope from {quote(sender or '<>')})")
    lines.append(f"; {rfc1123z(now if now is not None else time.time())}")
    return "\n".join(lines)


def _plain_helo(name: str) -> bool:
    """Whether a HELO name is a host name or an address literal (``[192.0.2.1]``, ``[IPv6:..]``)."""
    if valid_hostname(name):
        return True
    if not (name.startswith("[") and name.endswith("]")):
        return False
    literal = name[1:-1]
    if literal[:5].lower() == "ipv6:":
        literal = literal[5:]
    elif ":" in literal:
        return False
    try:
        ipaddress.ip_address(literal)
    except ValueError:
        return False
    return True


def received_spf(result: str, reason: str) -> str:
    """The value of ``Received-SPF:``."""
    return f"{result} ({reason})"


def format_header(name: str, value: str) -> bytes:
    """``Name: value`` with continuation lines TAB-indented, LF-terminated."""
    value = value.removesuffix("\n")
    # Client-supplied text (HELO name) may hold undecodable bytes: keep them as sent.
    return f"{name}: {value.replace(chr(10), chr(10) + chr(9))}\n".encode(
        "utf-8", "surrogateescape"
    )


def check_header_section(data: bytes) -> int:
    """Validate the header section; return the number of ``Received`` fields.

    Raises HeaderError with a detail when the section cannot be parsed.
    """
    scanner = HeaderScanner()
    scanner.feed(data)
    return scanner.finish()


class HeaderScanner:
    """``check_header_section`` over a message that arrives in pieces.

    Only the line being read is held (at most MAX_HEADER_LINE bytes); the
    scan stops at the end of the header section. ``feed`` raises HeaderError
    as soon as a line is bad; ``finish`` checks the last line and returns the
    number of ``Received`` fields.
    """

    def __init__(self) -> None:
        self.received = 0
        self.done = False
        #: Where the header section ends and the body starts (offsets, set once known).
        self.header_end = 0
        self.body_start = 0
        self._started = False
        self._lineno = 0
        self._partial = b""
        self._consumed = 0  # bytes of the message before _partial

    def feed(self, data: bytes) -> None:
        """Scan the next piece of the message."""
        if self.done or not data:
            return
        if not self._started:
            self._started = True
            if data.startswith(b"\n"):
                self._end_of_section(0)  # no header section at all
                return
        buf = self._partial + data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            line = buf[start:end]
            if not line:
                self._end_of_section(self._consumed + start)
                return
            start = end + 1
            self._line(line)
        self._consumed += start
        self._partial = buf[start:]
        if len(self._partial) > MAX_HEADER_LINE:
            raise HeaderError(f"line {self._lineno + 1}: header line too long")

    def _end_of_section(self, offset: int) -> None:
        self.done = True
        self._partial = b""
        self.header_end, self.body_start = offset, offset + 1

    def finish(self) -> int:
        """The number of ``Received`` fields, once the whole message was fed."""
        if not self._started:
            raise HeaderError("unexpected EOF: the message is empty")
        if not self.done:
            if self._partial:
                self._line(self._partial)
            # No empty line: it is all header section.
            end = self._consumed + len(self._partial)
            self.header_end = self.body_start = end
        self.done = True
        return self.received

    def _line(self, line: bytes) -> None:
        self._lineno += 1
        lineno = self._lineno
        if line[0] in b" \t":
            if lineno == 1:
                raise HeaderError(f"line {lineno}: continuation line without a header field")
            value = line
        else:
            name, colon, value = line.partition(b":")
            if not colon:
                raise HeaderError(f"line {lineno}: malformed header line (no colon)")
            if not name.strip(b" ") or not _TOKEN_CHARS.issuperset(name):
                raise HeaderError(f"line {lineno}: malformed header field name {name!r}")
            if name.rstrip(b" ").lower() == b"received":
                self.received += 1
        if _CONTROL.search(value):
            raise HeaderError(f"line {lineno}: control character in header value")


def hook_output_is_valid(out: bytes) -> bool:
    """Whether post-data hook output is a header block we may prepend."""
    if not out:
        return True
    if out == b"\n" or b"\n\n" in out or not out.endswith(b"\n"):
        return False
    for line in out[:-1].split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            continue
        if b":" not in line:
            return False
    return not out.startswith((b" ", b"\t"))
