"""The local RPC's wire format: requests, replies, params encoding and errors.

One request per connection: the client sends ``<Method> <params>`` and a line
end, the server answers one line, ``200 <params>`` or ``500 <error>``, and
closes. Params use URL query encoding (``k=v&k2=v2``, ``+`` for space,
``%XX`` with upper-case hex, keys sorted, repeated keys kept in order).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import quote_plus, unquote_plus

from chasquid.errors import ChasquidError

Params = list[tuple[str, str]]
Handler = Callable[[Params], Awaitable[Params]]

_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class RPCError(ChasquidError):
    """An RPC that failed: the daemon's error text, or a transport problem."""


class DaemonNotRunningError(RPCError):
    """Nothing answers on the socket: the daemon is not running (or uses another data dir)."""


class ParamsError(RPCError):
    """Params that are not valid URL query encoding."""


def encode_params(params: Sequence[tuple[str, str]]) -> str:
    """URL query encoding with keys sorted; values of one key keep their order."""
    ordered = sorted(params, key=lambda kv: kv[0])
    return "&".join(f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}" for k, v in ordered)


def decode_params(text: str) -> Params:
    """Parse URL query encoding strictly; raises ParamsError on a bad escape."""
    out: Params = []
    for part in text.split("&"):
        if not part:
            continue
        if ";" in part:
            raise ParamsError("invalid semicolon separator in query")
        key, _, value = part.partition("=")
        for s in (key, value):
            m = _ESCAPE.search(s)
            if m:
                raise ParamsError(f'invalid URL escape "{s[m.start() : m.start() + 3]}"')
        try:
            out.append((unquote_plus(key, errors="strict"), unquote_plus(value, errors="strict")))
        except UnicodeDecodeError:
            raise ParamsError(f"invalid UTF-8 in {part!r}") from None
    return out


def get_param(params: Params, key: str, default: str | None = None) -> str:
    """The first value of key; RPCError naming the key if missing and no default."""
    for k, v in params:
        if k == key:
            return v
    if default is None:
        raise RPCError(f"missing parameter {key!r}")
    return default
