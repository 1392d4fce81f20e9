"""SPF evaluation at MAIL with pyspf, run in a worker thread."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import spf

from chasquid import spfdns

_RESULTS = frozenset({"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"})


@dataclass(frozen=True)
class SPFResult:
    """An SPF result (``pass``, ``fail``, ...) and its short reason."""

    result: str
    reason: str


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
    spfdns.install()
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
