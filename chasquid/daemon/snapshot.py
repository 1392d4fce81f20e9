"""A value that a reload replaces whole: readers always see one complete version."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Snapshot(Generic[T]):
    """Holds the version in force of something reloadable (domains, certificates).

    Readers call ``current()`` each time they need it (reception takes the
    bound method itself), so a reload is one ``swap()``: a session that already
    holds the old version finishes with it, the next one gets the new.
    """

    def __init__(self, value: T) -> None:
        self._value = value

    def current(self) -> T:
        """The version in force."""
        return self._value

    def swap(self, value: T) -> None:
        """Put a new version in force."""
        self._value = value
