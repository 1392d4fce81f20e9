"""MTA-STS (RFC 8461) for delivery: policy discovery through DNS and a durable cache.

Parsing, validation, MX matching and the HTTPS fetch itself are in
`chasquid.stspolicy`, shared with smtp-check. The policy of a domain says
which MX hosts may receive its mail and whether they must present a valid
certificate. Any failure to get a policy means "no policy": delivery then
proceeds as usual. The cache keeps one JSON file per domain in
`<data_dir>/sts-cache`, its expiry encoded in the file's modification time,
so that a restart keeps the policies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import dns.asyncresolver
import dns.exception

from chasquid.confdir.layout import STS_CACHE_DIR_MODE
from chasquid.daemon.courier.base import DeliveryError
from chasquid.daemon.courier.mx import resolve_host
from chasquid.daemon.telemetry import metrics
from chasquid.daemon.telemetry.metrics import Counters
from chasquid.dnsconfig import make_async_resolver
from chasquid.fileio import atomic_write
from chasquid.normalize import NormalizationError, domain_to_ascii
from chasquid.remoteports import https_port
from chasquid.stspolicy import (
    Policy,
    SSLContextFactory,
    StsError,
    fetch_policy_text,
    parse_policy,
)

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 10.0
REFRESH_TIMEOUT = 30.0
REFRESH_INTERVAL = 600.0
_PREFIX = "pol:"


def policy_to_json(policy: Policy) -> bytes:
    """The cache file form: chasquid's JSON, max_age in nanoseconds."""
    doc = {
        "version": policy.version,
        "mode": policy.mode,
        "mx": list(policy.mx),
        "max_age": policy.max_age * 1_000_000_000,
    }
    return json.dumps(doc).encode("utf-8")


def policy_from_json(data: bytes) -> Policy:
    """Parse the cache file form; raises ValueError if it is not one."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    mx = doc.get("mx") or []
    max_age = doc.get("max_age", 0)
    if not isinstance(mx, list) or not all(isinstance(m, str) for m in mx):
        raise ValueError("mx is not a list of strings")
    if not isinstance(max_age, int) or isinstance(max_age, bool):
        raise ValueError("max_age is not an integer")
    return Policy(
        version=str(doc.get("version", "")),
        mode=str(doc.get("mode", "")),
        mx=tuple(mx),
        max_age=max_age // 1_000_000_000,
    )


async def has_sts_record(ascii_domain: str, resolver: dns.asyncresolver.Resolver) -> bool:
    """Whether `_mta-sts.<domain>` has a TXT record starting with `v=STSv1;`."""
    try:
        answer = await resolver.resolve(f"_mta-sts.{ascii_domain}.", "TXT", search=False)
    except dns.exception.DNSException as e:
        raise StsError(f"MTA-STS TXT look-up failed: {e}") from e
    for rr in answer:
        text = b"".join(rr.strings).decode("utf-8", "replace")
        if text.startswith("v=STSv1;"):
            return True
    return False


async def fetch_policy(
    domain: str,
    *,
    resolver: dns.asyncresolver.Resolver | None = None,
    ssl_context: SSLContextFactory = ssl.create_default_context,
    port: int | None = None,
    timeout: float = FETCH_TIMEOUT,
) -> Policy:
    """Discover and fetch domain's policy; raises StsError if there is no valid one."""
    try:
        ascii_domain = domain_to_ascii(domain)
    except NormalizationError as e:
        raise StsError(str(e)) from e
    resolver = resolver or make_async_resolver()
    try:
        async with asyncio.timeout(timeout):
            if not await has_sts_record(ascii_domain, resolver):
                raise StsError("MTA-STS TXT record missing")
            host = f"mta-sts.{ascii_domain}"
            try:
                addresses = await resolve_host(host, resolver)
            except DeliveryError as e:
                raise StsError(f"resolving {host}: {e.message}") from e
            text = await fetch_policy_text(
                host, addresses, ssl_context, https_port() if port is None else port
            )
    except TimeoutError as e:
        raise StsError(f"timed out after {timeout}s fetching the policy of {domain}") from e
    return parse_policy(text)


def cache_file_name(domain: str) -> str:
    """`pol:<domain>`, with only `%`, `/` and NUL escaped so any domain is a safe name."""
    escaped = domain.replace("%", "%25").replace("/", "%2F").replace("\x00", "%00")
    return _PREFIX + escaped


class StsCache:
    """MTA-STS policies by domain, kept in a directory and refreshed periodically."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        counters: Counters | None = None,
        resolver_factory: Callable[[], dns.asyncresolver.Resolver] = make_async_resolver,
        ssl_context: SSLContextFactory = ssl.create_default_context,
        port: int | None = None,
        fetch_timeout: float = FETCH_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open the cache in path (created with mode 0770; failure raises OSError)."""
        self.path = Path(path)
        self.path.mkdir(mode=STS_CACHE_DIR_MODE, parents=True, exist_ok=True)
        self.counters = counters or Counters()
        self._resolver_factory = resolver_factory
        self._ssl_context = ssl_context
        self._port = port
        self._fetch_timeout = fetch_timeout
        self._clock = clock

    def _load(self, domain: str) -> Policy | None:
        path = self.path / cache_file_name(domain)
        try:
            mtime = path.stat().st_mtime
            if mtime <= self._clock():
                self.counters.inc(metrics.STS_CACHE_EXPIRED)
                return None
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("reading STS cache %s: %s", path, e)
            self.counters.inc(metrics.STS_CACHE_IO_ERRORS)
            return None
        try:
            policy = policy_from_json(data)
        except ValueError as e:
            log.warning("STS cache %s: %s", path, e)
            self.counters.inc(metrics.STS_CACHE_UNMARSHAL_ERRORS)
            return None
        try:
            policy.check()
        except StsError:
            self.counters.inc(metrics.STS_CACHE_INVALID)
            return None
        return policy

    def _store(self, domain: str, policy: Policy) -> None:
        path = self.path / cache_file_name(domain)
        try:
            data = policy_to_json(policy)
        except (TypeError, ValueError) as e:
            self.counters.inc(metrics.STS_CACHE_MARSHAL_ERRORS)
            log.warning("STS cache: cannot serialize the policy of %s: %s", domain, e)
            return
        try:
            atomic_write(path, data, mode=0o640)
            expires = self._clock() + policy.max_age
            os.utime(path, (expires, expires))
        except OSError as e:
            self.counters.inc(metrics.STS_CACHE_IO_ERRORS)
            log.warning("writing STS cache %s: %s", path, e)

    async def _fetch(self, domain: str, timeout: float) -> Policy:
        self.counters.inc(metrics.STS_CACHE_FETCHES)
        try:
            return await fetch_policy(
                domain,
                resolver=self._resolver_factory(),
                ssl_context=self._ssl_context,
                port=self._port,
                timeout=timeout,
            )
        except StsError:
            self.counters.inc(metrics.STS_CACHE_FAILED_FETCHES)
            raise

    async def get(self, domain: str) -> Policy | None:
        """The valid policy of domain from the cache or fetched now, or None (no policy)."""
        policy = self._load(domain)
        if policy is not None:
            self.counters.inc(metrics.STS_CACHE_HITS)
            return policy
        try:
            policy = await self._fetch(domain, self._fetch_timeout)
        except StsError as e:
            log.debug("no MTA-STS policy for %s: %s", domain, e)
            return None
        # atomic_write fsyncs: in a thread so the daemon's loop does not wait on the disk.
        await asyncio.to_thread(self._store, domain, policy)
        return policy

    def domains(self) -> list[str]:
        """Every domain with a cache entry (expired or not), sorted."""
        try:
            names = [p.name for p in self.path.iterdir() if p.name.startswith(_PREFIX)]
        except OSError as e:
            self.counters.inc(metrics.STS_CACHE_IO_ERRORS)
            log.warning("listing STS cache %s: %s", self.path, e)
            return []
        return sorted(urllib.parse.unquote(n[len(_PREFIX) :]) for n in names)

    async def refresh(self, timeout: float = REFRESH_TIMEOUT) -> None:
        """Re-fetch every cached domain's policy; successes replace the entry."""
        self.counters.inc(metrics.STS_CACHE_REFRESH_CYCLES)
        for domain in self.domains():
            try:
                policy = await self._fetch(domain, timeout)
            except StsError as e:
                self.counters.inc(metrics.STS_CACHE_REFRESH_ERRORS)
                log.info("STS refresh of %s failed: %s", domain, e)
                continue
            self.counters.inc(metrics.STS_CACHE_REFRESHES)
            await asyncio.to_thread(self._store, domain, policy)

    async def refresh_loop(self, interval: float = REFRESH_INTERVAL) -> None:
        """Refresh now and then every interval seconds, until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception:  # the refresher must outlive any one bad cycle
                log.exception("STS cache refresh cycle failed")
            await asyncio.sleep(interval)
