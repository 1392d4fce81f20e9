"""DKIM signing (RFC 6376, RFC 8463) of a message with a domain's keys, over dkimpy.

Signatures are `c=relaxed/relaxed`, without `l=` (a body length lets anyone
append to a signed message), and sign the headers of `SIGNED_HEADERS` once
per occurrence, plus one more entry for each of `OVERSIGNED`, so a copy of
those fields added later breaks the signature instead of being shown as
signed. dkimpy builds the DKIM-Signature field, hashes the headers and signs;
the body hash comes from `message.body_hash`, computed once for all keys.

dkimpy's RSA is pure Python: a signature costs about 20 ms with a 2048-bit
key and 95 ms with a 3072-bit one (bench/README.md), so callers on an event
loop run `sign` in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence

import dkim
from dkim.canonicalization import CanonicalizationPolicy

from chasquid.confdir.dkimkeys import DKIMKey
from chasquid.errors import ChasquidError
from chasquid.mailauth import message as msg

#: Header fields signed once per occurrence, in this order.
SIGNED_HEADERS = (
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "resent-date",
    "resent-from",
    "resent-to",
    "resent-cc",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
    "message-id",
)
#: Fields signed one extra time, so that none can be added without breaking the signature.
OVERSIGNED = ("from", "subject", "date", "to", "cc", "message-id")

_POLICY = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
# dkimpy folds the field at spaces; a long placeholder makes the unsigned and
# the signed field fold alike before b= (the signature covers the former).
_B_PLACEHOLDER = b"0" * 60


class SigningError(ChasquidError):
    """A message could not be signed (its header section, or a key dkimpy rejects)."""


def signed_header_names(fields: Sequence[Sequence[bytes]]) -> list[bytes]:
    """The `h=` list for a message with these header fields (names lower-cased)."""
    counts: dict[bytes, int] = {}
    for name, _ in fields:
        lower = name.rstrip(b" \t").lower()
        counts[lower] = counts.get(lower, 0) + 1
    names = []
    for signed in SIGNED_HEADERS:
        encoded = signed.encode()
        names.extend([encoded] * counts.get(encoded, 0))
    names.extend(o.encode() for o in OVERSIGNED)
    return names


def sign(
    message: bytes, keys: Sequence[DKIMKey], *, now: float | None = None, linesep: bytes = b"\n"
) -> list[bytes]:
    """`DKIM-Signature:` fields for message (LF line ends), one per key, in key order.

    Each field ends with `linesep`, its continuation lines too. Prepending
    them one by one leaves the last key's signature on top, as chasquid does.
    Raises SigningError.
    """
    parts = msg.split(message)
    return sign_parts(
        message[: parts.header_end], message[parts.body_start :], keys, now=now, linesep=linesep
    )


def sign_parts(
    section: bytes,
    body: msg.BodySource,
    keys: Sequence[DKIMKey],
    *,
    now: float | None = None,
    linesep: bytes = b"\n",
) -> list[bytes]:
    """``sign`` for a message given as its header section and its body (bytes, or read
    piece by piece from disk: blocking, for a thread)."""
    if not keys:
        return []
    try:
        fields = msg.header_fields(section)
    except msg.MessageFormatError as e:
        raise SigningError(f"cannot sign: {e}") from None
    include = signed_header_names(fields)
    body_hash = msg.body_hash(body, relaxed=True)
    bh = base64.b64encode(body_hash.digest)
    timestamp = str(int(time.time() if now is None else now)).encode()
    return [_sign_one(fields, include, bh, timestamp, key, linesep) for key in keys]


def _sign_one(
    fields: list[list[bytes]],
    include: list[bytes],
    bh: bytes,
    timestamp: bytes,
    key: DKIMKey,
    linesep: bytes,
) -> bytes:
    algorithm = key.algorithm.signature_algorithm.encode()
    signer = dkim.DKIM(signature_algorithm=algorithm, linesep=linesep)
    # dkimpy's own sign() would canonicalize the whole body with its slow
    # regular expressions: it is given the parsed header fields and the tags,
    # body hash included, and builds, hashes and signs the field itself.
    signer.headers = fields
    signer.hasher = hashlib.sha256
    tags = [
        (b"v", b"1"),
        (b"a", algorithm),
        (b"c", _POLICY.to_c_value()),
        (b"d", key.domain.encode("ascii")),
        (b"s", key.selector.encode("ascii")),
        (b"t", timestamp),
        (b"h", b" : ".join(include)),
        (b"bh", bh),
        (b"b", _B_PLACEHOLDER),
    ]
    try:
        value = signer.gen_header(tags, include, _POLICY, b"DKIM-Signature", key.signer)
    except Exception as e:  # dkimpy raises its own errors and plain ones (a key it cannot use)
        raise SigningError(f"signing with {key.path}: {e!r}") from None
    return b"DKIM-Signature: " + bytes(value)
