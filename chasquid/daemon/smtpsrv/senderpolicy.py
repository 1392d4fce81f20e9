"""Who an authenticated user may send as: the ``auth_sender_policy`` key (docs/security.md).

``any``: every sender address. ``domain``: addresses of the user's own
domain. ``own``: the user's address, its suffixed and drop-character forms
(``user+tag@``, ``u.ser@``), and local addresses whose aliases resolve to the
user. The null sender ``<>`` is always allowed: it cannot pose as anyone, and
auto-replies use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from chasquid.confdir.aliases import AliasError, RecipientKind
from chasquid.errors import ChasquidError
from chasquid.normalize import NormalizationError, clean, normalize_user, split_addr


class SenderPolicyError(ChasquidError):
    """The aliases could not be resolved to decide (a temporary failure)."""


class _Recipient(Protocol):
    @property
    def address(self) -> str: ...

    @property
    def kind(self) -> RecipientKind: ...


class AliasResolver(Protocol):
    """What the policy needs of chasquid.confdir.aliases.Resolver."""

    @property
    def drops(self) -> str: ...

    @property
    def separators(self) -> str: ...

    async def resolve(self, addr: str) -> Sequence[_Recipient]: ...


async def may_send_as(
    policy: str, sender: str, user: str, domain: str, resolver: AliasResolver
) -> bool:
    """Whether ``user@domain`` (an authenticated identity) may use ``sender`` in MAIL FROM.

    ``sender`` has its domain normalized already ("" for the null sender). A
    user authenticated without a domain has no domain and no address of its
    own: only ``any`` lets it send. Raises SenderPolicyError when the
    aliases cannot be resolved.
    """
    if policy == "any" or not sender:
        return True
    local, sender_domain = split_addr(sender)
    if not domain:
        return False
    if policy == "domain":
        return sender_domain == domain
    try:
        normalized = f"{normalize_user(local)}@{sender_domain}"
    except NormalizationError:
        return False
    own = f"{user}@{domain}"
    if normalized == own or clean(normalized, resolver.drops, resolver.separators) == own:
        return True
    try:
        resolved = await resolver.resolve(normalized)
    except AliasError as e:
        raise SenderPolicyError(f"error resolving aliases of {sender}: {e}") from None
    return any(r.kind == RecipientKind.EMAIL and r.address == own for r in resolved)
