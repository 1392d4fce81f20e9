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
from chasquid.daemon.telemetry import metrics
from chasquid.daemon.telemetry.metrics import Counters
from chasquid.errors import ChasquidError
from chasquid.mailauth import dkimsign, dkimverify
from chasquid.msgbody import Body

log = logging.getLogger("chasquid.smtpsrv")

#: Ed25519-only signing of messages up to this size stays on the loop (tens of microseconds).
INLINE_SIGN_BYTES = 64 * 1024


class SigningFailed(ChasquidError):
    """The message could not be signed; the session answers 451 and keeps nothing."""


async def sign(section: bytes, body: Body, keys: Sequence[DKIMKey], counters: Counters) -> bytes:
    """The DKIM-Signature fields to prepend to a message (LF line ends), last key's on top.

    The message is its header section and its body, which is hashed as it
    is read from disk (in a thread) unless small and in memory. No keys:
    nothing to add. Raises SigningFailed (logged and counted).
    """
    if not keys:
        return b""
    small = body.in_memory() and len(section) + body.size <= INLINE_SIGN_BYTES
    cheap = small and all(k.algorithm is KeyAlgorithm.ED25519 for k in keys)
    try:
        if cheap:
            fields = dkimsign.sign_parts(section, body.read(), keys)
        else:
            fields = await asyncio.to_thread(dkimsign.sign_parts, section, body.pieces, keys)
    except dkimsign.SigningError as e:
        counters.inc(metrics.DKIM_SIGN_ERRORS)
        log.error("DKIM signing failed for %s: %s", keys[0].domain, e)
        raise SigningFailed(str(e)) from None
    counters.inc(metrics.DKIM_SIGNED)
    return b"".join(reversed(fields))


async def verify(
    section: bytes, body: Body, counters: Counters, lookup: dkimverify.KeyLookup | None = None
) -> list[str]:
    """Verify a message's signatures; the `;dkim=` lines for Authentication-Results.

    The body is read (from disk, in a thread) only if a signature needs its hash.
    """
    result = await dkimverify.verify_parts(
        section,
        body.read() if body.in_memory() else body.pieces,
        lookup=lookup,
        offload=len(section) + body.size > dkimverify.OFFLOAD_BYTES,
    )
    if result.error is not None:
        counters.inc(metrics.DKIM_VERIFY_ERRORS)
        return []
    counters.inc(metrics.DKIM_VERIFY_FOUND if result.found else metrics.DKIM_VERIFY_NOT_FOUND)
    if result.valid:
        counters.inc(metrics.DKIM_VERIFY_VALID)
    return result.lines()
