"""Making untrusted text safe to write into a line-oriented log.

Log lines carry text that others choose: a remote server's reply, a client's
EHLO name, an address, an AUTH identity. Log readers (fail2ban, grep, a
terminal) treat a line break as the start of a new entry and act on escape
sequences, so anyone who can put a newline into a logged field can forge
entries: fail2ban would then ban whatever address the forged line names.

Both logs (the mail log and the main log) pass every line through
``escape`` just before it is written, so no caller has to remember it.
"""

from __future__ import annotations

import re

# C0 controls (CR, LF, TAB, ESC, NUL, ...), DEL and C1 controls (NEL is one);
# the Unicode line and paragraph separators, which some readers break lines
# at; bidirectional overrides and marks, which make a terminal show text in
# another order than it is written; and lone surrogates, which stand for bytes
# that were not valid UTF-8 (decoded with "surrogateescape").
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        # A byte that was not valid UTF-8, carried through surrogateescape.
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every character that could break or disguise a log line escaped.

    CR, LF and TAB become ``\\r``, ``\\n`` and ``\\t``; other control
    characters ``\\xNN``; undecodable bytes (surrogate-escaped) ``\\xNN`` of
    the original byte; line separators, bidirectional controls and other
    lone surrogates ``\\uNNNN``. Everything else, including backslashes and
    non-ASCII letters, is kept as is, so ordinary lines read unchanged.
    """
    return _UNSAFE.sub(_escape_one, text)
