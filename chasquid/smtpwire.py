"""Message bytes as SMTP and LMTP carry them: CRLF line endings and the dot-stuffed DATA payload.

The queue stores messages with LF line endings; everything that hands one to
another program or server (MDAs, LMTP, SMTP, mda-lmtp) converts it here.
"""

from __future__ import annotations


def to_crlf(data: bytes) -> bytes:
    """LF line endings to CRLF; existing CRLF kept, no newline added at the end."""
    # Two C-speed replaces instead of a regex with a look-behind: every LF ends
    # up with exactly one CR before it, and a CRLF stays as it was.
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def dot_stuff(data: bytes) -> bytes:
    """The DATA payload: CRLF line endings, leading dots doubled, and the final dot."""
    body = to_crlf(data)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\n.", b"\n..") + b".\r\n"
