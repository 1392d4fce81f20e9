"""Where to deliver a domain's mail: MX look-up and host address resolution.

Failures are DeliveryErrors classified as the delivery loop needs them:
NXDOMAIN, a null MX (RFC 7505) and names that cannot be written in ASCII are
permanent; SERVFAIL, timeouts and other transient trouble are
temporary.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from chasquid.daemon.courier.base import DeliveryError
from chasquid.dnsconfig import make_async_resolver
from chasquid.normalize import NormalizationError, domain_to_ascii

MAX_HOSTS = 5

# Rcodes that mean the DNS refuses to ever answer this question; anything else
# (SERVFAIL above all) may go away by itself.
_PERMANENT_RCODES = frozenset({"REFUSED", "NOTIMP", "FORMERR", "YXDOMAIN"})


def _not_found(err: object) -> DeliveryError:
    return DeliveryError.permanent_error(f"Could not find mail server: {err}")


def _not_found_yet(err: object) -> DeliveryError:
    return DeliveryError.temporary(f"Could not find mail server: {err}")


def strip_root(host: str) -> str:
    """The host name without its trailing root dot (for comparisons and SNI)."""
    return host[:-1] if host.endswith(".") and host != "." else host


def _servers_failed_permanently(e: dns.resolver.NoNameservers) -> bool:
    errors = e.kwargs.get("errors") or []
    rcodes = [entry[3] for entry in errors if isinstance(entry, tuple) and len(entry) > 3]
    return bool(rcodes) and all(isinstance(rc, str) and rc in _PERMANENT_RCODES for rc in rcodes)


def order_by_preference(
    records: Iterable[tuple[int, str]], rng: random.Random | None = None
) -> list[str]:
    """Host names sorted by MX preference, shuffled among equal preferences."""
    rng = rng or random.Random()
    keyed = [(pref, rng.random(), host) for pref, host in records]
    keyed.sort()
    return [host for _, _, host in keyed]


async def lookup_mx(
    domain: str,
    resolver: dns.asyncresolver.Resolver | None = None,
    *,
    limit: int = MAX_HOSTS,
    rng: random.Random | None = None,
) -> list[str]:
    """The mail hosts of domain (ASCII, no trailing dot), best first, at most limit.

    A domain without MX records is its own mail host (implicit MX). Raises
    DeliveryError: permanent for NXDOMAIN, null MX, IDNA failure and refused
    queries; temporary for SERVFAIL, timeouts and other transient errors.
    """
    try:
        ascii_domain = domain_to_ascii(domain)
    except NormalizationError as e:
        raise _not_found(e) from e
    resolver = resolver or make_async_resolver()
    try:
        answer = await resolver.resolve(ascii_domain + ".", "MX", search=False)
    except dns.resolver.NXDOMAIN as e:
        raise _not_found(f"domain {ascii_domain} does not exist (NXDOMAIN)") from e
    except dns.resolver.NoAnswer:
        return [ascii_domain]
    except dns.resolver.NoNameservers as e:
        if _servers_failed_permanently(e):
            raise _not_found(e) from e
        raise _not_found_yet(e) from e
    except dns.exception.Timeout as e:
        raise _not_found_yet(f"DNS timeout looking up MX of {ascii_domain}") from e
    except dns.exception.DNSException as e:
        raise _not_found(e) from e
    except Exception as e:  # a failure that is not DNS-level at all: retry later
        raise _not_found_yet(e) from e

    records: list[tuple[int, str]] = []
    for rr in answer:
        target: dns.name.Name = rr.exchange
        host = target.to_text(omit_final_dot=True)
        if target == dns.name.root or host in ("", "."):
            if len(answer) == 1:
                raise _not_found(f"domain {ascii_domain} does not accept mail (null MX)")
            continue  # a null MX beside real ones is malformed: ignore it
        records.append((int(rr.preference), host.lower()))
    if not records:
        raise _not_found(f"no usable MX records for {ascii_domain}")
    return order_by_preference(records, rng)[:limit]


async def resolve_host(host: str, resolver: dns.asyncresolver.Resolver | None = None) -> list[str]:
    """IPv4 then IPv6 addresses of host (an IP literal is returned as is).

    Raises DeliveryError (temporary) when the name has no address.
    """
    host = strip_root(host)
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    resolver = resolver or make_async_resolver()
    addresses: list[str] = []
    errors: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(host + ".", rdtype, search=False)
        except dns.resolver.NoAnswer:
            continue
        except dns.resolver.NXDOMAIN:
            errors.append(f"no such host {host}")
            break
        except dns.exception.DNSException as e:
            errors.append(f"looking up {rdtype} of {host}: {e}")
            continue
        addresses.extend(rr.address for rr in answer)
    if not addresses:
        detail = "; ".join(errors) or f"no addresses for {host}"
        raise DeliveryError.temporary(f"Could not dial: {detail}")
    return addresses
