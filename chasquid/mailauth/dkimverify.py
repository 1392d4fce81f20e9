"""DKIM verification (RFC 6376, RFC 8301, RFC 8463) of a received message, over dkimpy.

Each of the first `MAX_SIGNATURES` DKIM-Signature fields gets one result
(RFC 8601 names): `pass`, `fail` (the signature or body hash does not
match), `permerror` (a malformed signature, an algorithm RFC 8301 forbids,
`l=` beyond the body, no key or a bad key record) or `temperror` (the key
could not be looked up now). Nothing a message carries raises: a header
section that cannot be split into fields is the only case without a result.

Keys are looked up with the project's asyncio resolver (so CHASQUID_TEST_DNS
applies), every signature's at once, each bounded by `DNS_TIMEOUT`. Parsing
and body hashing run in a thread for large messages; header sections beyond
`MAX_HEADER_BYTES` or `MAX_FIELDS` are not verified at all (a `permerror`),
which bounds dkimpy's header work.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dkim
import dns.asyncresolver
import dns.exception
import dns.resolver
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value

from chasquid.dnsconfig import make_async_resolver
from chasquid.errors import ChasquidError
from chasquid.mailauth import message as msg

PASS, FAIL, PERMERROR, TEMPERROR, NONE = "pass", "fail", "permerror", "temperror", "none"

#: Signatures evaluated per message (top to bottom); later ones are ignored.
MAX_SIGNATURES = 5
#: Seconds one key look-up may take before the signature is a temperror.
DNS_TIMEOUT = 5.0
#: Header sections larger than this, or with more fields, are not verified.
MAX_HEADER_BYTES = 256 * 1024
MAX_FIELDS = 1000
#: A signature naming more header fields than this in h= is a permerror.
MAX_SIGNED_FIELDS = 128
#: Messages larger than this are parsed and hashed in a thread.
OFFLOAD_BYTES = 128 * 1024
#: Smallest RSA key accepted (RFC 8301 §3.2).
MIN_RSA_BITS = 1024

_ALGORITHMS = {b"rsa-sha256": b"rsa", b"ed25519-sha256": b"ed25519"}
_SIGNATURE_FIELD = re.compile(rb"^dkim-signature[ \t]*:", re.IGNORECASE | re.MULTILINE)
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")
_NOT_DOMAIN = re.compile(r"[^A-Za-z0-9._-]")
_WSP = re.compile(rb"\s+")

# dkimpy logs what it rejects at ERROR; the result says it already.
_quiet = logging.getLogger("chasquid.mailauth.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


class KeyLookupError(ChasquidError):
    """A key could not be looked up; `temporary` says whether trying later may work."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


#: Looks up the TXT records of a name (`<selector>._domainkey.<domain>`); raises KeyLookupError.
KeyLookup = Callable[[str], Awaitable[list[bytes]]]


@dataclass(frozen=True)
class SignatureResult:
    """The outcome of one DKIM-Signature field.

    `domain` is its `d=` and `b12` the first 12 characters of its `b=` (both
    empty when they could not be read), as Authentication-Results reports them.
    """

    result: str
    reason: str = ""
    domain: str = ""
    b12: str = ""

    def lines(self) -> list[str]:
        """Its result in Authentication-Results, one line, or two with a reason."""
        props = []
        if self.b12:
            props.append(f"header.b={self.b12}")
        if self.domain:
            props.append(f"header.d={self.domain}")
        if self.result == PASS:
            return ["  ".join([";dkim=pass", *props])]
        first = f";dkim={self.result}  reason={_quote(self.reason)}"
        return [first, "  " + "  ".join(props)] if props else [first]


@dataclass(frozen=True)
class Verification:
    """Every evaluated signature of a message, in header order.

    No results means no signature; `error` is set (and there are no results)
    when the header section could not be read for DKIM.
    """

    results: tuple[SignatureResult, ...] = ()
    error: str | None = None

    @property
    def found(self) -> bool:
        """At least one signature was evaluated."""
        return bool(self.results)

    @property
    def valid(self) -> bool:
        """At least one signature passed."""
        return any(r.result == PASS for r in self.results)

    def lines(self) -> list[str]:
        """The `;dkim=...` lines of Authentication-Results (none when `error` is set)."""
        if self.error is not None:
            return []
        if not self.results:
            return [";dkim=none"]
        return [line for r in self.results for line in r.lines()]


def dns_lookup(
    resolver: dns.asyncresolver.Resolver | None = None, timeout: float = DNS_TIMEOUT
) -> KeyLookup:
    """A KeyLookup through an asyncio resolver (default: the project's, test knob included)."""

    async def lookup(name: str) -> list[bytes]:
        res = resolver or make_async_resolver()
        try:
            answer = await res.resolve(
                name, "TXT", lifetime=timeout, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            raise KeyLookupError("no key for signature (NXDOMAIN)", temporary=False) from None
        except dns.exception.Timeout:
            raise KeyLookupError("key look-up timed out", temporary=True) from None
        except dns.resolver.NoNameservers:
            raise KeyLookupError("key look-up failed (server failure)", temporary=True) from None
        except dns.exception.DNSException as e:
            raise KeyLookupError(f"key look-up failed: {e}", temporary=False) from None
        if answer.rrset is None:
            raise KeyLookupError("no key for signature", temporary=False)
        return [b"".join(rdata.strings) for rdata in answer.rrset]

    return lookup


def fixed_lookup(records: Sequence[bytes]) -> KeyLookup:
    """A KeyLookup that answers every name with these records (chasquid-util dkim-verify --txt)."""

    async def lookup(name: str) -> list[bytes]:
        return list(records)

    return lookup


async def verify(
    message: bytes, *, lookup: KeyLookup | None = None, offload: bool | None = None
) -> Verification:
    """Verify the DKIM signatures of message (LF line ends).

    `offload` runs parsing and hashing in a thread (default: for messages
    over OFFLOAD_BYTES). Never raises for anything in the message.
    """
    parts = msg.split(message)
    return await verify_parts(
        message[: parts.header_end],
        message[parts.body_start :],
        lookup=lookup,
        offload=len(message) > OFFLOAD_BYTES if offload is None else offload,
    )


async def verify_parts(
    section: bytes,
    body: msg.BodySource,
    *,
    lookup: KeyLookup | None = None,
    offload: bool = True,
) -> Verification:
    """``verify`` for a message given as its header section and its body.

    A body given as a function is read from disk only if a signature needs
    its hash, in a thread whatever ``offload`` says.
    """
    offload = offload or not isinstance(body, bytes)
    prepared = await _cpu(offload, _prepare, section, body)
    if isinstance(prepared, Verification):
        return prepared
    fields, candidates = prepared
    lookup = lookup or dns_lookup()
    heavy = offload and sum(len(v) for _, v in fields) > OFFLOAD_BYTES
    results = await asyncio.gather(*(_finish(fields, c, lookup, heavy) for c in candidates))
    return Verification(tuple(results))


async def _cpu(offload: bool, fn: Callable[..., Any], *args: Any) -> Any:
    if offload:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


@dataclass(frozen=True)
class _Pending:
    """A signature whose body hash matched: its key is looked up next."""

    sig: dict[bytes, bytes]
    include: tuple[bytes, ...]
    field: tuple[bytes, bytes]
    key_name: str
    domain: str
    b12: str


_Candidate = SignatureResult | _Pending


def _prepare(
    section: bytes, body: msg.BodySource
) -> Verification | tuple[list[list[bytes]], list[_Candidate]]:
    if len(section) > MAX_HEADER_BYTES:
        return _not_verified(section, f"header section over {MAX_HEADER_BYTES} bytes")
    try:
        fields = msg.header_fields(section)
    except msg.MessageFormatError as e:
        return Verification(error=str(e))
    if len(fields) > MAX_FIELDS:
        return _not_verified(section, f"more than {MAX_FIELDS} header fields")
    signatures = [f for f in fields if f[0].lower() == b"dkim-signature"][:MAX_SIGNATURES]
    if not signatures:
        return Verification()
    hashes: dict[tuple[bool, int | None], msg.BodyHash] = {}
    candidates = []
    for idx, sig_field in enumerate(signatures):
        candidates.append(_check_signature(fields, idx, sig_field, body, hashes))
    return fields, candidates


def _not_verified(section: bytes, why: str) -> Verification:
    if _SIGNATURE_FIELD.search(section) is None:
        return Verification()
    return Verification((SignatureResult(PERMERROR, f"not verified: {why}"),))


def _check_signature(
    fields: list[list[bytes]],
    idx: int,
    sig_field: list[bytes],
    body: msg.BodySource,
    hashes: dict[tuple[bool, int | None], msg.BodyHash],
) -> _Candidate:
    """The signature's own checks and its body hash; a result, or what to look the key up for."""
    domain, b12 = _identity(sig_field[1])
    verifier = dkim.DKIM(logger=_quiet)
    verifier.headers = fields
    try:
        prep = verifier.verify_headerprep(idx)
    except Exception as e:  # dkimpy raises several kinds for malformed tag lists
        return SignatureResult(PERMERROR, f"malformed signature: {e}", domain, b12)
    if not prep:
        return SignatureResult(PERMERROR, "malformed signature", domain, b12)
    sig, include, sig_headers = prep
    algorithm = sig[b"a"]
    if algorithm not in _ALGORITHMS:
        return SignatureResult(
            PERMERROR, f"unsupported algorithm {algorithm.decode('ascii', 'replace')}", domain, b12
        )
    if b"from" not in include:
        return SignatureResult(PERMERROR, "From is not signed (h=)", domain, b12)
    if len(include) > MAX_SIGNED_FIELDS:
        return SignatureResult(
            PERMERROR, f"more than {MAX_SIGNED_FIELDS} fields in h=", domain, b12
        )
    try:
        policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError:
        return SignatureResult(PERMERROR, "unknown canonicalization (c=)", domain, b12)
    limit = int(sig[b"l"]) if b"l" in sig else None
    relaxed = policy.body_algorithm.name == b"relaxed"
    computed = hashes.get((relaxed, limit))
    if computed is None:
        computed = hashes[(relaxed, limit)] = msg.body_hash(body, relaxed, limit)
    if limit is not None and limit > computed.length:
        return SignatureResult(PERMERROR, "l= is beyond the end of the body", domain, b12)
    try:
        expected = base64.b64decode(_WSP.sub(b"", sig[b"bh"]), validate=True)
    except binascii.Error:
        return SignatureResult(PERMERROR, "bh= is not base64", domain, b12)
    if computed.digest != expected:
        got = base64.b64encode(computed.digest).decode("ascii")
        return SignatureResult(FAIL, f"body hash mismatch (computed {got})", domain, b12)
    try:
        key_name = (sig[b"s"] + b"._domainkey." + sig[b"d"]).decode("ascii")
    except UnicodeDecodeError:
        return SignatureResult(PERMERROR, "d= or s= is not ASCII", domain, b12)
    return _Pending(sig, tuple(include), tuple(sig_headers[idx]), key_name, domain, b12)


async def _finish(
    fields: list[list[bytes]], c: _Candidate, lookup: KeyLookup, heavy: bool
) -> SignatureResult:
    if isinstance(c, SignatureResult):
        return c
    try:
        records = await lookup(c.key_name)
    except KeyLookupError as e:
        return SignatureResult(TEMPERROR if e.temporary else PERMERROR, str(e), c.domain, c.b12)
    result: SignatureResult = await _cpu(heavy, _check_keys, fields, c, records)
    return result


def _check_keys(fields: list[list[bytes]], c: _Pending, records: list[bytes]) -> SignatureResult:
    """Verify the header signature with each key record; pass if one verifies (RFC 6376 §6.1.3)."""
    reason = "no key for signature"
    usable = False
    for record in records:
        try:
            pk, keysize, ktag, service_tlsrpt = _usable_key(c, record)
        except _Unusable as e:
            reason = str(e)
            continue
        usable = True
        verifier = dkim.DKIM(logger=_quiet, minkey=MIN_RSA_BITS)
        verifier.headers = fields
        verifier.pk, verifier.keysize, verifier.ktag = pk, keysize, ktag
        verifier.seqtlsrpt = service_tlsrpt
        # The body hash was checked already; without bh= dkimpy checks the headers only.
        sig = {k: v for k, v in c.sig.items() if k != b"bh"}
        try:
            if verifier.verify_sig_process(sig, list(c.include), c.field, None):
                return SignatureResult(PASS, "", c.domain, c.b12)
        except Exception as e:  # a key too small for its signature, a bad b=, ...
            return SignatureResult(PERMERROR, str(e), c.domain, c.b12)
        reason = "signature did not verify"
    return SignatureResult(FAIL if usable else PERMERROR, reason, c.domain, c.b12)


class _Unusable(Exception):
    """A key record that cannot verify this signature."""


def _usable_key(c: _Pending, record: bytes) -> tuple[Any, int, bytes, bool]:
    try:
        tags = parse_tag_value(record)
    except InvalidTagValueList:
        raise _Unusable("key syntax error") from None
    if not tags.get(b"p"):
        raise _Unusable("key revoked (empty p=)")
    if b"h" in tags and b"sha256" not in [h.strip() for h in tags[b"h"].split(b":")]:
        raise _Unusable("key does not allow sha256 (h=)")
    if b"s" in [f.strip() for f in tags.get(b"t", b"").split(b":")]:
        identity = c.sig.get(b"i", b"@" + c.sig[b"d"]).rpartition(b"@")[2]
        if identity.lower() != c.sig[b"d"].lower():
            raise _Unusable("key requires i= in d= itself (t=s)")
    try:
        pk, keysize, ktag, service_tlsrpt = dkim.evaluate_pk(c.key_name, record)
    except Exception as e:  # KeyFormatError, binascii.Error, ...
        raise _Unusable(f"bad key: {e}") from None
    if ktag != _ALGORITHMS[c.sig[b"a"]]:
        raise _Unusable("key type does not match the signature's a=")
    return pk, keysize, ktag, service_tlsrpt


def _identity(value: bytes) -> tuple[str, str]:
    """(d=, first 12 of b=) of a signature field, read leniently and made safe for a header."""
    domain = b12 = ""
    for spec in value.split(b";"):
        tag, eq, v = spec.partition(b"=")
        tag = tag.strip()
        if not eq:
            continue
        if tag == b"d" and not domain:
            text = v.strip().decode("ascii", "replace")
            domain = "" if _NOT_DOMAIN.search(text) else text
        elif tag == b"b" and not b12:
            b = _WSP.sub(b"", v)
            b12 = "" if _NOT_BASE64.search(b) else b[:12].decode("ascii")
    return domain, b12


def _quote(text: str) -> str:
    """A quoted-string for a reason: printable ASCII, `"` and `\\` escaped, 200 chars at most."""
    clean = "".join(ch if " " <= ch <= "~" else "?" for ch in text)[:200]
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'
