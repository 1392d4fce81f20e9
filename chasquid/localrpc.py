"""Local RPC between chasquid-util and the daemon over a unix socket (spec/30 §2.5, spec/20 §9).

One request per connection: the client sends ``<Method> <params>`` and a line
end, the server answers one line, ``200 <params>`` or ``500 <error>``, and
closes. Params use URL query encoding (``k=v&k2=v2``, ``+`` for space,
``%XX`` with upper-case hex, keys sorted, repeated keys kept in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import quote_plus, unquote_plus

from chasquid.errors import ChasquidError

log = logging.getLogger("chasquid.localrpc")

#: Name of the socket inside the data dir.
SOCKET_NAME = "localrpc-v1"
#: The whole exchange must finish within this many seconds (server side).
DEADLINE = 5.0
#: Longest request line accepted.
MAX_REQUEST = 64 * 1024
#: The client's own safety net; the server answers or closes within DEADLINE.
CLIENT_TIMEOUT = 60.0

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


def get_all(params: Params, key: str) -> list[str]:
    """Every value of key, in order."""
    return [v for k, v in params if k == key]


async def _respond(line: bytes, handlers: Mapping[str, Handler]) -> bytes:
    text = line.decode("utf-8", errors="replace").rstrip("\r\n")
    method, _, raw = text.partition(" ")
    handler = handlers.get(method)
    if handler is None:
        return b"500 unknown method\r\n"
    try:
        params = decode_params(raw)
        result = await handler(params)
    except ChasquidError as e:
        return b"500 " + _one_line(str(e)).encode("utf-8", "surrogateescape") + b"\r\n"
    except Exception as e:
        log.exception("local RPC %s failed", method)
        return f"500 internal error: {_one_line(str(e))}\r\n".encode("utf-8", "replace")
    return b"200 " + encode_params(result).encode("ascii") + b"\r\n"


def _one_line(s: str) -> str:
    return " ".join(s.splitlines())


async def _serve_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handlers: Mapping[str, Handler]
) -> None:
    try:
        async with asyncio.timeout(DEADLINE):
            try:
                line = await reader.readline()
            except ValueError:  # longer than MAX_REQUEST
                line = b""
                writer.write(f"500 request longer than {MAX_REQUEST} bytes\r\n".encode())
            if line:
                writer.write(await _respond(line, handlers))
            await writer.drain()
    except (TimeoutError, ConnectionError) as e:
        log.debug("local RPC connection ended: %s", e)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


SOCKET_MODE = 0o660


async def start_server(path: Path, handlers: Mapping[str, Handler]) -> asyncio.Server:
    """Listen on path (a stale socket there is removed first) and serve handlers.

    Raises RPCError if the socket cannot be created.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_one(reader, writer, handlers)

    try:
        server = await asyncio.start_unix_server(serve, path=str(path), limit=MAX_REQUEST)
        # The socket can clear domaininfo and drop queued mail: only the daemon's
        # user and group may connect, whatever the umask the daemon started with.
        os.chmod(path, SOCKET_MODE)
    except OSError as e:
        raise RPCError(f"cannot listen on {path}: {e.strerror or e}") from None
    return server


def call(
    path: Path, method: str, params: Sequence[tuple[str, str]] = (), timeout: float = CLIENT_TIMEOUT
) -> Params:
    """Make one call over the socket at path; the result params, or RPCError."""
    request = method + " " + encode_params(params) + "\r\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                raise DaemonNotRunningError(
                    f"dial unix {path}: connect: {(e.strerror or str(e)).lower()}"
                ) from None
            raise RPCError(f"dial unix {path}: {e.strerror or e}") from None
        try:
            s.sendall(request.encode("utf-8", "surrogateescape"))
            reply = _read_line(s)
        except OSError as e:
            raise RPCError(f"talking to the daemon on {path}: {e.strerror or e}") from None
    m = re.fullmatch(r"(\d{3}) (.*)", reply.rstrip("\r\n"), re.DOTALL)
    if m is None:
        raise RPCError(f"unexpected reply from the daemon: {reply!r}")
    if m.group(1) != "200":
        raise RPCError(m.group(2))
    return decode_params(m.group(2))


def _read_line(s: socket.socket) -> str:
    chunks: list[bytes] = []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks).decode("utf-8", "replace")


# --- the daemon's standard methods.


class _ResolvedRecipient(Protocol):
    @property
    def address(self) -> str: ...

    @property
    def kind(self) -> str: ...


class _Resolver(Protocol):
    async def resolve(self, addr: str) -> Sequence[_ResolvedRecipient]: ...


class _DomainInfo(Protocol):
    def clear(self, domain: str) -> None: ...


def standard_handlers(
    resolver: Callable[[], _Resolver], domaininfo: _DomainInfo
) -> dict[str, Handler]:
    """AliasResolve and DomaininfoClear (spec/30 §2.5) over the daemon's live state."""

    async def alias_resolve(params: Params) -> Params:
        recipients = await resolver().resolve(get_param(params, "Address"))
        return [(f"({r.kind})", r.address) for r in recipients]

    async def domaininfo_clear(params: Params) -> Params:
        domain = get_param(params, "Domain")
        # On the loop, not in a thread: the store is not thread-safe, and a clear
        # racing a session's level check could write back a stale level.
        domaininfo.clear(domain)
        return []

    return {"AliasResolve": alias_resolve, "DomaininfoClear": domaininfo_clear}
