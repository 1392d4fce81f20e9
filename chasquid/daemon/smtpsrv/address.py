"""MAIL/RCPT address-token extraction and RFC 5322 address parsing."""

from __future__ import annotations

import re

from chasquid.errors import ChasquidError

_INVALID_UTF8 = re.compile("[\udc80-\udcff]")
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)


class AddressError(ChasquidError):
    """An address token that does not parse as an RFC 5322 address."""


def has_control(text: str) -> bool:
    """Whether text holds a C0 or C1 control, DEL, or a Unicode line or paragraph separator."""
    return _CONTROL.search(text) is not None


def first_token(params: str) -> str | None:
    """The first whitespace-delimited token after leading whitespace, or None."""
    parts = params.split(None, 1)
    return parts[0] if parts else None


def _is_atext(ch: str) -> bool:
    return ch in _ATEXT or ord(ch) > 0x7F


def _dot_atom(text: str, what: str) -> str:
    if not text:
        raise AddressError(f"empty {what}")
    for label in text.split("."):
        if not label:
            raise AddressError(f"invalid {what} {text!r}: empty label")
        if not all(_is_atext(c) for c in label):
            raise AddressError(f"invalid {what} {text!r}: invalid character")
    return text


def _strip_comment(token: str) -> str:
    if token.endswith(")"):
        start = token.rfind("(")
        if start < 0:
            raise AddressError("unbalanced parenthesis")
        token = token[:start]
    return token


def _addr_spec(spec: str) -> str:
    if spec.startswith('"'):
        local_chars: list[str] = []
        i = 1
        while True:
            if i >= len(spec):
                raise AddressError("unterminated quoted string")
            ch = spec[i]
            if ch == "\\" and i + 1 < len(spec):
                local_chars.append(spec[i + 1])
                i += 2
                continue
            if ch == '"':
                break
            if ord(ch) < 0x20 or ord(ch) == 0x7F:
                raise AddressError("control character in quoted string")
            local_chars.append(ch)
            i += 1
        local = "".join(local_chars)
        rest = spec[i + 1 :]
        if not rest.startswith("@"):
            raise AddressError("missing @ after local part")
        domain = rest[1:]
        if not local:
            raise AddressError("empty quoted local part")
    else:
        local, at, domain = spec.partition("@")
        if not at:
            raise AddressError("missing @ in address")
        _dot_atom(local, "local part")
    if domain.startswith("[") and domain.endswith("]") and len(domain) > 2:
        inner = domain[1:-1]
        if any(c in "[]\\" or ord(c) < 0x21 for c in inner):
            raise AddressError(f"invalid domain literal {domain!r}")
    else:
        _dot_atom(domain, "domain")
    return f"{local}@{domain}"


def parse_address(token: str) -> str:
    """The bare address of an RFC 5322 single-token address (``<a@b>``, ``a@b``, ``N<a@b>``).

    Quoted local parts are returned without quotes.  Raises AddressError.
    Commands are decoded with ``surrogateescape``: a surrogate here is a byte
    that was not valid UTF-8.
    """
    if _INVALID_UTF8.search(token):
        raise AddressError("invalid UTF-8 in address")
    if has_control(token):
        # Not even escaped in a quoted local part: an address ends up in logs,
        # DSN headers and hook environments, none of which may carry them.
        raise AddressError("control character in address")
    token = _strip_comment(token)
    if "<" in token:
        start = token.find("<")
        if not token.endswith(">"):
            raise AddressError("missing closing >")
        spec = token[start + 1 : -1]
        if spec.startswith("@"):
            raise AddressError("source routes are not supported")
    else:
        spec = token
    if not spec:
        raise AddressError("empty address")
    return _addr_spec(spec)
