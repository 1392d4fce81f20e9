"""Reading passwords from the terminal without echo."""

from __future__ import annotations

import os
import termios
from typing import TextIO

from chasquid_util.errors import UtilError


def read_password(prompt: str, stdin: TextIO, stdout: TextIO) -> str:
    """Print prompt to stdout and read one line from the stdin terminal with echo off.

    Raises UtilError when stdin is not a terminal: a password must never be
    taken silently from a pipe by accident.
    """
    try:
        fd = stdin.fileno()
        old = termios.tcgetattr(fd)
    except (OSError, ValueError, termios.error) as e:
        stdout.write(prompt + "\n")
        stdout.flush()
        raise UtilError(
            f"Error reading password: {_reason(e)} (stdin is not a terminal; "
            "use --password=... to give it on the command line)"
        ) from e
    new = list(old)
    new[3] &= ~termios.ECHO
    # Echo goes off before the prompt appears, so nothing typed after seeing it is
    # shown; TCSADRAIN (not TCSAFLUSH) keeps what was typed ahead.
    termios.tcsetattr(fd, termios.TCSADRAIN, new)
    try:
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
        stdout.write("\n")
        stdout.flush()
    if not line:
        raise UtilError("Error reading password: end of input")
    return line.rstrip("\r\n")


def ask_password_twice(stdin: TextIO, stdout: TextIO) -> str:
    """Ask for a password and its confirmation; raise UtilError if they differ."""
    first = read_password("Password: ", stdin, stdout)
    second = read_password("Confirm password: ", stdin, stdout)
    if first != second:
        raise UtilError("Passwords don't match")
    return first


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return os.strerror(e.errno).lower()
    if isinstance(e, termios.error) and e.args and isinstance(e.args[-1], str):
        return e.args[-1].lower()
    return str(e) or type(e).__name__
