"""Run a command as systemd socket activation would: inherited listeners at fds 3, 4, ...

Usage: python sdlaunch.py NAMES FD [FD ...] -- COMMAND [ARG ...]

NAMES is the LISTEN_FDNAMES value ("-" leaves it unset); each FD (passed to this
process with pass_fds) becomes fd 3, 4, ... in order. LISTEN_PID is this
process's pid, which exec keeps, so COMMAND sees its own pid there.
"""

from __future__ import annotations

import fcntl
import os
import sys


def main(argv: list[str]) -> None:
    """Move the fds into place, set LISTEN_* and exec the command."""
    sep = argv.index("--")
    names, fds, command = argv[0], [int(a) for a in argv[1:sep]], argv[sep + 1 :]
    # Park every fd above the target range first so dup2 never clobbers a
    # source that has not been moved yet.
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
    for i, fd in enumerate(parked):
        os.dup2(fd, 3 + i, inheritable=True)
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.environ["LISTEN_PID"] = str(os.getpid())
    if names != "-":
        os.environ["LISTEN_FDNAMES"] = names
    else:
        os.environ.pop("LISTEN_FDNAMES", None)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
