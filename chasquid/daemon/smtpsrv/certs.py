"""TLS certificates from ``certs/<name>/`` and SNI-based selection."""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from chasquid.daemon.smtpsrv.certnames import certificate_names, first_pem_certificate
from chasquid.errors import ChasquidError, os_reason
from chasquid.tlsprofile import server_context

log = logging.getLogger("chasquid.smtpsrv")

# Attribute under which the SNI callback leaves the client's server name on
# the SSL object, for the session to read after the handshake.
SNI_ATTR = "chasquid_sni"


class CertError(ChasquidError):
    """The certificates directory or a certificate in it cannot be used."""


def _names(pem: bytes) -> tuple[str, ...]:
    names = certificate_names(first_pem_certificate(pem))
    return tuple(n.lower().rstrip(".") for n in names)


def _matches(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


@dataclass(frozen=True)
class Certificate:
    """One loaded certificate: the directory name, its DNS names and its context."""

    name: str
    names: tuple[str, ...]
    context: ssl.SSLContext


@dataclass(frozen=True)
class Certificates:
    """All loaded certificates, in load order; the first is the default."""

    certs: tuple[Certificate, ...]

    def choose(self, server_name: str | None) -> Certificate:
        """The certificate for a client's SNI: exact name, then wildcard, else the first."""
        if server_name and len(self.certs) > 1:
            wanted = server_name.lower().rstrip(".")
            for cert in self.certs:
                if wanted in cert.names:
                    return cert
            for cert in self.certs:
                if any(_matches(p, wanted) for p in cert.names):
                    return cert
        return self.certs[0]

    def server_context(self) -> ssl.SSLContext:
        """The context to give the TLS layer; it switches certificate by SNI."""
        primary = self.certs[0].context
        primary.sni_callback = self._sni_callback
        return primary

    def _sni_callback(
        self, obj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        with contextlib.suppress(AttributeError):
            setattr(obj, SNI_ATTR, server_name or "")
        chosen = self.choose(server_name)
        if chosen.context is not obj.context:
            obj.context = chosen.context


def load_certificate(name: str, fullchain: Path, privkey: Path) -> Certificate:
    """Load one certificate pair; raises CertError naming the files."""
    try:
        pem = fullchain.read_bytes()
        names = _names(pem)
    except (OSError, ValueError) as e:
        raise CertError(f"{fullchain}: cannot load certificate: {e}") from None
    ctx = server_context()
    try:
        ctx.load_cert_chain(str(fullchain), str(privkey))
    except (OSError, ssl.SSLError) as e:
        raise CertError(f"{fullchain}, {privkey}: cannot load certificate pair: {e}") from None
    return Certificate(name=name, names=names, context=ctx)


def load_certificates(certs_dir: str | os.PathLike[str]) -> Certificates | None:
    """Load ``<certs_dir>/<name>/{fullchain,privkey}.pem`` for every entry, in name order.

    Logs each directory it looks at (indented, under the caller's
    ``Loading certificates:``) and why one is skipped; None when no pair was
    found, which the daemon reports once it knows what it would listen on.
    Raises CertError, whose message is the line to log, when the directory
    cannot be read or is empty, or when a pair fails to load.
    """
    root = Path(certs_dir)
    try:
        entries = sorted(os.listdir(root))
    except OSError as e:
        raise CertError(f'Error reading "certs/" directory: open {root}/: {os_reason(e)}') from None
    if not entries:
        raise CertError('No entries found in "certs/"')
    loaded: list[Certificate] = []
    for name in entries:
        path = root / name
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
        log.info("  %s", name)
        fullchain, privkey = path / "fullchain.pem", path / "privkey.pem"
        missing = None
        for f in (fullchain, privkey):
            try:
                os.stat(f)
            except OSError as e:
                missing = f"stat {f}: {os_reason(e)}"
                break
        if missing is not None:
            log.info("    skipping: %s", missing)
            continue
        try:
            loaded.append(load_certificate(name, fullchain, privkey))
        except CertError as e:
            raise CertError(f"    {e}") from None
    return Certificates(tuple(loaded)) if loaded else None
