"""Every listener offers exactly Mozilla's intermediate TLS profile: sslscan and openssl s_client.

The real daemon is scanned on its three listeners (STARTTLS on smtp and
submission, implicit TLS on submission_tls), with an ECDSA certificate and
with an RSA one: TLS 1.2 and 1.3 only, the AEAD ECDHE suites of the
certificate's kind, the X25519/P-256/P-384 groups, no renegotiation. Then
openssl s_client tries what the profile leaves out (TLS 1.0 and 1.1, a CBC
suite, RSA key exchange) and must fail, while a profile suite connects.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from helpers.daemon import DaemonFactory, Setup, make_setup, require_program, start

from chasquid.tlsprofile import INTERMEDIATE_CIPHERS

TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
GROUPS = {"x25519", "secp256r1 (NIST P-256)", "secp384r1 (NIST P-384)"}


@dataclass(frozen=True)
class Scan:
    """What sslscan found on one port."""

    protocols: frozenset[str]
    ciphers: dict[str, frozenset[str]]  # protocol -> accepted suites
    groups: frozenset[str]
    renegotiation: bool


def sslscan(port: int, *, starttls: bool) -> Scan:
    program = require_program("sslscan")
    args = [program, "--no-colour", "--xml=-", "--show-ciphers"]
    if starttls:
        args.append("--starttls-smtp")
    proc = subprocess.run([*args, f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    test = ET.fromstring(proc.stdout).find("ssltest")
    assert test is not None, proc.stdout
    protocols = frozenset(
        f"{p.get('type')}{p.get('version')}"
        for p in test.iter("protocol")
        if p.get("enabled") == "1"
    )
    ciphers: dict[str, set[str]] = {}
    for c in test.iter("cipher"):
        ciphers.setdefault(str(c.get("sslversion")), set()).add(str(c.get("cipher")))
    reneg = test.find("renegotiation")
    return Scan(
        protocols=protocols,
        ciphers={k: frozenset(v) for k, v in ciphers.items()},
        groups=frozenset(str(g.get("name")) for g in test.iter("group")),
        renegotiation=reneg is not None and reneg.get("supported") == "1",
    )


def handshake(port: int, *options: str, starttls: bool) -> bool:
    """Whether openssl s_client completes a handshake with these options."""
    program = require_program("openssl")
    args = [program, "s_client", "-connect", f"127.0.0.1:{port}", "-brief", *options]
    if starttls:
        args += ["-starttls", "smtp"]
    proc = subprocess.run(args, input="", capture_output=True, text=True, timeout=60)
    established = "CONNECTION ESTABLISHED" in proc.stdout + proc.stderr
    assert established == (proc.returncode == 0), proc.stdout + proc.stderr
    return established


def _expected_tls12(kind: str) -> frozenset[str]:
    return frozenset(c for c in INTERMEDIATE_CIPHERS if c.startswith(f"ECDHE-{kind}-"))


def _check_port(port: int, *, starttls: bool, kind: str) -> None:
    scan = sslscan(port, starttls=starttls)
    assert scan.protocols == {"tls1.2", "tls1.3"}
    assert scan.ciphers == {"TLSv1.2": _expected_tls12(kind), "TLSv1.3": TLS13_SUITES}
    assert scan.groups <= GROUPS and "x25519" in scan.groups, scan.groups
    assert not scan.renegotiation

    weak = "DEFAULT:@SECLEVEL=0"  # so that a refusal is the server's, not the client's
    assert not handshake(port, "-tls1", "-cipher", weak, starttls=starttls)
    assert not handshake(port, "-tls1_1", "-cipher", weak, starttls=starttls)
    assert not handshake(
        port, "-tls1_2", "-cipher", f"ECDHE-{kind}-AES256-SHA384", starttls=starttls
    )
    assert not handshake(port, "-tls1_2", "-cipher", f"ECDHE-{kind}-AES128-SHA", starttls=starttls)
    assert not handshake(port, "-tls1_2", "-cipher", "AES128-GCM-SHA256", starttls=starttls)
    assert handshake(
        port, "-tls1_2", "-cipher", f"ECDHE-{kind}-AES128-GCM-SHA256", starttls=starttls
    )
    assert handshake(port, "-tls1_3", starttls=starttls)


def test_every_listener_offers_the_intermediate_profile(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    s = chasquid_setup
    chasquid_daemon()
    _check_port(s.smtp_port, starttls=True, kind="ECDSA")
    _check_port(s.submission_port, starttls=True, kind="ECDSA")
    _check_port(s.submission_tls_port, starttls=False, kind="ECDSA")


@pytest.mark.parametrize("starttls", [True, False], ids=["starttls", "implicit"])
def test_rsa_certificate_gets_the_rsa_suites(tmp_path: Path, starttls: bool) -> None:
    setup = make_setup(tmp_path)
    leaf = setup.ca.issue_cert(setup.domain, "localhost", key_type=trustme.KeyType.RSA)
    cert_dir = setup.config_dir / "certs" / setup.domain
    (cert_dir / "fullchain.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(cert_dir / "privkey.pem"))
    daemon = start(setup)
    try:
        port = setup.smtp_port if starttls else setup.submission_tls_port
        _check_port(port, starttls=starttls, kind="RSA")
    finally:
        daemon.stop()
