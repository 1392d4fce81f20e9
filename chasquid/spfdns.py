"""pyspf's DNS look-ups through the project's resolver (so CHASQUID_TEST_DNS applies).

pyspf resolves through its module-level `spf.DNSLookup`; `install()` points it
at `dnsconfig.make_resolver()`. Shared by reception's SPF check and smtp-check.
pyspf blocks: callers run it in a worker thread.
"""

from __future__ import annotations

from typing import Any

import dns.exception
import dns.resolver
import spf

from chasquid import dnsconfig


def lookup_with(resolver: dns.resolver.Resolver) -> Any:
    """A pyspf DNSLookup-compatible function that asks ``resolver``."""

    def lookup(name: str, qtype: str, strict: bool = True, timeout: float = 20) -> list[Any]:
        out: list[Any] = []
        try:
            answers = resolver.resolve(name, qtype, lifetime=timeout, search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return out
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as e:
            raise spf.TempError(f"DNS {e}") from None
        for rdata in answers:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        return out

    return lookup


def _lookup(name: str, qtype: str, strict: bool = True, timeout: float = 20) -> list[Any]:
    """pyspf's DNSLookup, asking the project's resolver (CHASQUID_TEST_DNS aware)."""
    return lookup_with(dnsconfig.make_resolver())(name, qtype, strict, timeout)  # type: ignore[no-any-return]


def install() -> None:
    """Point pyspf at the project's resolver (idempotent)."""
    if spf.DNSLookup is not _lookup:
        spf.DNSLookup = _lookup
