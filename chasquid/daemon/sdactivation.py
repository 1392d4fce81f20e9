"""systemd socket activation: the sockets inherited through LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES.

Implements the ``sd_listen_fds_with_names`` protocol.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

from chasquid.errors import ChasquidError

#: The first inherited descriptor (after stdin, stdout and stderr).
FIRST_FD = 3

_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class SDActivationError(ChasquidError):
    """The socket-activation variables or descriptors are unusable."""


def listen_fds_with_names(
    environ: MutableMapping[str, str] | None = None, pid: int | None = None
) -> dict[str, list[socket.socket]]:
    """The inherited listening sockets by name; empty when the variables are absent.

    The three variables are removed from ``environ`` (default: the process
    environment) so children (hooks, MDAs) do not see them, and the descriptors
    are marked close-on-exec.
    """
    env = os.environ if environ is None else environ
    our_pid = os.getpid() if pid is None else pid
    listen_pid = env.get("LISTEN_PID", "")
    listen_fds = env.get("LISTEN_FDS", "")
    fdnames = env.get("LISTEN_FDNAMES", "")
    for var in _VARIABLES:
        env.pop(var, None)

    if not listen_pid or not listen_fds:
        return {}

    try:
        wanted_pid = int(listen_pid)
    except ValueError as e:
        raise SDActivationError(f"invalid LISTEN_PID {listen_pid!r}: not a number") from e
    if wanted_pid != our_pid:
        raise SDActivationError("$LISTEN_PID != our PID")
    try:
        nfds = int(listen_fds)
    except ValueError as e:
        raise SDActivationError(f"invalid LISTEN_FDS {listen_fds!r}: not a number") from e
    if nfds < 0:
        raise SDActivationError(f"invalid LISTEN_FDS {listen_fds!r}: negative")

    if fdnames:
        names = fdnames.split(":")
        if nfds > 0 and len(names) != nfds:
            raise SDActivationError("Incorrect LISTEN_FDNAMES, have you set FileDescriptorName?")
    else:
        names = [""] * nfds

    result: dict[str, list[socket.socket]] = {}
    for i in range(nfds):
        fd = FIRST_FD + i
        sock = _listener_from_fd(fd)
        result.setdefault(names[i], []).append(sock)
    return result


def _listener_from_fd(fd: int) -> socket.socket:
    """Wrap an inherited descriptor, checking it is a listening stream socket."""
    try:
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise SDActivationError(f"file descriptor {fd} is not a socket: {e.strerror}") from e
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise SDActivationError(f"file descriptor {fd} is not a stream socket")
    try:
        accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as e:
        sock.detach()
        raise SDActivationError(f"file descriptor {fd}: {e.strerror}") from e
    if not accepting:
        sock.detach()
        raise SDActivationError(f"file descriptor {fd} is not a listening socket")
    sock.setblocking(False)
    return sock
