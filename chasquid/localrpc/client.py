"""The tools' end of the local RPC: one blocking call to the running daemon."""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Sequence
from pathlib import Path

from chasquid.localrpc.protocol import (
    DaemonNotRunningError,
    Params,
    RPCError,
    decode_params,
    encode_params,
)

#: The client's own safety net; the server answers or closes within its deadline.
CLIENT_TIMEOUT = 60.0


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
