"""The daemon's end of the local RPC: one request per connection, answered within DEADLINE."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from chasquid.errors import ChasquidError
from chasquid.localrpc.protocol import (
    Handler,
    Params,
    RPCError,
    decode_params,
    encode_params,
    get_param,
)

log = logging.getLogger("chasquid.localrpc")

#: The whole exchange must finish within this many seconds.
DEADLINE = 5.0
#: Longest request line accepted.
MAX_REQUEST = 64 * 1024


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
    """AliasResolve and DomaininfoClear over the daemon's live state."""

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
