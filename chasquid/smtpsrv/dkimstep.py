"""Reception's DKIM step: sign what our users send, verify what arrives.

Authenticated mail is signed with every key of the envelope sender's domain
(none: unsigned, no error); anything else is verified, which never rejects.
Signing runs in a thread: dkimpy's RSA is pure Python (about 20 ms per
RSA-2048 signature, 95 ms for RSA-3072), and large bodies take a while to
hash; a thread keeps other sessions served meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from chasquid.confdir.dkimkeys import DKIMKey, KeyAlgorithm
from chasquid.errors import ChasquidError
from chasquid.mailauth import dkimsign, dkimverify
from chasquid.telemetry import metrics
from chasquid.telemetry.metrics import Counters

log = logging.getLogger("chasquid.smtpsrv")

#: Ed25519-only signing of messages up to this size stays on the loop (tens of microseconds).
INLINE_SIGN_BYTES = 64 * 1024


class SigningFailed(ChasquidError):
    """The message could not be signed; the session answers 451 and keeps nothing."""


async def sign(message: bytes, keys: Sequence[DKIMKey], counters: Counters) -> bytes:
    """The DKIM-Signature fields to prepend to message (LF line ends), last key's on top.

    No keys: nothing to add. Raises SigningFailed (logged and counted).
    """
    if not keys:
        return b""
    cheap = len(message) <= INLINE_SIGN_BYTES and all(
        k.algorithm is KeyAlgorithm.ED25519 for k in keys
    )
    try:
        if cheap:
            fields = dkimsign.sign(message, keys)
        else:
            fields = await asyncio.to_thread(dkimsign.sign, message, keys)
    except dkimsign.SigningError as e:
        counters.inc(metrics.DKIM_SIGN_ERRORS)
        log.error("DKIM signing failed for %s: %s", keys[0].domain, e)
        raise SigningFailed(str(e)) from None
    counters.inc(metrics.DKIM_SIGNED)
    return b"".join(reversed(fields))


async def verify(
    message: bytes, counters: Counters, lookup: dkimverify.KeyLookup | None = None
) -> list[str]:
    """Verify message's signatures; the `;dkim=` lines for Authentication-Results."""
    result = await dkimverify.verify(message, lookup=lookup)
    if result.error is not None:
        counters.inc(metrics.DKIM_VERIFY_ERRORS)
        return []
    counters.inc(metrics.DKIM_VERIFY_FOUND if result.found else metrics.DKIM_VERIFY_NOT_FOUND)
    if result.valid:
        counters.inc(metrics.DKIM_VERIFY_VALID)
    return result.lines()
