"""AUTH PLAIN and LOGIN: decoding the client's responses and checking credentials.

The domain's own users database is asked first; when it does not say yes
(and does not fail), the fallback (Dovecot, when ``dovecot_auth`` is on) is
asked with ``user@domain``, or the bare user when the client gave no domain.
Local checks run in worker threads (scrypt is slow and memory-hungry) and
fallback checks over their own connections, each kind bounded by its own
semaphore; every attempt is padded in time so that failures and successes
look alike. An identity with no user behind it (unknown domain, unknown or
receive-only user) takes the same local path and costs the same scrypt as a
wrong password, so that even under load its answer does not come sooner.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import random
import time
from collections.abc import Mapping
from typing import Protocol

from chasquid.confdir.userdb import UserDB
from chasquid.errors import ChasquidError
from chasquid.normalize import (
    NormalizationError,
    domain_to_ascii,
    normalize_domain,
    normalize_user,
    valid_hostname,
)

MECHANISMS = ("PLAIN", "LOGIN")
MIN_DURATION = 0.1


class AuthDecodeError(ChasquidError):
    """The client's AUTH response cannot be decoded (reply 501 5.5.2)."""


class AuthBackendError(ChasquidError):
    """The credentials could not be checked (reply 454 4.7.0)."""


class UserChecker(Protocol):
    """What AUTH needs from a domain's user database."""

    def authenticate(self, user: str, password: str) -> bool:
        """Whether the password is right for a user allowed to log in (blocking)."""
        ...


class FallbackChecker(Protocol):
    """What AUTH needs from the fallback authenticator (smtpsrv.dovecot.DovecotAuth)."""

    async def authenticate(self, user: str, password: str) -> bool:
        """Whether the password is right; raises ChasquidError when it cannot tell."""
        ...


#: Fallback checks in flight at once: each holds a connection to Dovecot for at most
#: its exchange bound, and Dovecot itself delays failures (auth_failure_delay).
MAX_FALLBACK_CONCURRENT = 16


def b64decode(text: str) -> bytes:
    """Strict standard base64 with padding; ``*`` (cancel) and ``=`` are errors."""
    if text == "*":
        raise AuthDecodeError("authentication cancelled by the client")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as e:
        raise AuthDecodeError(f"invalid base64: {e}") from None
    if not raw:
        raise AuthDecodeError("empty response")
    return raw


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthDecodeError(f"{what} is not valid UTF-8") from None


def decode_plain(response: str) -> tuple[str, str]:
    """Decode a PLAIN response into (identity, password)."""
    parts = b64decode(response).split(b"\x00", 2)
    if len(parts) < 3:
        raise AuthDecodeError("response must have 3 NUL-separated parts")
    authzid, authcid = _utf8(parts[0], "authzid"), _utf8(parts[1], "authcid")
    if authzid and authcid and authzid != authcid:
        raise AuthDecodeError("authzid and authcid differ")
    identity = authcid or authzid
    if not identity:
        raise AuthDecodeError("empty identity")
    return identity, _utf8(parts[2], "password")


def decode_login_field(response: str, what: str) -> str:
    """Decode one LOGIN step (user name or password)."""
    return _utf8(b64decode(response), what)


def split_identity(identity: str) -> tuple[str, str]:
    """Normalized (user, domain) of an identity; no ``@`` gives an empty domain.

    Refused before anything is logged or looked up: identities with spaces
    or control characters (they end up in the mail log and in lookups of
    other backends), and domains that are not valid host names.
    """
    if any(ch == " " or not ch.isprintable() for ch in identity):
        # str.isprintable is False for every control, format and separator
        # character except the ASCII space, and for lone surrogates.
        raise AuthDecodeError("the identity contains spaces or control characters")
    user, _, domain = identity.partition("@")
    try:
        nuser = normalize_user(user)
        ndomain = normalize_domain(domain) if domain else ""
        if ndomain and not valid_hostname(domain_to_ascii(ndomain)):
            raise NormalizationError("the domain is not a valid host name")
    except NormalizationError as e:
        raise AuthDecodeError(str(e)) from None
    return nuser, ndomain


# The users of an unknown domain: none, checked at the cost of a real check.
_NO_USERS: UserChecker = UserDB()


class Authenticator:
    """Checks credentials against the per-domain user databases, then the fallback."""

    def __init__(
        self,
        max_concurrent: int | None = None,
        *,
        fallback: FallbackChecker | None = None,
        max_fallback_concurrent: int = MAX_FALLBACK_CONCURRENT,
    ) -> None:
        self._sem = asyncio.Semaphore(max_concurrent or 2 * (os.cpu_count() or 1))
        self.fallback = fallback
        self._fallback_sem = asyncio.Semaphore(max_fallback_concurrent)

    async def authenticate(
        self, users: Mapping[str, UserChecker], user: str, domain: str, password: str
    ) -> bool:
        """True if ``user@domain`` has that password; padded to at least ~100 ms.

        AuthBackendError when a backend that had to be asked could not answer.
        """
        start = time.monotonic()
        try:
            db = users.get(domain, _NO_USERS)
            async with self._sem:
                try:
                    if await asyncio.to_thread(db.authenticate, user, password):
                        return True
                except (ChasquidError, OSError) as e:
                    raise AuthBackendError(str(e)) from None
            if self.fallback is None:
                return False
            async with self._fallback_sem:
                try:
                    return await self.fallback.authenticate(
                        f"{user}@{domain}" if domain else user, password
                    )
                except (ChasquidError, OSError) as e:
                    raise AuthBackendError(str(e)) from None
        finally:
            remaining = MIN_DURATION - (time.monotonic() - start)
            if remaining > 0:
                # Randomness hides how long the real check took.
                await asyncio.sleep(remaining * (1 + random.uniform(0, 0.2)))
