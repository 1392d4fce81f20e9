"""Errors of chasquid-util: each one is a single sentence shown to the operator."""

from __future__ import annotations

from chasquid.errors import ChasquidError


class UtilError(ChasquidError):
    """A chasquid-util failure; the message is printed to stderr and the exit status is 1."""
