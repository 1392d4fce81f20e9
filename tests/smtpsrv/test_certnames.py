"""certnames reads the names SNI needs straight from DER: checked against cryptography."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from chasquid.daemon.smtpsrv.certnames import certificate_names, first_pem_certificate

KEY = ec.generate_private_key(ec.SECP256R1())


def make_cert(
    subject: list[x509.NameAttribute[str]], sans: list[x509.GeneralName] | None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")]))
        .public_key(KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(KEY, hashes.SHA256())


def expected(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return tuple(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(a.value) for a in attrs)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


CN = NameOID.COMMON_NAME
CASES = {
    "san dns names": ([x509.NameAttribute(CN, "ignored.example")], ["a.example", "*.b.example"]),
    "san without dns names": ([x509.NameAttribute(CN, "cn.example")], []),
    "common name only": ([x509.NameAttribute(CN, "mail.example.com")], None),
    "two common names": ([x509.NameAttribute(CN, "a.example"), x509.NameAttribute(CN, "b")], None),
    "printable string": (
        [x509.NameAttribute(CN, "p.example", x509.name._ASN1Type.PrintableString)],
        None,
    ),
    "no common name": ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org")], None),
}


@pytest.mark.parametrize("case", CASES)
def test_names_match_cryptography(case: str) -> None:
    subject, dns = CASES[case]
    sans: list[x509.GeneralName] | None = None
    if dns is not None:
        sans = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = make_cert(subject, sans)
    assert certificate_names(der(cert)) == expected(cert)


def test_first_certificate_of_a_chain() -> None:
    leaf = make_cert([x509.NameAttribute(CN, "leaf")], [x509.DNSName("leaf.example")])
    ca = make_cert([x509.NameAttribute(CN, "ca")], [x509.DNSName("ca.example")])
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca))
    assert certificate_names(first_pem_certificate(pem)) == ("leaf.example",)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.from_regex(r"\A[a-z0-9]{1,20}(\.[a-z0-9]{1,20}){0,3}\Z"), max_size=5),
    # At most 16 characters: cryptography refuses a common name over 64 UTF-8 bytes.
    st.text(min_size=1, max_size=16).filter(lambda s: "\x00" not in s),
)
def test_generated_certificates(dns: list[str], cn: str) -> None:
    # A SubjectAlternativeName must hold at least one name (cryptography 51 refuses an
    # empty one): with no DNS names generated, an IP address stands in, which still
    # leaves the certificate without DNS names.
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns] or [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    ]
    for sans in (names, None):
        cert = make_cert([x509.NameAttribute(CN, cn)], sans)
        assert certificate_names(der(cert)) == expected(cert)


def test_damaged_input_raises_value_error_only() -> None:
    data = der(make_cert([x509.NameAttribute(CN, "x")], [x509.DNSName("x.example")]))
    for n in range(len(data)):
        with pytest.raises(ValueError):
            certificate_names(data[:n])
    for bad in (b"", b"\x30", b"\x30\x84\xff\xff\xff\xff", b"\x1f\x00", b"\x30\x00"):
        with pytest.raises(ValueError):
            certificate_names(bad)
    with pytest.raises(ValueError, match="no PEM certificate"):
        first_pem_certificate(b"-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="bad base64"):
        first_pem_certificate(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")


@given(st.binary(max_size=300))
def test_random_bytes_raise_value_error_only(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        certificate_names(data)
