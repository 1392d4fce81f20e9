"""DNS resolvers for the whole project, honouring the CHASQUID_TEST_DNS knob."""

from __future__ import annotations

import functools
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


RESOLV_CONF = "/etc/resolv.conf"


def _configure(resolver: dns.resolver.BaseResolver, server: tuple[str, int] | None) -> None:
    if server is not None:
        resolver.nameservers = [server[0]]
        resolver.port = server[1]
    resolver.lifetime = 20.0
    resolver.timeout = 5.0


def _resolv_conf_version() -> int:
    try:
        return os.stat(RESOLV_CONF).st_mtime_ns
    except OSError:
        return 0


# Every delivery and SPF look-up asks for a resolver; building one reads and
# parses /etc/resolv.conf. Resolvers hold no per-query state, so one is shared
# until the test knob or resolv.conf (by its modification time) changes.
@functools.lru_cache(maxsize=4)
def _sync_resolver(server: tuple[str, int] | None, _version: int) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=server is None)
    _configure(resolver, server)
    return resolver


@functools.lru_cache(maxsize=4)
def _async_resolver(server: tuple[str, int] | None, _version: int) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=server is None)
    _configure(resolver, server)
    return resolver


def make_resolver() -> dns.resolver.Resolver:
    """A blocking resolver (system config, or the test DNS server); shared: do not modify."""
    return _sync_resolver(dns_override(), _resolv_conf_version())


def make_async_resolver() -> dns.asyncresolver.Resolver:
    """An asyncio resolver (system config, or the test DNS server); shared: do not modify."""
    return _async_resolver(dns_override(), _resolv_conf_version())
