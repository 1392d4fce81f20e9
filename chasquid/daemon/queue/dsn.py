"""Delivery status notifications: the bounce message for a finished queue item.

The DSN is a ``multipart/report`` with three parts: a human-readable text, a
``message/global-delivery-status`` report (RFC 6533) and the original message
(truncated). Its layout is chasquid's, byte for byte, with two fixes:
X-Failed-Recipients has no trailing separator, and In-Reply-To/References are
left out when the original has no Message-ID.

SMTPUTF8: headers are raw UTF-8 (no encoded words), so a DSN whose own header
block holds non-ASCII text (a non-ASCII sender, reporting domain, failed
recipient or original Message-ID) is an internationalized message (RFC 6532).
The envelope addresses alone decide whether SMTPUTF8 is *requested*; a
courier that wants to know whether the content also asks for it can call
:func:`needs_smtputf8`. The report part is ``message/global-delivery-status``
in every case, which is already UTF-8 and needs nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from chasquid.daemon.queue.ids import new_id
from chasquid.daemon.queue.item import QueuedRecipient, QueueItem, RecipientStatus
from chasquid.normalize import split_addr

#: The original message is cut to this many bytes inside the DSN.
MAX_ORIGINAL_DATA = 262144

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# A boundary that happens to occur in the content would split the MIME
# structure; the chance is negligible but a few fresh draws make it nil.
_MAX_BOUNDARY_TRIES = 8


def reporting_domain(item: QueueItem, is_local: Callable[[str], bool]) -> str:
    """The domain the DSN speaks for; is_local takes a domain."""
    _, sender_domain = split_addr(item.sender)
    if sender_domain and is_local(sender_domain):
        return sender_domain
    for r in item.rcpts:
        _, domain = split_addr(r.original_address)
        if domain and is_local(domain):
            return domain
    return "unknown"


def format_date(now: datetime) -> str:
    """RFC 1123 date with a numeric zone, independent of the locale."""
    if now.tzinfo is None:
        now = now.astimezone()
    offset = now.utcoffset()
    minutes = int(offset.total_seconds()) // 60 if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    return (
        f"{_DAYS[now.weekday()]}, {now.day:02d} {_MONTHS[now.month - 1]} {now.year:04d} "
        f"{now.hour:02d}:{now.minute:02d}:{now.second:02d} {sign}{hh:02d}{mm:02d}"
    )


def original_message_id(data: bytes) -> str | None:
    """The first Message-ID header value of data, unfolded and trimmed; None if absent.

    None also when the header block is malformed (a line that is neither a
    field nor a continuation), because then no header of it can be trusted.
    """
    found: list[str] | None = None
    collecting = False
    seen_field = False
    for raw in data.split(b"\n"):
        line = raw.removesuffix(b"\r").decode("utf-8", "surrogateescape")
        if not line:
            break
        if line[0] in " \t":
            if not seen_field:
                # A continuation with nothing to continue: not a header block.
                return None
            if collecting and found is not None:
                found.append(line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon or not _is_field_name(name):
            return None
        seen_field = True
        collecting = found is None and name.lower() == "message-id"
        if collecting:
            found = [value.strip()]
    if found is None:
        return None
    return " ".join(p for p in found if p) or None


def _is_field_name(name: str) -> bool:
    return bool(name) and all(33 <= ord(c) <= 126 for c in name)


def _one_line(s: str) -> str:
    # Values we copy into headers must not be able to start a new header.
    return s.replace("\r", " ").replace("\n", " ")


def error_lines(message: str) -> list[str]:
    """The failure message trimmed and split into its non-empty lines.

    Blank internal lines are dropped: in the report part a blank (or
    whitespace-only) line would end the recipient's field block.
    """
    text = message.replace("\r\n", "\n").replace("\r", "\n").strip()
    return [line.rstrip() for line in text.split("\n") if line.strip()]


def _folded_error(message: str) -> str:
    return "\n    ".join(error_lines(message))


def failed_recipients(item: QueueItem) -> list[str]:
    """Original addresses of every recipient not sent: deduplicated, code point order."""
    return sorted({_original(r) for r in item.rcpts if r.status is not RecipientStatus.SENT})


def _original(r: QueuedRecipient) -> str:
    # Items written before original_address existed fall back to the address.
    return _one_line(r.original_address or r.address)


def _reported(item: QueueItem) -> list[QueuedRecipient]:
    failed = [r for r in item.rcpts if r.status is RecipientStatus.FAILED]
    pending = [r for r in item.rcpts if r.status is RecipientStatus.PENDING]
    return failed + pending


def _text_part(item: QueueItem) -> str:
    out = [
        "Delivery of your message to the following recipient(s) failed permanently:",
        "",
    ]
    out.extend(f"  - {addr}" for addr in failed_recipients(item))
    out += ["", "", "Technical details of the failure(s):"]
    for r in _reported(item):
        kind = r.kind.value.upper()
        final = _one_line(r.address)
        if r.status is RecipientStatus.FAILED:
            out.append(f'- "{final}" ({kind}): the delivery attempt was rejected permanently:')
        else:
            out.append(
                f'- "{final}" ({kind}): delivery attempts kept failing until the retry'
                " period ran out; the most recent error was:"
            )
        lines = error_lines(r.last_failure_message) or ["(no error message recorded)"]
        out.extend(f"    {line}" for line in lines)
    return "\n".join(out)


def _report_part(item: QueueItem, domain: str) -> str:
    out = [f"Reporting-MTA: dns; {domain}", ""]
    for r in _reported(item):
        failed = r.status is RecipientStatus.FAILED
        out += [
            f"Original-Recipient: utf-8; {_original(r)}",
            f"Final-Recipient: utf-8; {_one_line(r.address)}",
            "Action: failed",
            f"Status: {'5.0.0' if failed else '4.0.0'}",
            f"Diagnostic-Code: smtp; {_folded_error(r.last_failure_message)}",
            "",
        ]
    # Joined with LF and followed by the separator "\n\n\n--B": the last block
    # thus ends in three empty lines before the boundary, as in chasquid's DSNs.
    return "\n".join(out)


def _headers(
    item: QueueItem, original: bytes, domain: str, now: datetime, msg_id: str, boundary: str
) -> list[str]:
    headers = [
        f"From: Mail Delivery System <postmaster-dsn@{domain}>",
        f"To: <{_one_line(item.sender)}>",
        "Subject: Mail delivery failed: returning message to sender",
        f"Message-ID: <chasquid-dsn-{msg_id}@{domain}>",
        f"Date: {format_date(now)}",
    ]
    orig_id = original_message_id(original)
    if orig_id:
        headers += [f"In-Reply-To: {orig_id}", f"References: {orig_id}"]
    failed = failed_recipients(item)
    if failed:
        headers.append(f"X-Failed-Recipients: {', '.join(failed)}")
    headers += [
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'    boundary="{boundary}"',
    ]
    return headers


def _encode(s: str) -> bytes:
    # Addresses read back from the queue may carry undecodable bytes as lone
    # surrogates; they go out as the bytes they came in as.
    return s.encode("utf-8", "surrogateescape")


def _pick_boundary(ids: Callable[[], str], parts: Iterable[bytes]) -> str:
    contents = list(parts)
    boundary = ids()
    for _ in range(_MAX_BOUNDARY_TRIES):
        marker = b"--" + boundary.encode("ascii", "replace")
        if not any(marker in c for c in contents):
            break
        boundary = ids()
    return boundary


def build_dsn(
    item: QueueItem,
    reporting_domain: str,
    now: datetime,
    ids: Callable[[], str] = new_id,
) -> bytes:
    """Build the DSN for item (LF line endings), reporting as the given domain.

    ids supplies fresh identifiers: the first call gives the Message-ID part,
    later ones the MIME boundary. now is rendered in its own time zone (a
    naive datetime is taken as local time). Reads the first
    MAX_ORIGINAL_DATA bytes of the message (blocking: call it from a thread).
    """
    domain = _one_line(reporting_domain)
    msg_id = ids()
    text = _encode(_text_part(item))
    report = _encode(_report_part(item, domain))
    original = item.body.read(MAX_ORIGINAL_DATA)
    boundary = _pick_boundary(ids, (text, report, original))
    b = boundary.encode("ascii")
    head = _encode("\n".join(_headers(item, original, domain, now, msg_id, boundary)))
    return b"".join(
        [
            head,
            b"\n\n\n--" + b + b"\n",
            b'Content-Type: text/plain; charset="utf-8"\n'
            b"Content-Disposition: inline\n"
            b"Content-Description: Notification\n"
            b"Content-Transfer-Encoding: 8bit\n\n",
            text,
            b"\n\n\n--" + b + b"\n",
            b"Content-Type: message/global-delivery-status\n"
            b"Content-Description: Delivery Report\n"
            b"Content-Transfer-Encoding: 8bit\n\n",
            report,
            b"\n\n\n--" + b + b"\n",
            b"Content-Type: message/rfc822\n"
            b"Content-Description: Undelivered Message\n"
            b"Content-Transfer-Encoding: 8bit\n\n",
            original,
            b"\n\n--" + b + b"--\n",
        ]
    )


def needs_smtputf8(message: bytes) -> bool:
    """True if the top-level header block of message holds non-ASCII bytes."""
    end = message.find(b"\n\n")
    head = message if end < 0 else message[:end]
    return not head.isascii()
