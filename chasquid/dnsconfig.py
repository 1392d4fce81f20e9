"""DNS resolvers for the whole project, honouring the CHASQUID_TEST_DNS knob."""

from __future__ import annotations

import os

import dns.asyncresolver
import dns.resolver

from chasquid.errors import ChasquidError

TEST_DNS_ENV = "CHASQUID_TEST_DNS"


class DNSConfigError(ChasquidError):
    """The DNS configuration (e.g. CHASQUID_TEST_DNS) is unusable."""


def dns_override() -> tuple[str, int] | None:
    """The (host, port) from CHASQUID_TEST_DNS, or None when it is not set."""
    value = os.environ.get(TEST_DNS_ENV, "")
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DNSConfigError(f"{TEST_DNS_ENV}={value!r}: expected host:port, e.g. 127.0.0.1:5353")
    return host.strip("[]"), int(port)


def _configure(resolver: dns.resolver.BaseResolver) -> None:
    server = dns_override()
    if server is not None:
        resolver.nameservers = [server[0]]
        resolver.port = server[1]
    resolver.lifetime = 20.0
    resolver.timeout = 5.0


def make_resolver() -> dns.resolver.Resolver:
    """A blocking dnspython resolver (system config, or the test DNS server)."""
    resolver = dns.resolver.Resolver(configure=dns_override() is None)
    _configure(resolver)
    return resolver


def make_async_resolver() -> dns.asyncresolver.Resolver:
    """An asyncio dnspython resolver (system config, or the test DNS server)."""
    resolver = dns.asyncresolver.Resolver(configure=dns_override() is None)
    _configure(resolver)
    return resolver
