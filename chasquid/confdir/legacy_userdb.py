"""Reader of chasquid's own users file: protocol buffers text format.

The file holds ``ProtoDB { map<string, Password> users = 1; }``, written as
repeated ``users { key: "name" value { scrypt { ... } } }`` blocks.  This is a
small tokenizer and parser for the subset of the text format such files use:
``{ }`` and ``< >`` message delimiters, an optional ``:`` before a message,
``[a, b]`` lists, single or double quoted strings with C escapes (adjacent
strings concatenate), integers, identifiers, ``,``/``;`` separators and ``#``
comments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chasquid.confdir.passwords import Entry, Plain, ReceiveOnly, scrypt_entry
from chasquid.errors import ChasquidError
from chasquid.normalize import NormalizationError, normalize_user


class LegacyUserDBError(ChasquidError):
    """A legacy users file that cannot be read; the message names file and line."""


_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n\f\v]+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*))(?![A-Za-z0-9_.])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<symbol>[{}<>:\[\],;])
    """,
    re.VERBOSE,
)

_SIMPLE_ESCAPES = {
    "n": 0x0A,
    "t": 0x09,
    "r": 0x0D,
    "a": 0x07,
    "b": 0x08,
    "f": 0x0C,
    "v": 0x0B,
    "\\": 0x5C,
    "'": 0x27,
    '"': 0x22,
    "?": 0x3F,
}
_OCTAL = "01234567"
_MAX_DEPTH = 32
_HEX = "0123456789abcdefABCDEF"


def _parse_int(text: str) -> int:
    """Integers as the text format writes them: decimal, 0x hex, or 0-prefixed octal."""
    digits = text.lstrip("+-")
    sign = -1 if text.startswith("-") else 1
    if digits[:2].lower() == "0x":
        return sign * int(digits[2:], 16)
    if len(digits) > 1 and digits.startswith("0"):
        return sign * int(digits, 8)
    return sign * int(digits)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    line: int


@dataclass(frozen=True)
class _Field:
    """One parsed field: a scalar (bytes from strings, int, identifier str) or a message."""

    name: str
    value: bytes | int | str | tuple[_Field, ...]
    line: int


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens = self._tokenize(text)
        self.pos = 0
        self.depth = 0

    def error(self, line: int, message: str) -> LegacyUserDBError:
        return LegacyUserDBError(f"{self.source}:{line}: {message}")

    def _tokenize(self, text: str) -> list[_Token]:
        tokens: list[_Token] = []
        line = 1
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise self.error(line, f"unexpected character {text[pos]!r}")
            kind = m.lastgroup or ""
            if kind not in ("space", "comment"):
                tokens.append(_Token(kind, m.group(), line))
            line += m.group().count("\n")
            pos = m.end()
        tokens.append(_Token("eof", "", line))
        return tokens

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        tok = self.tokens[self.pos]
        if tok.kind != "eof":
            self.pos += 1
        return tok

    def accept(self, symbol: str) -> bool:
        tok = self.peek()
        if tok.kind == "symbol" and tok.text == symbol:
            self.pos += 1
            return True
        return False

    def message(self, closing: str) -> tuple[_Field, ...]:
        fields: list[_Field] = []
        while True:
            tok = self.peek()
            if closing == "" and tok.kind == "eof":
                return tuple(fields)
            if tok.kind == "symbol" and tok.text == closing:
                self.take()
                return tuple(fields)
            if tok.kind == "eof":
                raise self.error(tok.line, f"unexpected end of file, expected {closing!r}")
            fields.extend(self.field())
            if not self.accept(","):
                self.accept(";")

    def field(self) -> list[_Field]:
        name = self.take()
        if name.kind != "ident":
            raise self.error(name.line, f"expected a field name, found {name.text!r}")
        colon = self.accept(":")
        if self.accept("["):
            return [_Field(name.text, v, name.line) for v in self.list_values(name.text)]
        tok = self.peek()
        if tok.kind == "symbol" and tok.text in "{<":
            return [_Field(name.text, self.submessage(), name.line)]
        if not colon:
            raise self.error(tok.line, f"expected ':' after field {name.text!r}")
        return [_Field(name.text, self.scalar(), name.line)]

    def list_values(self, name: str) -> list[bytes | int | str | tuple[_Field, ...]]:
        values: list[bytes | int | str | tuple[_Field, ...]] = []
        if self.accept("]"):
            return values
        while True:
            tok = self.peek()
            if tok.kind == "symbol" and tok.text in "{<":
                values.append(self.submessage())
            else:
                values.append(self.scalar())
            if self.accept("]"):
                return values
            if not self.accept(","):
                raise self.error(self.peek().line, f"expected ',' or ']' in list {name!r}")

    def submessage(self) -> tuple[_Field, ...]:
        opening = self.take()
        # A users file nests three levels; bound it so a corrupt file is an error
        # with a line number rather than a RecursionError.
        if self.depth >= _MAX_DEPTH:
            raise self.error(opening.line, f"messages nested more than {_MAX_DEPTH} deep")
        self.depth += 1
        try:
            return self.message("}" if opening.text == "{" else ">")
        finally:
            self.depth -= 1

    def scalar(self) -> bytes | int | str:
        tok = self.take()
        if tok.kind == "string":
            data = self.unescape(tok)
            while self.peek().kind == "string":
                data += self.unescape(self.take())
            return data
        if tok.kind == "number":
            return _parse_int(tok.text)
        if tok.kind == "ident":
            return tok.text
        raise self.error(tok.line, f"expected a value, found {tok.text or 'end of file'!r}")

    def unescape(self, tok: _Token) -> bytes:
        body = tok.text[1:-1]
        out = bytearray()
        i = 0
        while i < len(body):
            c = body[i]
            if c != "\\":
                out += c.encode("utf-8")
                i += 1
                continue
            nxt = body[i + 1]
            if nxt in _OCTAL:
                j = i + 1
                while j < len(body) and j < i + 4 and body[j] in _OCTAL:
                    j += 1
                value = int(body[i + 1 : j], 8)
                if value > 0xFF:
                    raise self.error(tok.line, f"octal escape \\{body[i + 1 : j]} out of range")
                out.append(value)
                i = j
            elif nxt in "xX":
                j = i + 2
                while j < len(body) and j < i + 4 and body[j] in _HEX:
                    j += 1
                if j == i + 2:
                    raise self.error(tok.line, "\\x escape without hex digits")
                out.append(int(body[i + 2 : j], 16))
                i = j
            elif nxt in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[nxt])
                i += 2
            else:
                raise self.error(tok.line, f"unknown escape \\{nxt} in string")
        return bytes(out)


def _fields_by_name(
    fields: tuple[_Field, ...], allowed: set[str], where: str, p: _Parser
) -> dict[str, _Field]:
    found: dict[str, _Field] = {}
    for f in fields:
        if f.name not in allowed:
            raise p.error(f.line, f"unknown field {f.name!r} in {where}")
        found[f.name] = f  # as in protobuf, a repeated singular field keeps the last value
    return found


def _int(f: _Field | None, p: _Parser, where: str) -> int:
    if f is None:
        return 0
    if not isinstance(f.value, int):
        raise p.error(f.line, f"{where}: field {f.name!r} must be an integer")
    return f.value


def _bytes(f: _Field | None, p: _Parser, where: str) -> bytes:
    if f is None:
        return b""
    if not isinstance(f.value, bytes):
        raise p.error(f.line, f"{where}: field {f.name!r} must be a string")
    return f.value


def _message(f: _Field, p: _Parser, where: str) -> tuple[_Field, ...]:
    if not isinstance(f.value, tuple):
        raise p.error(f.line, f"{where}: field {f.name!r} must be a message")
    return f.value


def _password(fields: tuple[_Field, ...], p: _Parser, where: str) -> Entry:
    by_name = _fields_by_name(fields, {"scrypt", "plain", "denied"}, where, p)
    if len(by_name) > 1:
        line = max(f.line for f in by_name.values())
        raise p.error(line, f"{where}: more than one of scrypt, plain, denied")
    if "scrypt" in by_name:
        s = _fields_by_name(
            _message(by_name["scrypt"], p, where),
            {"logN", "r", "p", "keyLen", "salt", "encrypted"},
            where,
            p,
        )
        key = _bytes(s.get("encrypted"), p, where)
        key_len = _int(s.get("keyLen"), p, where)
        if key_len != len(key):
            # The stored key is what a login is checked against; a keyLen that does not
            # match it can never succeed, so keep it as an entry that never authenticates.
            return ReceiveOnly()
        return scrypt_entry(
            _int(s.get("logN"), p, where),
            _int(s.get("r"), p, where),
            _int(s.get("p"), p, where),
            _bytes(s.get("salt"), p, where),
            key,
        )
    if "plain" in by_name:
        plain = _fields_by_name(_message(by_name["plain"], p, where), {"password"}, where, p)
        return Plain(_bytes(plain.get("password"), p, where))
    if "denied" in by_name:
        _fields_by_name(_message(by_name["denied"], p, where), set(), where, p)
    # "denied", and an entry with no scheme at all, exist but never authenticate.
    return ReceiveOnly()


def parse_legacy(text: str, source: str) -> dict[str, Entry]:
    """Parse chasquid's protobuf-text users file; LegacyUserDBError names file and line.

    User names must already be normalized (chasquid only ever wrote them so).
    """
    p = _Parser(text, source)
    users: dict[str, Entry] = {}
    for f in p.message(""):
        if f.name != "users":
            raise p.error(f.line, f"unknown field {f.name!r} (expected 'users')")
        entry = _fields_by_name(_message(f, p, "users"), {"key", "value"}, "users entry", p)
        raw_name = _bytes(entry.get("key"), p, "users entry")
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise p.error(f.line, f"user name {raw_name!r} is not valid UTF-8") from None
        where = f"user {name!r}"
        try:
            normalized = normalize_user(name)
        except NormalizationError as e:
            raise p.error(f.line, f"{where}: {e}") from None
        if normalized != name:
            raise p.error(f.line, f"{where}: name is not normalized (it would be {normalized!r})")
        if name in users:
            raise p.error(f.line, f"{where}: listed more than once")
        value = entry.get("value")
        users[name] = _password(_message(value, p, where), p, where) if value else ReceiveOnly()
    return users
