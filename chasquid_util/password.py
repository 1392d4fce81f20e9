"""Reading passwords from the terminal without echo."""

from __future__ import annotations

import termios
from typing import TextIO

from chasquid_util.errors import UtilError


def read_password(prompt: str, stdin: TextIO, stdout: TextIO) -> str:
    """Print prompt to stdout and read one line from the stdin terminal with echo off.

    Raises UtilError, before anything is printed, when stdin is not a
    terminal: a password must never be taken silently from a pipe by accident.
    """
    try:
        fd = stdin.fileno()
        old = termios.tcgetattr(fd)
    except (OSError, ValueError, termios.error):
        raise UtilError(
            "Cannot ask for the password: stdin is not a terminal; give it with --password=..."
        ) from None
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
