"""MTA-STS policies (RFC 8461): parsing, validation, MX matching and the HTTPS fetch.

Shared by the courier (which enforces policies, with discovery and a cache in
`chasquid.daemon.courier.sts`) and by smtp-check (which audits them). Nothing here looks up
DNS: callers resolve `mta-sts.<domain>` and pass the addresses.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from chasquid.errors import ChasquidError
from chasquid.normalize import NormalizationError, domain_to_ascii

MAX_AGE_LIMIT = 31_557_600
MAX_POLICY_SIZE = 10_240
MAX_HEADER_BYTES = 16 * 1024
MODES = ("enforce", "testing", "none")
POLICY_PATH = "/.well-known/mta-sts.txt"

SSLContextFactory = Callable[[], ssl.SSLContext]


class StsError(ChasquidError):
    """No usable MTA-STS policy could be had; the message says why."""


@dataclass(frozen=True)
class Policy:
    """A parsed MTA-STS policy; max_age in seconds."""

    version: str
    mode: str
    mx: tuple[str, ...]
    max_age: int

    def check(self) -> None:
        """Raise StsError unless the policy is valid (version, max_age, mode, mx)."""
        if self.version != "STSv1":
            raise StsError(f"unknown policy version {self.version!r}")
        if not 0 < self.max_age <= MAX_AGE_LIMIT:
            raise StsError(f"invalid max_age {self.max_age}")
        if self.mode not in MODES:
            raise StsError(f"invalid mode {self.mode!r}")
        if not self.mx:
            raise StsError("policy lists no mx")

    def allows(self, host: str) -> bool:
        """Whether one of the policy's mx patterns matches host, whatever the mode."""
        return any(mx_matches(pattern, host) for pattern in self.mx)

    def mx_is_valid(self, host: str) -> bool:
        """Whether host may receive mail under this policy (only enforce restricts)."""
        return self.mode != "enforce" or self.allows(host)


def parse_policy(text: str) -> Policy:
    """Parse a policy file's text (RFC 8461 §3.2) and validate it; raises StsError."""
    values: dict[str, str] = {}
    mx: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value)
        elif key in ("version", "mode", "max_age"):
            values[key] = value
    try:
        max_age = int(values.get("max_age", ""))
    except ValueError:
        max_age = 0
    policy = Policy(values.get("version", ""), values.get("mode", ""), tuple(mx), max_age)
    policy.check()
    return policy


def _ascii_host(name: str) -> str:
    name = name.strip().rstrip(".")
    return domain_to_ascii(name.lower()) if name else ""


def mx_matches(pattern: str, host: str) -> bool:
    """Whether host matches an `mx` pattern (exact, or `*.` standing for one label)."""
    try:
        host_a = _ascii_host(host)
        wildcard = pattern.strip().startswith("*.")
        pattern_a = _ascii_host(pattern.strip()[2:] if wildcard else pattern)
    except NormalizationError:
        return False
    if not host_a or not pattern_a:
        return False
    if not wildcard:
        return host_a == pattern_a
    _, dot, rest = host_a.partition(".")
    return bool(dot) and rest == pattern_a


async def _read_headers(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = b""
    while not raw.endswith(b"\r\n\r\n") and not raw.endswith(b"\n\n"):
        chunk = await reader.readline()
        if not chunk:
            raise StsError("connection closed before the end of the HTTP headers")
        raw += chunk
        if len(raw) > MAX_HEADER_BYTES:
            raise StsError("HTTP headers too long")
    lines = raw.decode("iso-8859-1").splitlines()
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise StsError(f"malformed HTTP status line {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def fetch_policy_text(
    host: str, addresses: Sequence[str], ssl_context: SSLContextFactory, port: int
) -> str:
    """GET https://<host>/.well-known/mta-sts.txt from the first address that answers.

    Redirects are refused, the media type must be text/plain, the body is read
    up to MAX_POLICY_SIZE bytes; the caller bounds the time. Raises StsError.
    """
    last: Exception | None = None
    for address in addresses:
        try:
            reader, writer = await asyncio.open_connection(
                address, port, ssl=ssl_context(), server_hostname=host, limit=MAX_HEADER_BYTES
            )
        except (OSError, ssl.SSLError) as e:
            last = e
            continue
        try:
            request = (
                f"GET {POLICY_PATH} HTTP/1.0\r\nHost: {host}\r\n"
                "User-Agent: chasquid\r\nConnection: close\r\n\r\n"
            )
            writer.write(request.encode("ascii"))
            await writer.drain()
            status, headers = await _read_headers(reader)
            if 300 <= status < 400:
                raise StsError(f"HTTP status {status} from {host}: redirects are not allowed")
            if status != 200:
                raise StsError(f"HTTP status {status} fetching policy from {host}")
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "text/plain":
                raise StsError(f"policy from {host} has content type {media_type!r}")
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise StsError(f"policy from {host} sent with chunked encoding to HTTP/1.0")
            body = b""
            while len(body) < MAX_POLICY_SIZE:
                chunk = await reader.read(MAX_POLICY_SIZE - len(body))
                if not chunk:
                    break
                body += chunk
            return body.decode("utf-8", "replace")
        except (OSError, ValueError, asyncio.LimitOverrunError) as e:
            raise StsError(f"fetching policy from {host}: {e}") from e
        finally:
            writer.close()
    raise StsError(f"connecting to {host}: {last}")
