"""DKIM signing keys: the `domains/<domain>/dkim:<selector>.pem` files, loaded as one snapshot.

Each file holds one PEM block of type `PRIVATE KEY` (PKCS#8) with an RSA key
(at least 1024 bits) or an Ed25519 key (RFC 8463). Keys are parsed here into
what dkimpy signs with, without importing cryptography: the daemon stays
about 9 MiB smaller, and the PKCS#8 wrapper is a few DER elements.

The daemon loads keys with the domains (start-up, SIGHUP, periodic reload):
a key that fails to load is fatal at start-up and keeps the previous snapshot
at a reload.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from chasquid.errors import ChasquidError, os_reason
from chasquid.normalize import domain_to_ascii

KEY_PREFIX = "dkim:"
KEY_SUFFIX = ".pem"
#: Smallest RSA modulus a verifier must accept (RFC 8301 §3.2); shorter keys are refused.
MIN_RSA_BITS = 1024
#: A DNS TXT character-string holds at most 255 octets (RFC 1035 §3.3).
TXT_STRING_MAX = 255

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([^-\r\n]*)-----\r?\n(.*?)-----END \1-----", re.DOTALL | re.IGNORECASE
)
_PEM_BEGIN = re.compile(rb"-----BEGIN ([^-\r\n]*)-----")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")

# DER tags and the algorithm identifiers a PKCS#8 key may name.
_INTEGER, _BIT_STRING, _OCTET_STRING, _NULL, _OID, _SEQUENCE = 0x02, 0x03, 0x04, 0x05, 0x06, 0x30
_OID_RSA = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1
_OID_ED25519 = bytes.fromhex("2b6570")  # 1.3.101.112
_OTHER_KEY_TYPES = {
    bytes.fromhex("2b6571"): "Ed448",
    bytes.fromhex("2b656e"): "X25519",
    bytes.fromhex("2b656f"): "X448",
    bytes.fromhex("2a8648ce3d0201"): "ECDSA",
    bytes.fromhex("2a8648ce380401"): "DSA",
    bytes.fromhex("2a864886f70d01010a"): "RSA-PSS",
}


class DKIMKeyError(ChasquidError):
    """A DKIM key file cannot be used; the message names the file."""


class KeyAlgorithm(enum.StrEnum):
    """The key types DKIM signs with; the value is the `k=` tag of the DNS record."""

    RSA = "rsa"
    ED25519 = "ed25519"

    @property
    def signature_algorithm(self) -> str:
        """The `a=` tag of the signatures made with such a key."""
        return "rsa-sha256" if self is KeyAlgorithm.RSA else "ed25519-sha256"


@dataclass(frozen=True)
class DKIMKey:
    """One signing key of a domain.

    `public_key` is what the DNS record's `p=` carries (the DER
    SubjectPublicKeyInfo for RSA, the raw 32 bytes for Ed25519); `signer` is
    the key in the form dkimpy signs with (its RSA key mapping, or a PyNaCl
    SigningKey), kept out of repr and comparisons.
    """

    domain: str
    selector: str
    algorithm: KeyAlgorithm
    bits: int
    path: Path
    public_key: bytes = field(repr=False)
    signer: Any = field(repr=False, compare=False)

    @property
    def signing_domain(self) -> str:
        """The domain as `d=` and DNS carry it (IDNA A-labels)."""
        return domain_to_ascii(self.domain)

    def dns_name(self) -> str:
        """Where verifiers look for the public key: `<selector>._domainkey.<domain>`."""
        return f"{self.selector}._domainkey.{self.signing_domain}"

    def dns_value(self) -> str:
        """The TXT record's text: `v=DKIM1; k=<type>; p=<base64>`."""
        p = base64.b64encode(self.public_key).decode("ascii")
        return f"v=DKIM1; k={self.algorithm.value}; p={p}"


@dataclass(frozen=True)
class DKIMKeys:
    """Every domain's signing keys, in selector order; an immutable snapshot."""

    by_domain: Mapping[str, tuple[DKIMKey, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def for_domain(self, domain: str) -> tuple[DKIMKey, ...]:
        """The keys of a (normalized) domain; empty when it has none."""
        return self.by_domain.get(domain, ())

    def counts(self) -> dict[str, int]:
        """Number of keys per domain, for the start-up summary."""
        return {d: len(keys) for d, keys in self.by_domain.items()}


def selector_of(path: Path) -> str | None:
    """The selector a key file name carries (`dkim:sel1.pem` -> `sel1`), or None."""
    name = path.name
    if name.startswith(KEY_PREFIX) and name.endswith(KEY_SUFFIX):
        selector = name[len(KEY_PREFIX) : -len(KEY_SUFFIX)]
        return selector or None
    return None


def valid_selector(selector: str) -> bool:
    """Whether a selector is one or more DNS labels (RFC 6376 §3.1), as DNS can carry it."""
    return len(selector) <= 200 and all(_LABEL.fullmatch(p) for p in selector.split("."))


def key_files(directory: Path) -> list[tuple[str, Path]]:
    """(selector, path) of every `dkim:*.pem` file of a domain directory, sorted by name.

    A missing directory has none; other errors raise OSError.
    """
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        selector = selector_of(directory / name)
        if selector is not None:
            found.append((selector, directory / name))
    return found


def key_path(directory: Path, selector: str) -> Path:
    """The file of a selector in a domain directory."""
    return directory / f"{KEY_PREFIX}{selector}{KEY_SUFFIX}"


def load_key(path: Path, domain: str, selector: str) -> DKIMKey:
    """Read and parse one key file; DKIMKeyError names the file and what is wrong."""
    if not valid_selector(selector):
        raise DKIMKeyError(
            f"{path}: invalid selector {selector!r} (letters, digits and hyphens, dot-separated)"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DKIMKeyError(f"{path}: {os_reason(e)}") from None
    try:
        return parse_key(data, domain, selector, path)
    except DKIMKeyError as e:
        raise DKIMKeyError(f"{path}: {e}") from None


def load_domain_keys(domain: str, directory: Path) -> tuple[DKIMKey, ...]:
    """Every key of one domain directory, in selector order."""
    try:
        files = key_files(directory)
    except OSError as e:
        raise DKIMKeyError(f"{directory}: {os_reason(e)}") from None
    return tuple(load_key(path, domain, selector) for selector, path in files)


# ---- parsing -----------------------------------------------------------------------------


def parse_key(data: bytes, domain: str, selector: str, path: Path) -> DKIMKey:
    """A DKIMKey from the bytes of a PEM file (first block, `PRIVATE KEY`, PKCS#8)."""
    der = _first_pem_block(data)
    algorithm_oid, private = _pkcs8(der)
    if algorithm_oid == _OID_RSA:
        return _rsa_key(private, domain, selector, path)
    if algorithm_oid == _OID_ED25519:
        return _ed25519_key(private, domain, selector, path)
    name = _OTHER_KEY_TYPES.get(algorithm_oid, f"OID {_oid_text(algorithm_oid)}")
    raise DKIMKeyError(f"unsupported key type: {name} (use an RSA or Ed25519 key)")


def _first_pem_block(data: bytes) -> bytes:
    begin = _PEM_BEGIN.search(data)
    block = _PEM_BLOCK.search(data)
    if begin is None or block is None or block.start() != begin.start():
        raise DKIMKeyError("error decoding PEM block")
    kind = block.group(1).decode("ascii", "replace")
    if kind.upper() != "PRIVATE KEY":
        raise DKIMKeyError(f"unsupported block type: {kind} (expected PRIVATE KEY, PKCS#8)")
    try:
        return base64.b64decode(b"".join(block.group(2).split()), validate=True)
    except binascii.Error:
        raise DKIMKeyError("error decoding PEM block") from None


def _tlv(data: bytes, pos: int, tag: int) -> tuple[int, int]:
    """(start, end) of the value of the DER element at pos, which must have `tag`."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise DKIMKeyError("error parsing PKCS#8 private key: unexpected DER structure")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise DKIMKeyError("error parsing PKCS#8 private key: bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise DKIMKeyError("error parsing PKCS#8 private key: truncated")
    return pos, pos + length


def _pkcs8(der: bytes) -> tuple[bytes, bytes]:
    """(algorithm OID, privateKey octets) of a PKCS#8 PrivateKeyInfo (RFC 5208, RFC 5958)."""
    start, _ = _tlv(der, 0, _SEQUENCE)
    _, version_end = _tlv(der, start, _INTEGER)
    alg_start, alg_end = _tlv(der, version_end, _SEQUENCE)
    oid_start, oid_end = _tlv(der, alg_start, _OID)
    key_start, key_end = _tlv(der, alg_end, _OCTET_STRING)
    return der[oid_start:oid_end], der[key_start:key_end]


def _rsa_key(private: bytes, domain: str, selector: str, path: Path) -> DKIMKey:
    from dkim.crypto import UnparsableKeyError, parse_private_key

    try:
        parsed = parse_private_key(private)
    except (UnparsableKeyError, IndexError, ValueError):
        raise DKIMKeyError("error parsing PKCS#8 private key: bad RSA key") from None
    modulus, exponent = parsed["modulus"], parsed["publicExponent"]
    bits = modulus.bit_length()
    if bits < MIN_RSA_BITS:
        raise DKIMKeyError(f"RSA key of {bits} bits is too short (at least {MIN_RSA_BITS})")
    public = _der(
        _SEQUENCE,
        _der(_SEQUENCE, _der(_OID, _OID_RSA) + _der(_NULL, b""))
        + _der(_BIT_STRING, b"\x00" + _der(_SEQUENCE, _der_int(modulus) + _der_int(exponent))),
    )
    return DKIMKey(domain, selector, KeyAlgorithm.RSA, bits, path, public, parsed)


def _ed25519_key(private: bytes, domain: str, selector: str, path: Path) -> DKIMKey:
    import nacl.signing

    # RFC 8410 §7: the privateKey octets are themselves an OCTET STRING of the seed.
    start, end = _tlv(private, 0, _OCTET_STRING)
    seed = private[start:end]
    if len(seed) != 32:
        raise DKIMKeyError("error parsing PKCS#8 private key: bad Ed25519 key")
    signer = nacl.signing.SigningKey(seed)
    public = bytes(signer.verify_key)
    return DKIMKey(domain, selector, KeyAlgorithm.ED25519, 256, path, public, signer)


def _der(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + value


def _der_int(n: int) -> bytes:
    # Two's complement, so a leading 1 bit gets a zero octet in front.
    return _der(_INTEGER, n.to_bytes(n.bit_length() // 8 + 1, "big"))


def _oid_text(oid: bytes) -> str:
    if not oid:
        return "?"
    parts = [str(oid[0] // 40), str(oid[0] % 40)]
    value = 0
    for byte in oid[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(str(value))
            value = 0
    return ".".join(parts)


# ---- the DNS record ----------------------------------------------------------------------


def txt_strings(text: str) -> list[str]:
    """A TXT record's text cut into character-strings of at most 255 octets (ASCII text)."""
    return [text[i : i + TXT_STRING_MAX] for i in range(0, len(text), TXT_STRING_MAX)] or [""]


def dns_record_line(key: DKIMKey) -> str:
    """The record to publish, zone-file style: name, TXT, then the quoted strings."""
    strings = " ".join(f'"{s}"' for s in txt_strings(key.dns_value()))
    return f"{key.dns_name()}\tTXT\t{strings}"
