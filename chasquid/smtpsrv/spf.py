"""SPF evaluation at MAIL (spec/10 §8) with pyspf, run in a worker thread."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.resolver
import spf

from chasquid import dnsconfig

_RESULTS = frozenset({"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"})


@dataclass(frozen=True)
class SPFResult:
    """An SPF result (``pass``, ``fail``, ...) and its short reason."""

    result: str
    reason: str


def _lookup_with(resolver: dns.resolver.Resolver) -> Any:
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
    return _lookup_with(dnsconfig.make_resolver())(name, qtype, strict, timeout)  # type: ignore[no-any-return]


def _install_lookup() -> None:
    # pyspf resolves through its module-level DNSLookup; pointing it at our
    # resolver here is the one place where SPF's DNS is configured.
    if spf.DNSLookup is not _lookup:
        spf.DNSLookup = _lookup


def _reason(result: str, explanation: str, mechanism: str | None) -> str:
    if result == "none":
        return "no DNS record found"
    if result in ("permerror", "temperror"):
        text = explanation
        for prefix in ("SPF Permanent Error: ", "SPF Temporary Error: "):
            text = text.removeprefix(prefix)
        lowered = text.lower()
        if "void lookup" in lowered:
            return "void lookup limit reached"
        if "too many dns lookups" in lowered or "lookup limit" in lowered:
            return "lookup limit reached"
        return text or result
    if not mechanism:
        return "<nil>"
    term = mechanism.lstrip("+-~?")
    name = term.split(":", 1)[0].split("/", 1)[0].lower()
    if name in ("ip4", "ip6"):
        name = "ip"
    return f"matched {name}"


def check_sync(ip: str, sender: str, domain: str) -> SPFResult:
    """Evaluate SPF for ``sender`` from ``ip``; the HELO identity is the sender's domain."""
    _install_lookup()
    try:
        query = spf.query(i=ip, s=sender, h=domain, querytime=20)
        result, _code, explanation = query.check()
    except Exception as e:  # pyspf raises bare exceptions on malformed input
        return SPFResult("permerror", str(e) or type(e).__name__)
    result = str(result)
    if result not in _RESULTS:
        return SPFResult("permerror", f"unexpected SPF result {result!r}")
    return SPFResult(result, _reason(result, str(explanation), query.mechanism))


async def check(ip: str, sender: str, domain: str) -> SPFResult:
    """Evaluate SPF in a worker thread (pyspf blocks on DNS)."""
    return await asyncio.to_thread(check_sync, ip, sender, domain)
