"""DKIM key files: loading RSA and Ed25519 keys, the errors that name the file, the DNS record."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, x25519
from helpers.dkimtest import pkcs8_pem, private_key, write_key

from chasquid.confdir.dkimkeys import (
    DKIMKeyError,
    DKIMKeys,
    KeyAlgorithm,
    dns_record_line,
    key_files,
    load_domain_keys,
    load_key,
    txt_strings,
)


def test_rsa_key_loads_with_its_public_key(tmp_path: Path) -> None:
    key = private_key("rsa", 2048)
    path = tmp_path / "dkim:sel1.pem"
    path.write_bytes(pkcs8_pem(key))
    loaded = load_key(path, "example.com", "sel1")
    assert loaded.algorithm is KeyAlgorithm.RSA
    assert loaded.bits == 2048
    assert loaded.public_key == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert loaded.algorithm.signature_algorithm == "rsa-sha256"
    assert "PRIVATE" not in repr(loaded) and "signer" not in repr(loaded)


def test_ed25519_key_loads_with_its_raw_public_key(tmp_path: Path) -> None:
    key = private_key("ed25519")
    path = tmp_path / "dkim:e.pem"
    path.write_bytes(pkcs8_pem(key))
    loaded = load_key(path, "example.com", "e")
    assert loaded.algorithm is KeyAlgorithm.ED25519
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert loaded.public_key == raw
    assert loaded.dns_value() == f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def test_dns_record_is_split_in_255_character_strings(tmp_path: Path) -> None:
    path = tmp_path / "dkim:s.pem"
    path.write_bytes(pkcs8_pem(private_key("rsa", 3072)))
    key = load_key(path, "ñandú.example", "s")
    line = dns_record_line(key)
    name, kind, strings = line.split("\t")
    assert name == "s._domainkey.xn--and-6ma2c.example"
    assert kind == "TXT"
    parts = strings.split('" "')
    assert len(parts) == 3
    assert all(len(p.strip('"')) <= 255 for p in parts)
    assert "".join(p.strip('"') for p in parts) == key.dns_value()
    assert txt_strings("a" * 510) == ["a" * 255, "a" * 255]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "error decoding PEM block"),
        (b"not a key\n", "error decoding PEM block"),
        (b"-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n", "decoding PEM"),
        (
            b"-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----\n",
            "error parsing PKCS#8 private key",
        ),
    ],
)
def test_unreadable_files_say_why(tmp_path: Path, content: bytes, message: str) -> None:
    path = _write(tmp_path / "dkim:x.pem", content)
    with pytest.raises(DKIMKeyError, match=message) as e:
        load_key(path, "example.com", "x")
    assert str(path) in str(e.value)


def test_pkcs1_block_is_an_unsupported_block_type(tmp_path: Path) -> None:
    pem = private_key("rsa").private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path = _write(tmp_path / "dkim:x.pem", pem)
    with pytest.raises(DKIMKeyError, match="unsupported block type: RSA PRIVATE KEY"):
        load_key(path, "example.com", "x")


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (ed448.Ed448PrivateKey.generate(), "Ed448"),
        (x25519.X25519PrivateKey.generate(), "X25519"),
        (ec.generate_private_key(ec.SECP256R1()), "ECDSA"),
    ],
)
def test_other_key_types_are_refused(tmp_path: Path, key: object, name: str) -> None:
    path = _write(tmp_path / "dkim:x.pem", pkcs8_pem(key))
    with pytest.raises(DKIMKeyError, match=f"unsupported key type: {name}"):
        load_key(path, "example.com", "x")


def test_short_rsa_key_is_refused(tmp_path: Path) -> None:
    pem = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512"],
        capture_output=True,
        check=True,
    ).stdout
    path = _write(tmp_path / "dkim:x.pem", pem)
    with pytest.raises(DKIMKeyError, match="512 bits is too short"):
        load_key(path, "example.com", "x")


def test_missing_file_and_bad_selector(tmp_path: Path) -> None:
    with pytest.raises(DKIMKeyError, match="no such file"):
        load_key(tmp_path / "dkim:gone.pem", "example.com", "gone")
    path = _write(tmp_path / "dkim:a b.pem", pkcs8_pem(private_key("ed25519")))
    with pytest.raises(DKIMKeyError, match="invalid selector 'a b'"):
        load_key(path, "example.com", "a b")


def test_keys_of_a_domain_in_selector_order(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    write_key(a, "a.com", "zz", "rsa")
    write_key(a, "a.com", "aa", "ed25519")
    (a / "dkim:.pem").write_text("no selector: ignored")
    (a / "users").write_text("")
    assert [s for s, _ in key_files(a)] == ["aa", "zz"]
    keys = load_domain_keys("a.com", a)
    assert [k.selector for k in keys] == ["aa", "zz"]
    assert load_domain_keys("b.com", tmp_path / "missing") == ()
    snapshot = DKIMKeys({"a.com": keys})
    assert snapshot.counts() == {"a.com": 2}
    assert snapshot.for_domain("c.com") == ()
