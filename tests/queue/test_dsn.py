"""DSN construction."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta, timezone
from email.message import Message
from email.policy import default

from helpers.mail import parse_message

from chasquid.confdir.aliases import RecipientKind
from chasquid.daemon.queue.dsn import (
    MAX_ORIGINAL_DATA,
    build_dsn,
    format_date,
    needs_smtputf8,
    original_message_id,
    reporting_domain,
)
from chasquid.daemon.queue.item import QueuedRecipient, QueueItem, RecipientStatus
from chasquid.msgbody import Body

NOW = datetime(2024, 3, 5, 14, 7, 9, tzinfo=timezone(timedelta(hours=-3)))
ORIG = b"From: a@x\nTo: b@y\nMessage-ID: <orig-1@x>\nSubject: hi\n\nbody line\n"


def rcpt(
    address: str,
    status: RecipientStatus,
    error: str = "",
    original: str = "",
    kind: RecipientKind = RecipientKind.EMAIL,
) -> QueuedRecipient:
    return QueuedRecipient(
        address=address,
        kind=kind,
        status=status,
        last_failure_message=error,
        original_address=original or address,
    )


def make_item(
    rcpts: list[QueuedRecipient], data: bytes = ORIG, sender: str = "sender@local"
) -> QueueItem:
    return QueueItem(
        id="itemid00000",
        sender=sender,
        to=tuple(r.original_address for r in rcpts),
        rcpts=tuple(rcpts),
        body=Body.of(data),
        created_at=datetime(2024, 3, 4, tzinfo=UTC),
    )


def build(item: QueueItem, domain: str = "local") -> bytes:
    it = iter(["MSGID000000", "BOUNDARY000", "BOUNDARY111"])
    return build_dsn(item, domain, NOW, lambda: next(it))


MIXED = [
    rcpt("p1@remote", RecipientStatus.PENDING, "451 try later", "ñaca@local"),
    rcpt("ok@remote", RecipientStatus.SENT, "", "sent@local"),
    rcpt("f1@remote", RecipientStatus.FAILED, "550 no such user", "pepe@local"),
    rcpt(
        "/usr/bin/cmd arg",
        RecipientStatus.FAILED,
        "exit status 1",
        "pipe@local",
        RecipientKind.PIPE,
    ),
    rcpt("f2@remote", RecipientStatus.FAILED, "550 again", "pepe@local"),
]


def test_multipart_report_structure() -> None:
    msg = parse_message(build(make_item(MIXED)))
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg.get_boundary() == "BOUNDARY000"
    assert msg["From"] == "Mail Delivery System <postmaster-dsn@local>"
    assert msg["To"].addresses[0].addr_spec == "sender@local"
    assert msg["Subject"] == "Mail delivery failed: returning message to sender"
    assert msg["Message-ID"] == "<chasquid-dsn-MSGID000000@local>"
    assert msg["Date"] == "Tue, 05 Mar 2024 14:07:09 -0300"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<orig-1@x>"
    assert msg["References"] == "<orig-1@x>"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/global-delivery-status",
        "message/rfc822",
    ]
    assert parts[0].get_content_charset() == "utf-8"
    payload = parts[2].get_payload()
    assert isinstance(payload, list)
    inner = payload[0]
    assert isinstance(inner, Message)
    assert inner["Message-ID"] == "<orig-1@x>"


def report_blocks(dsn: bytes) -> list[list[str]]:
    text = dsn.decode("utf-8")
    start = text.index("Content-Type: message/global-delivery-status")
    body = text[text.index("\n\n", start) + 2 : text.index("\n--BOUNDARY000", start + 1)]
    blocks = [b for b in body.split("\n\n") if b.strip()]
    return [b.split("\n") for b in blocks]


def test_recipient_blocks_failed_first_then_pending() -> None:
    blocks = report_blocks(build(make_item(MIXED)))
    assert blocks[0] == ["Reporting-MTA: dns; local"]
    assert blocks[1:] == [
        [
            "Original-Recipient: utf-8; pepe@local",
            "Final-Recipient: utf-8; f1@remote",
            "Action: failed",
            "Status: 5.0.0",
            "Diagnostic-Code: smtp; 550 no such user",
        ],
        [
            "Original-Recipient: utf-8; pipe@local",
            "Final-Recipient: utf-8; /usr/bin/cmd arg",
            "Action: failed",
            "Status: 5.0.0",
            "Diagnostic-Code: smtp; exit status 1",
        ],
        [
            "Original-Recipient: utf-8; pepe@local",
            "Final-Recipient: utf-8; f2@remote",
            "Action: failed",
            "Status: 5.0.0",
            "Diagnostic-Code: smtp; 550 again",
        ],
        [
            "Original-Recipient: utf-8; ñaca@local",
            "Final-Recipient: utf-8; p1@remote",
            "Action: failed",
            "Status: 4.0.0",
            "Diagnostic-Code: smtp; 451 try later",
        ],
    ]


def test_x_failed_recipients_sorted_dedup_no_trailing_separator() -> None:
    dsn = build(make_item(MIXED))
    assert b"\nX-Failed-Recipients: pepe@local, pipe@local, \xc3\xb1aca@local\n" in dsn
    assert parse_message(dsn)["X-Failed-Recipients"] == "pepe@local, pipe@local, ñaca@local"


def test_no_message_id_means_no_in_reply_to_or_references() -> None:
    item = make_item(MIXED[:1], data=b"Subject: x\n\nbody\n")
    dsn = build(item)
    assert b"In-Reply-To" not in dsn
    assert b"References" not in dsn
    msg = parse_message(dsn)
    assert msg["In-Reply-To"] is None


def test_message_id_lookup() -> None:
    assert original_message_id(b"message-id:   <a@b>  \n\n") == "<a@b>"
    assert original_message_id(b"Message-Id: <a@b>\nMessage-ID: <c@d>\n\n") == "<a@b>"
    assert original_message_id(b"X: y\nMessage-ID:\n  <folded@b>\nZ: 1\n\n") == "<folded@b>"
    assert original_message_id(b"Message-ID: <a@b>\r\nX: y\r\n\r\n") == "<a@b>"
    assert original_message_id(b"X: y\n\nMessage-ID: <in-body@b>\n") is None
    assert original_message_id(b"not a header line\nMessage-ID: <a@b>\n\n") is None
    assert original_message_id(b" leading continuation\nMessage-ID: <a@b>\n\n") is None
    assert original_message_id(b"Message-ID:   \n\n") is None


def test_multiline_error_folded_with_four_spaces() -> None:
    err = "  550 5.7.1 first line\n5.7.1 second line\n\n"
    dsn = build(make_item([rcpt("a@r", RecipientStatus.FAILED, err)]))
    assert b"Diagnostic-Code: smtp; 550 5.7.1 first line\n    5.7.1 second line\n" in dsn
    # The text part shows the same error indented by four spaces.
    text = parse_message(dsn).get_body(("plain",))
    assert text is not None
    assert "    550 5.7.1 first line\n    5.7.1 second line" in text.get_content()


def test_error_with_blank_lines_keeps_report_blocks_intact() -> None:
    err = "first\r\n\r\n   \nsecond"
    blocks = report_blocks(build(make_item([rcpt("a@r", RecipientStatus.FAILED, err)])))
    assert blocks[1][-2:] == ["Diagnostic-Code: smtp; first", "    second"]
    assert len(blocks) == 2


def test_original_data_truncated_at_256_kib() -> None:
    data = b"Subject: big\n\n" + b"x" * (MAX_ORIGINAL_DATA + 5000)
    dsn = build(make_item([rcpt("a@r", RecipientStatus.FAILED, "e")], data=data))
    tail = data[:MAX_ORIGINAL_DATA] + b"\n\n--BOUNDARY000--\n"
    assert dsn.endswith(b"Content-Transfer-Encoding: 8bit\n\n" + tail)
    assert b"x" * (MAX_ORIGINAL_DATA - 13) not in dsn[: -len(tail)]


def test_truncation_is_byte_based_even_inside_utf8() -> None:
    data = b"Subject: u\n\n" + "ñ".encode() * MAX_ORIGINAL_DATA
    dsn = build(make_item([rcpt("a@r", RecipientStatus.FAILED, "e")], data=data))
    assert dsn.endswith(data[:MAX_ORIGINAL_DATA] + b"\n\n--BOUNDARY000--\n")


def test_utf8_addresses_raw_in_headers_and_report() -> None:
    item = make_item(
        [rcpt("ñoño@remoto", RecipientStatus.FAILED, "550 nope", "jósé@lócal")],
        sender="ñandú@lócal",
    )
    dsn = build(item, "lócal")
    assert "To: <ñandú@lócal>\n".encode() in dsn
    assert "From: Mail Delivery System <postmaster-dsn@lócal>\n".encode() in dsn
    assert "Original-Recipient: utf-8; jósé@lócal\n".encode() in dsn
    assert "Final-Recipient: utf-8; ñoño@remoto\n".encode() in dsn
    assert b"=?" not in dsn
    # Raw UTF-8 headers (RFC 6532): parsed from text, as bytes parsing is ASCII-only.
    msg = email.message_from_string(dsn.decode("utf-8"), policy=default)
    assert msg["To"].addresses[0].addr_spec == "ñandú@lócal"
    assert needs_smtputf8(dsn)
    assert not needs_smtputf8(build(make_item(MIXED[2:4])))


def test_byte_exact_layout() -> None:
    item = make_item(
        [
            rcpt("a@r", RecipientStatus.FAILED, "550 no", "a@local"),
            rcpt("b@r", RecipientStatus.PENDING, "451 later", "b@local"),
        ],
        data=b"Message-ID: <m@x>\n\nhello\n",
    )
    dsn = build(item)
    head, _, rest = dsn.partition(b"\n\n")
    assert head.split(b"\n") == [
        b"From: Mail Delivery System <postmaster-dsn@local>",
        b"To: <sender@local>",
        b"Subject: Mail delivery failed: returning message to sender",
        b"Message-ID: <chasquid-dsn-MSGID000000@local>",
        b"Date: Tue, 05 Mar 2024 14:07:09 -0300",
        b"In-Reply-To: <m@x>",
        b"References: <m@x>",
        b"X-Failed-Recipients: a@local, b@local",
        b"Auto-Submitted: auto-replied",
        b"MIME-Version: 1.0",
        b"Content-Type: multipart/report; report-type=delivery-status;",
        b'    boundary="BOUNDARY000"',
    ]
    # Two empty lines between the boundary= line and the first delimiter.
    assert rest.startswith(b"\n--BOUNDARY000\nContent-Type: text/plain")
    text_end = dsn.index(b"\n\n\n--BOUNDARY000\nContent-Type: message/global-delivery-status")
    assert dsn[text_end - 1 : text_end] != b"\n"  # the text ends without its own newline
    report = dsn[dsn.index(b"Reporting-MTA") : dsn.index(b"--BOUNDARY000\nContent-Type: message/r")]
    assert report == (
        b"Reporting-MTA: dns; local\n"
        b"\n"
        b"Original-Recipient: utf-8; a@local\n"
        b"Final-Recipient: utf-8; a@r\n"
        b"Action: failed\n"
        b"Status: 5.0.0\n"
        b"Diagnostic-Code: smtp; 550 no\n"
        b"\n"
        b"Original-Recipient: utf-8; b@local\n"
        b"Final-Recipient: utf-8; b@r\n"
        b"Action: failed\n"
        b"Status: 4.0.0\n"
        b"Diagnostic-Code: smtp; 451 later\n"
        b"\n\n\n"
    )
    assert dsn.endswith(
        b"--BOUNDARY000\n"
        b"Content-Type: message/rfc822\n"
        b"Content-Description: Undelivered Message\n"
        b"Content-Transfer-Encoding: 8bit\n"
        b"\n"
        b"Message-ID: <m@x>\n\nhello\n"
        b"\n\n--BOUNDARY000--\n"
    )
    assert b"\r" not in dsn


def test_text_part_content() -> None:
    msg = parse_message(build(make_item(MIXED)))
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "  - pepe@local\n  - pipe@local\n  - ñaca@local\n\n\n" in text
    entries = [line for line in text.split("\n") if line.startswith("- ")]
    assert [e.split('"')[1] for e in entries] == [
        "f1@remote",
        "/usr/bin/cmd arg",
        "f2@remote",
        "p1@remote",
    ]
    assert "(PIPE)" in entries[1]
    assert "(EMAIL)" in entries[3]
    assert text.index("failed permanently") < text.index("  - pepe@local")


def test_boundary_redrawn_if_it_occurs_in_content() -> None:
    item = make_item([rcpt("a@r", RecipientStatus.FAILED, "e")], data=b"X: y\n\n--BOUNDARY000\n")
    msg = parse_message(build(item))
    assert msg.get_boundary() == "BOUNDARY111"
    assert len(list(msg.iter_parts())) == 3


def test_header_injection_through_addresses_is_neutralized() -> None:
    item = make_item(
        [rcpt("a@r\nBcc: evil@x", RecipientStatus.FAILED, "e", "o@local\nX-Evil: 1")],
        sender="s@local\nX-Evil: 2",
    )
    dsn = build(item)
    assert b"\nX-Evil" not in dsn
    assert b"\nBcc" not in dsn


def test_reporting_domain() -> None:
    local = {"local", "other"}.__contains__
    item = make_item(
        [
            rcpt("x@r", RecipientStatus.FAILED, "e", "u@remote"),
            rcpt("y@r", RecipientStatus.FAILED, "e", "v@other"),
        ],
        sender="s@local",
    )
    assert reporting_domain(item, local) == "local"
    foreign = make_item(list(item.rcpts), sender="s@elsewhere")
    assert reporting_domain(foreign, local) == "other"
    nothing = make_item([rcpt("x@r", RecipientStatus.FAILED, "e", "u@remote")], sender="s@far")
    assert reporting_domain(nothing, local) == "unknown"


def test_format_date() -> None:
    assert format_date(datetime(2006, 1, 2, 15, 4, 5, tzinfo=timezone(timedelta(hours=-7)))) == (
        "Mon, 02 Jan 2006 15:04:05 -0700"
    )
    assert format_date(datetime(2024, 12, 29, 1, 2, 3, tzinfo=UTC)) == (
        "Sun, 29 Dec 2024 01:02:03 +0000"
    )
    assert format_date(
        datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    ).endswith(" +0530")
