"""The DNS names a certificate is for, read from its DER encoding (RFC 5280 §4.1).

SNI selection needs only the leaf certificate's subjectAltName DNS names (or,
without that extension, its subject common names). Reading them takes a few
dozen lines of DER walking; importing cryptography's x509 for it added
9.7 MiB to every daemon's resident memory.
"""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"

# DER encodings of the object identifiers we look for.
_OID_COMMON_NAME = bytes.fromhex("550403")  # 2.5.4.3
_OID_SUBJECT_ALT_NAME = bytes.fromhex("551d11")  # 2.5.29.17

_SEQUENCE, _SET, _OID, _BOOLEAN, _OCTET_STRING = 0x30, 0x31, 0x06, 0x01, 0x04
_EXTENSIONS = 0xA3  # [3] EXPLICIT in TBSCertificate
_DNS_NAME = 0x82  # [2] IMPLICIT IA5String in GeneralName
# Directory string types a common name may use, with their encodings.
_STRINGS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString, as everyone reads it
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}


def first_pem_certificate(pem: bytes) -> bytes:
    """The DER bytes of the first certificate of a PEM file (the leaf of a fullchain)."""
    start = pem.find(_BEGIN)
    end = pem.find(_END, start)
    if start < 0 or end < 0:
        raise ValueError("no PEM certificate found")
    try:
        return base64.b64decode(b"".join(pem[start + len(_BEGIN) : end].split()), validate=True)
    except binascii.Error as e:
        raise ValueError(f"bad base64 in PEM certificate: {e}") from None


def certificate_names(der: bytes) -> tuple[str, ...]:
    """The certificate's DNS names: those of subjectAltName, else the subject's common names.

    Raises ValueError on a malformed certificate.
    """
    cert, _ = _read(der, 0)
    parts = _items(_only(cert, _SEQUENCE))
    if not parts:
        raise ValueError("empty certificate")
    fields = _items(_only(parts[0], _SEQUENCE))
    # version ([0], optional), serial, signature algorithm, issuer, validity, subject.
    at = 1 if fields and fields[0].tag == 0xA0 else 0
    if len(fields) < at + 6:
        raise ValueError("truncated TBSCertificate")
    subject = fields[at + 4]
    for field in fields[at + 6 :]:
        if field.tag == _EXTENSIONS:
            extensions, _ = _read(field.body, 0)
            san = _subject_alt_name(_only(extensions, _SEQUENCE))
            if san is not None:
                return san
    return _common_names(_only(subject, _SEQUENCE))


def _subject_alt_name(extensions: bytes) -> tuple[str, ...] | None:
    for ext in _items(extensions):
        parts = _items(_only(ext, _SEQUENCE))
        if not parts or parts[0].tag != _OID:
            raise ValueError("extension without an identifier")
        if parts[0].body != _OID_SUBJECT_ALT_NAME:
            continue
        value = parts[-1]
        if value.tag != _OCTET_STRING:
            raise ValueError("extension value is not an OCTET STRING")
        general_names, _ = _read(value.body, 0)
        names = _items(_only(general_names, _SEQUENCE))
        return tuple(n.body.decode("ascii") for n in names if n.tag == _DNS_NAME)
    return None


def _common_names(subject: bytes) -> tuple[str, ...]:
    names = []
    for rdn in _items(subject):
        for atv in _items(_only(rdn, _SET)):
            parts = _items(_only(atv, _SEQUENCE))
            if len(parts) != 2 or parts[0].tag != _OID:
                raise ValueError("malformed name attribute")
            if parts[0].body == _OID_COMMON_NAME:
                encoding = _STRINGS.get(parts[1].tag)
                if encoding is None:
                    raise ValueError("common name is not a string")
                names.append(parts[1].body.decode(encoding))
    return tuple(names)


# --- DER


class _Element(NamedTuple):
    """One DER element: its tag and its content octets."""

    tag: int
    body: bytes


def _read(data: bytes, pos: int) -> tuple[_Element, int]:
    """The element starting at pos and the position after it."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER element")
    if data[pos] & 0x1F == 0x1F:
        raise ValueError("unsupported DER tag")
    length, head = data[pos + 1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + 2 + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
        head += count
    end = pos + head + length
    if end > len(data):
        raise ValueError("truncated DER element")
    return _Element(data[pos], data[pos + head : end]), end


def _only(element: _Element, tag: int) -> bytes:
    """The content of an element that must have this tag."""
    if element.tag != tag:
        raise ValueError(f"expected DER tag {tag:#x}")
    return element.body


def _items(body: bytes) -> list[_Element]:
    """The elements inside a constructed element's content, in order."""
    items, pos = [], 0
    while pos < len(body):
        item, pos = _read(body, pos)
        items.append(item)
    return items
