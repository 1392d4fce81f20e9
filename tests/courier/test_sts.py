"""MTA-STS: policy parsing and matching, HTTPS fetch, durable cache, enforcement."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
import trustme
from helpers.smtppeers import Handler, Net, http_response, https_server, smtp_server

from chasquid.daemon.courier.base import DeliveryError
from chasquid.daemon.courier.sts import (
    cache_file_name,
    fetch_policy,
    policy_from_json,
    policy_to_json,
)
from chasquid.daemon.telemetry import metrics
from chasquid.msgbody import Body
from chasquid.stspolicy import Policy, StsError, mx_matches, parse_policy

POLICY = "version: STSv1\nmode: enforce\nmx: mx1.dest.test\nmx: *.backup.test\nmax_age: 86400\n"


def test_parse_valid_policy() -> None:
    text = "version: STSv1\r\nmode: testing\r\nmx: a.test\r\nmx:b.test\r\nmax_age:  600\r\nx: y\r\n"
    assert parse_policy(text) == Policy("STSv1", "testing", ("a.test", "b.test"), 600)


@pytest.mark.parametrize(
    "text",
    [
        "version: STSv2\nmode: enforce\nmx: a\nmax_age: 10",
        "version: STSv1\nmode: enforced\nmx: a\nmax_age: 10",
        "version: STSv1\nmode: enforce\nmax_age: 10",
        "version: STSv1\nmode: enforce\nmx: a\nmax_age: 0",
        "version: STSv1\nmode: enforce\nmx: a\nmax_age: 31557601",
        "version: STSv1\nmode: enforce\nmx: a\nmax_age: ten",
        "Version: STSv1\nmode: enforce\nmx: a\nmax_age: 10",
    ],
)
def test_invalid_policies_are_rejected(text: str) -> None:
    with pytest.raises(StsError):
        parse_policy(text)


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("mx.example.com", "mx.example.com", True),
        ("mx.example.com", "MX.Example.com.", True),
        ("mx.example.com.", "mx.example.com", True),
        ("*.example.com", "mx.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("mx.example.com", "other.example.com", False),
        ("mx.ñaca.test", "mx.xn--aca-6ma.test", True),
        ("*.ñaca.test", "mx.xn--aca-6ma.test.", True),
    ],
)
def test_mx_matching(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected


def test_only_enforce_restricts_hosts() -> None:
    enforce = Policy("STSv1", "enforce", ("a.test",), 10)
    assert enforce.mx_is_valid("a.test") and not enforce.mx_is_valid("b.test")
    assert Policy("STSv1", "testing", ("a.test",), 10).mx_is_valid("b.test")


def test_cache_json_has_max_age_in_nanoseconds() -> None:
    policy = Policy("STSv1", "enforce", ("a.test",), 10)
    doc = json.loads(policy_to_json(policy))
    assert doc == {"version": "STSv1", "mode": "enforce", "mx": ["a.test"], "max_age": 10 * 10**9}
    assert policy_from_json(policy_to_json(policy)) == policy


def test_cache_file_names_are_safe() -> None:
    assert cache_file_name("example.com") == "pol:example.com"
    assert cache_file_name("ñaca.com") == "pol:ñaca.com"
    assert "/" not in cache_file_name("../../etc/passwd")


def sts_setup(net: Net, domain: str = "dest.test", txt: str = "v=STSv1; id=20240101") -> str:
    net.zone[f"_mta-sts.{domain}"] = {"TXT": [txt]}
    net.host(f"mta-sts.{domain}", "127.0.0.8")
    return f"mta-sts.{domain}"


def fetch(net: Net, response: bytes, *, ca: trustme.CA | None = None) -> Policy:
    name = sts_setup(net)

    async def run() -> Policy:
        tls = net.server_tls(name, ca=ca)
        async with https_server("127.0.0.8", net.https_port, tls, response) as requests:
            policy = await fetch_policy("dest.test", timeout=5)
            assert requests[0].startswith(b"GET /.well-known/mta-sts.txt HTTP/1.")
            assert b"Host: mta-sts.dest.test\r\n" in requests[0]
            return policy

    return asyncio.run(run())


def test_fetch_over_https(net: Net) -> None:
    policy = fetch(net, http_response(POLICY, content_type="text/plain; charset=utf-8"))
    assert policy == Policy("STSv1", "enforce", ("mx1.dest.test", "*.backup.test"), 86400)


def test_fetch_refuses_redirects(net: Net) -> None:
    with pytest.raises(StsError, match="301"):
        fetch(net, http_response(POLICY, status="301 Moved Permanently"))


def test_fetch_requires_text_plain(net: Net) -> None:
    with pytest.raises(StsError, match="content type"):
        fetch(net, http_response(POLICY, content_type="text/html"))


def test_fetch_requires_a_trusted_certificate(net: Net) -> None:
    with pytest.raises(StsError):
        fetch(net, http_response(POLICY), ca=trustme.CA())


def test_fetch_requires_the_txt_record(net: Net) -> None:
    sts_setup(net, txt="v=STSv1 id=1")  # no semicolon: not a valid record
    with pytest.raises(StsError, match="MTA-STS TXT record missing"):
        asyncio.run(fetch_policy("dest.test", timeout=5))


def test_multi_string_txt_record_is_joined(net: Net) -> None:
    name = sts_setup(net)
    net.zone["_mta-sts.dest.test"] = {"TXT": [["v=STS", "v1; id=1"]]}

    async def run() -> Policy:
        async with https_server("127.0.0.8", net.https_port, net.server_tls(name), _ok()):
            return await fetch_policy("dest.test", timeout=5)

    assert asyncio.run(run()).mode == "enforce"


def _ok(policy: str = POLICY) -> bytes:
    return http_response(policy)


def test_cache_stores_durably_and_serves_hits(net: Net) -> None:
    name = sts_setup(net)
    cache = net.sts_cache()

    async def run() -> tuple[Policy | None, Policy | None]:
        async with https_server("127.0.0.8", net.https_port, net.server_tls(name), _ok()):
            first = await cache.get("dest.test")
        # The server is gone: the second answer can only come from the cache.
        second = await net.sts_cache().get("dest.test")
        return first, second

    first, second = asyncio.run(run())
    assert first is not None and first == second
    path = net.tmp / "sts-cache" / "pol:dest.test"
    assert json.loads(path.read_bytes())["max_age"] == 86400 * 10**9
    assert abs(path.stat().st_mtime - (time.time() + 86400)) < 60
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    assert net.counters.get(metrics.STS_CACHE_FETCHES) == 1
    assert net.counters.get(metrics.STS_CACHE_HITS) == 1


def test_expired_entry_is_fetched_again(net: Net) -> None:
    name = sts_setup(net)
    cache = net.sts_cache()
    testing = POLICY.replace("enforce", "testing")

    async def run() -> Policy | None:
        async with https_server("127.0.0.8", net.https_port, net.server_tls(name), _ok()):
            await cache.get("dest.test")
        path = net.tmp / "sts-cache" / "pol:dest.test"
        os.utime(path, (time.time() - 1, time.time() - 1))
        async with https_server("127.0.0.8", net.https_port, net.server_tls(name), _ok(testing)):
            return await cache.get("dest.test")

    policy = asyncio.run(run())
    assert policy is not None and policy.mode == "testing"
    assert net.counters.get(metrics.STS_CACHE_EXPIRED) == 1
    assert net.counters.get(metrics.STS_CACHE_FETCHES) == 2


def test_no_policy_when_fetch_fails(net: Net) -> None:
    cache = net.sts_cache()
    assert asyncio.run(cache.get("nopolicy.test")) is None
    assert net.counters.get(metrics.STS_CACHE_FAILED_FETCHES) == 1
    assert not (net.tmp / "sts-cache" / "pol:nopolicy.test").exists()


def test_refresh_updates_entries_and_keeps_them_on_failure(net: Net) -> None:
    name = sts_setup(net)
    cache = net.sts_cache()
    testing = POLICY.replace("enforce", "testing")
    path = net.tmp / "sts-cache" / "pol:dest.test"

    async def run() -> None:
        async with https_server("127.0.0.8", net.https_port, net.server_tls(name), _ok()):
            await cache.get("dest.test")
        async with https_server("127.0.0.8", net.https_port, net.server_tls(name), _ok(testing)):
            await cache.refresh(timeout=5)
        assert json.loads(path.read_bytes())["mode"] == "testing"
        await cache.refresh(timeout=5)  # no server now: the entry stays

    asyncio.run(run())
    assert json.loads(path.read_bytes())["mode"] == "testing"
    assert net.counters.get(metrics.STS_CACHE_REFRESH_CYCLES) == 2
    assert net.counters.get(metrics.STS_CACHE_REFRESHES) == 1
    assert net.counters.get(metrics.STS_CACHE_REFRESH_ERRORS) == 1


def _two_mx(net: Net) -> None:
    net.mx("dest.test", (5, "mx0.dest.test"), (10, "mx1.dest.test"))
    net.host("mx0.dest.test", "127.0.0.2")
    net.host("mx1.dest.test", "127.0.0.3")


def _deliver_with_policy(
    net: Net, policy: str, *, mx1_ca: trustme.CA | None = None
) -> tuple[DeliveryError | None, Handler, Handler]:
    name = sts_setup(net)
    _two_mx(net)

    async def run() -> tuple[DeliveryError | None, Handler, Handler]:
        async with (
            https_server("127.0.0.8", net.https_port, net.server_tls(name), _ok(policy)),
            smtp_server("127.0.0.2", net.port, tls=net.server_tls("mx0.dest.test")) as mx0,
            smtp_server(
                "127.0.0.3", net.port, tls=net.server_tls("mx1.dest.test", ca=mx1_ca)
            ) as mx1,
        ):
            courier = net.courier(sts=net.sts_cache())
            result = await courier.deliver_many("a@src.test", ["x@dest.test"], Body.of(b"hi\n"))
            return result["x@dest.test"], mx0, mx1

    return asyncio.run(run())


def test_enforce_skips_hosts_outside_the_policy(net: Net) -> None:
    err, mx0, mx1 = _deliver_with_policy(net, POLICY)
    assert err is None
    assert mx0.mails == 0
    assert len(mx1.received) == 1
    assert net.counters.get(metrics.SMTP_OUT_STS_MODES, "enforce") == 1
    assert net.counters.get(metrics.SMTP_OUT_STS_SECURITY, "pass") == 1


def test_enforce_requires_a_valid_certificate(net: Net) -> None:
    err, mx0, mx1 = _deliver_with_policy(net, POLICY, mx1_ca=trustme.CA())
    assert err is not None and not err.permanent
    assert "invalid security level (TLS_INSECURE) for STS policy" in err.message
    assert mx0.mails == 0 and mx1.mails == 0
    assert net.counters.get(metrics.SMTP_OUT_STS_SECURITY, "fail") == 1


def test_testing_mode_only_observes(net: Net) -> None:
    err, mx0, mx1 = _deliver_with_policy(net, POLICY.replace("enforce", "testing"))
    assert err is None
    assert len(mx0.received) == 1 and mx1.mails == 0
    assert net.counters.get(metrics.SMTP_OUT_STS_MODES, "testing") == 1


def test_via_servers_ignore_the_policy(net: Net) -> None:
    name = sts_setup(net)
    net.host("relay.test", "127.0.0.4")

    async def run() -> tuple[DeliveryError | None, list[bytes]]:
        async with (
            https_server("127.0.0.8", net.https_port, net.server_tls(name), _ok()) as requests,
            smtp_server("127.0.0.4", net.port),
        ):
            courier = net.courier(sts=net.sts_cache())
            result = await courier.deliver_many(
                "a@src.test", ["x@dest.test"], Body.of(b"hi\n"), via=["relay.test"]
            )
            return result["x@dest.test"], requests

    err, requests = asyncio.run(run())
    assert err is None
    assert requests == []
