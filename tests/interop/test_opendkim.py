"""DKIM against independent implementations: OpenDKIM verifies what we sign, we verify theirs.

OpenDKIM (opendkim-testmsg) signs with rsa-sha1 by default, which RFC 8301
forbids, so messages signed elsewhere come from Debian's python3-dkim
``dkimsign``, a separate program on the system Python.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers.dkimtest import dkimpy_sign, opendkim_verify, port53_dns, write_keys, zone_for

from chasquid.confdir.dkimkeys import DKIMKey
from chasquid.mailauth import dkimsign
from chasquid.mailauth.dkimverify import Verification, fixed_lookup, verify

MESSAGE = (
    b"From: Ana <ana@example.com>\n"
    b"To: bob@example.org\n"
    b"Cc: carla@example.net\n"
    b"Subject: =?utf-8?q?ma=C3=B1ana?=\n"
    b"Date: Tue, 03 Jun 2025 10:11:12 +0200\n"
    b"Message-ID: <interop@example.com>\n"
    b"MIME-Version: 1.0\n"
    b"\n"
    b"Tabs\tand  spaces   \n"
    b"\n"
    b".leading dot\n"
    b"\n"
    b"\n"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DKIMKey]:
    specs = {"rsa": ("rsa1", "rsa"), "ed25519": ("ed1", "ed25519")}
    return write_keys(tmp_path_factory.mktemp("keys"), "example.com", specs)


@pytest.mark.parametrize("algos", [["rsa"], ["ed25519"], ["rsa", "ed25519"]])
def test_opendkim_verifies_our_signatures(
    keys: dict[str, DKIMKey], tmp_path: Path, algos: list[str]
) -> None:
    chosen = [keys[a] for a in algos]
    signed = b"".join(reversed(dkimsign.sign(MESSAGE, chosen))) + MESSAGE
    with port53_dns(zone_for(chosen), tmp_path) as resolv:
        ok = opendkim_verify(signed, resolv)
        assert ok.returncode == 0, ok.stderr
        assert ok.stderr == b""
        bad = opendkim_verify(signed.replace(b"leading dot", b"leading dog"), resolv)
        assert bad.returncode != 0
        assert b"signature" in bad.stderr.lower()


def ours(message: bytes, key: DKIMKey) -> Verification:
    return asyncio.run(verify(message, lookup=fixed_lookup([key.dns_value().encode()])))


@pytest.mark.parametrize("algo", ["rsa", "ed25519"])
@pytest.mark.parametrize("canon", ["relaxed", "simple"])
def test_we_verify_dkimsign_signatures(
    keys: dict[str, DKIMKey], tmp_path: Path, algo: str, canon: str
) -> None:
    key = keys[algo]
    signed = dkimpy_sign(MESSAGE, key, tmp_path, canon)
    assert signed.startswith(b"DKIM-Signature:")
    assert [r.result for r in ours(signed, key).results] == ["pass"]
    tampered_body = signed.replace(b"Tabs", b"Tab")
    assert [r.result for r in ours(tampered_body, key).results] == ["fail"]
    tampered_header = signed.replace(b"Subject: =?utf-8?q?ma", b"Subject: =?utf-8?q?MA")
    assert [r.result for r in ours(tampered_header, key).results] == ["fail"]
