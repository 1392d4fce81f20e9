"""The contract of every way out of the queue: the error, the result type and one protocol per role.

The delivery loop (chasquid.daemon.queue.delivery) routes each pending recipient by
kind and holds one courier per role:

- ``Courier``: one recipient per call (the MDA, pipe aliases);
- ``LocalBatchCourier``: every local recipient of an item in one transaction
  (LMTP, with ``mail_lmtp_address``);
- ``RemoteCourier``: the remote recipients of one domain in one SMTP
  transaction, through the domain's MX hosts or an alias's own servers.

Every courier reads the message (``Body``) from the queue's file a chunk at a
time, never whole in memory; a message that cannot be read to its end is a
temporary failure, and the program or server never takes it as whole. A
batch courier answers with ``Results``: an entry for every recipient it was
given. A failure is a ``DeliveryError``; permanent ones are not retried and end
in a bounce, temporary ones are retried until the item is too old.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from chasquid.errors import ChasquidError
from chasquid.msgbody import Body


class DeliveryError(ChasquidError):
    """A failed delivery attempt; a permanent one is not retried."""

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


#: A batch delivery's outcome: recipient address -> None when delivered, else why not.
Results = dict[str, DeliveryError | None]


class Courier(Protocol):
    """Delivers a message to one recipient."""

    async def deliver(self, sender: str, rcpt: str, body: Body) -> None:
        """Deliver the message from sender to rcpt; raise DeliveryError on failure.

        The body is read from disk as it is sent, never held whole in memory.
        """
        ...


class LocalBatchCourier(Protocol):
    """Delivers to several local recipients in one transaction, over connections it keeps."""

    async def deliver_many(self, sender: str, rcpts: Sequence[str], body: Body) -> Results:
        """An entry for every rcpt; failures are results, not exceptions."""
        ...

    async def close(self) -> None:
        """Close the connections kept for later deliveries."""
        ...


class RemoteCourier(Protocol):
    """Delivers to the remote recipients of one domain in one SMTP transaction.

    ``via`` is empty for plain recipients (the domain's MX hosts are used) and
    the alias's server list for forwarding aliases (tried in order).
    """

    async def deliver_many(
        self, sender: str, rcpts: Sequence[str], body: Body, *, via: Sequence[str] = ()
    ) -> Results:
        """An entry for every rcpt; failures are results, not exceptions."""
        ...
