"""What every courier shares: the delivery error and the Courier protocol."""

from __future__ import annotations

from typing import Protocol

from chasquid.errors import ChasquidError


class DeliveryError(ChasquidError):
    """A failed delivery attempt; permanent ones are not retried (spec/20 §4.10)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent

    @classmethod
    def temporary(cls, message: str) -> DeliveryError:
        """A failure worth retrying later."""
        return cls(message, permanent=False)

    @classmethod
    def permanent_error(cls, message: str) -> DeliveryError:
        """A failure that will not go away by retrying."""
        return cls(message, permanent=True)

    def __repr__(self) -> str:
        kind = "permanent" if self.permanent else "temporary"
        return f"DeliveryError({self.message!r}, {kind})"


class Courier(Protocol):
    """Delivers a message to one recipient."""

    async def deliver(self, sender: str, rcpt: str, data: bytes) -> None:
        """Deliver data from sender to rcpt; raise DeliveryError on failure."""
        ...
