"""DKIM test aids: key files, their DNS zone, and two independent implementations.

OpenDKIM (Debian's opendkim-tools: ``opendkim-testmsg``) signs and verifies;
Debian's python3-dkim ``dkimsign`` signs, run as its own program with the
system Python. OpenDKIM looks keys up with the C library's resolver, which
only reads ``/etc/resolv.conf`` and only ever asks port 53: each call runs in
a private mount namespace (``unshare --mount``, root) where that file names a
test DNS server on a loopback address of its own.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from chasquid.confdir.dkimkeys import DKIMKey, key_path, load_key, txt_strings
from helpers.dns import dns_server
from helpers.requirements import unavailable

OPENDKIM_TESTMSG = "/usr/sbin/opendkim-testmsg"
DEBIAN_DKIMSIGN = "/usr/bin/dkimsign"
TIMEOUT = 60


def private_key(
    algo: str = "rsa", bits: int = 2048
) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """A new key: RSA of `bits`, or Ed25519."""
    if algo == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def pkcs8_pem(key: Any) -> bytes:
    """The key as a PKCS#8 `PRIVATE KEY` PEM block, as chasquid reads it."""
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem


def write_key(domain_dir: Path, domain: str, selector: str, algo: str = "rsa") -> DKIMKey:
    """Write a new key file `dkim:<selector>.pem` in domain_dir and return it loaded."""
    path = key_path(domain_dir, selector)
    path.write_bytes(pkcs8_pem(private_key(algo)))
    path.chmod(0o600)
    return load_key(path, domain, selector)


def write_keys(
    directory: Path, domain: str, specs: Mapping[str, tuple[str, str]]
) -> dict[str, DKIMKey]:
    """Keys by name, from {name: (selector, algorithm)}, written in directory."""
    return {name: write_key(directory, domain, sel, algo) for name, (sel, algo) in specs.items()}


def zone_for(keys: Sequence[DKIMKey]) -> dict[str, dict[str, list[Any]]]:
    """A DNS zone publishing each key's record (as strings of at most 255 characters)."""
    return {k.dns_name(): {"TXT": [txt_strings(k.dns_value())]} for k in keys}


def require_program(path: str, package: str) -> None:
    """Skip (fail in CI) unless the program exists."""
    if not os.access(path, os.X_OK):
        unavailable(f"{path} not found (Debian package {package})")


def _require_root_namespaces() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        unavailable("OpenDKIM's resolver only asks port 53: needs root and unshare(1)")


@contextmanager
def port53_dns(zone: Mapping[str, Mapping[str, Sequence[Any]]], tmp_path: Path) -> Iterator[Path]:
    """A DNS server for zone on <loopback address>:53; yields a resolv.conf naming it."""
    _require_root_namespaces()
    last_error: OSError | None = None
    for _ in range(20):
        host = f"127.53.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
        try:
            with dns_server(zone, host=host, port=53):
                resolv = tmp_path / "resolv.conf"
                resolv.write_text(f"nameserver {host}\noptions timeout:2 attempts:1\n")
                yield resolv
                return
        except OSError as e:  # the address is taken by another test
            last_error = e
    raise RuntimeError(f"no free loopback address for a DNS server on port 53: {last_error}")


def _with_resolv(resolv: Path, argv: Sequence[str]) -> list[str]:
    return [
        "unshare",
        "--mount",
        "sh",
        "-c",
        'mount --bind "$0" /etc/resolv.conf && exec "$@"',
        str(resolv),
        *argv,
    ]


def opendkim_verify(message: bytes, resolv: Path) -> subprocess.CompletedProcess[bytes]:
    """Run OpenDKIM's verifier on message; exit status 0 means every signature verified."""
    require_program(OPENDKIM_TESTMSG, "opendkim-tools")
    return subprocess.run(
        _with_resolv(resolv, [OPENDKIM_TESTMSG]),
        input=message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )


def opendkim_sign(message: bytes, key: DKIMKey) -> bytes:
    """The message signed by OpenDKIM with key's file (LF line ends)."""
    require_program(OPENDKIM_TESTMSG, "opendkim-tools")
    done = subprocess.run(
        [OPENDKIM_TESTMSG, "-d", key.signing_domain, "-s", key.selector, "-k", str(key.path)],
        input=message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),
        capture_output=True,
        timeout=TIMEOUT,
        check=True,
    )
    return done.stdout.replace(b"\r\n", b"\n")


def dkimpy_sign(message: bytes, key: DKIMKey, tmp_path: Path, canon: str = "relaxed") -> bytes:
    """The message signed by Debian's dkimsign program (LF line ends)."""
    require_program(DEBIAN_DKIMSIGN, "python3-dkim")
    key_file = key.path
    if key.algorithm.value == "ed25519":
        # dkimsign takes an Ed25519 key as the base64 of its 32-byte seed.
        key_file = tmp_path / f"{key.selector}.seed"
        key_file.write_bytes(base64.b64encode(bytes(key.signer)))
    algorithm = key.algorithm.signature_algorithm
    done = subprocess.run(
        [
            DEBIAN_DKIMSIGN,
            f"--hcanon={canon}",
            f"--bcanon={canon}",
            f"--signalg={algorithm}",
            key.selector,
            key.signing_domain,
            str(key_file),
        ],
        input=message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),
        capture_output=True,
        timeout=TIMEOUT,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    return done.stdout.replace(b"\r\n", b"\n")
