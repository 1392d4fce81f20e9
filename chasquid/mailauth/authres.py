"""The Authentication-Results header field (RFC 8601): building ours, removing forged ones.

Our field names this host as the authserv-id, then one result per line:

    Authentication-Results: mx.example.com
        ;spf=pass (matched mx)
        ;dkim=pass  header.b=JkROrF9he5gq  header.d=example.org

Downstream filters trust a field with our authserv-id, so a message must not
bring one of its own: `remove_forged` drops every incoming field that claims
one of our names (RFC 8601 §5), before ours is added.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from chasquid.mailauth import message as msg

NAME = "Authentication-Results"

_FIELD = re.compile(rb"^authentication-results[ \t]*:", re.IGNORECASE | re.MULTILINE)
_COMMENT_OR_SPACE = re.compile(rb"\s+|\((?:[^()\\]|\\.)*\)")
_TOKEN = re.compile(rb'"((?:[^"\\]|\\.)*)"|([^\s;()"]+)')


def value(authserv_id: str, spf: tuple[str, str] | None, dkim_lines: Sequence[str]) -> str | None:
    """The field's value (lines joined by LF), or None when there is nothing to report."""
    if spf is None and not dkim_lines:
        return None
    lines = [authserv_id]
    if spf is not None:
        lines.append(f";spf={spf[0]} ({spf[1]})")
    lines.extend(dkim_lines)
    return "\n".join(lines)


def authserv_id(field_value: bytes) -> str:
    """The authserv-id a field value starts with (comments skipped, unquoted), lower-cased."""
    text = field_value.replace(b"\r", b"").replace(b"\n", b"")
    pos = 0
    while match := _COMMENT_OR_SPACE.match(text, pos):
        pos = match.end()
    token = _TOKEN.match(text, pos)
    if token is None:
        return ""
    raw = token.group(1) if token.group(1) is not None else token.group(2)
    return re.sub(rb"\\(.)", rb"\1", raw).decode("utf-8", "replace").lower().rstrip(".")


def remove_forged(message: bytes, our_ids: Iterable[str]) -> bytes:
    """message (LF line ends) without the Authentication-Results fields that claim one of our_ids.

    Returns the message itself when there is nothing to remove.
    """
    parts = msg.split(message)
    section = message[: parts.header_end]
    kept = remove_forged_fields(section, our_ids)
    if kept is section:
        return message
    return kept + message[parts.header_end :]


def remove_forged_fields(section: bytes, our_ids: Iterable[str]) -> bytes:
    """``remove_forged`` for a header section alone; the section itself if nothing goes."""
    if _FIELD.search(section) is None:
        return section
    ours = {i.lower().rstrip(".") for i in our_ids}
    fields = _raw_fields(section)
    kept = [f for f in fields if not _claims(f, ours)]
    if len(kept) == len(fields):
        return section
    return b"".join(kept)


def _raw_fields(section: bytes) -> list[bytes]:
    """The header section cut into fields, each with its continuation lines, as written."""
    fields: list[list[bytes]] = []
    for line in section.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return [b"".join(lines) for lines in fields]


def _claims(field: bytes, ours: set[str]) -> bool:
    name, colon, rest = field.partition(b":")
    if not colon or name.rstrip(b" \t").lower() != b"authentication-results":
        return False
    return authserv_id(rest) in ours
