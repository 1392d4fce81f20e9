"""MX resolution against a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import random

import pytest
from helpers.smtppeers import Net

from chasquid.daemon.courier.base import DeliveryError
from chasquid.daemon.courier.mx import lookup_mx, order_by_preference, resolve_host


def lookup(domain: str) -> list[str]:
    return asyncio.run(lookup_mx(domain))


def lookup_error(domain: str) -> DeliveryError:
    with pytest.raises(DeliveryError) as exc:
        lookup(domain)
    return exc.value


def test_mx_sorted_by_preference(net: Net) -> None:
    net.mx("example.test", (20, "b.example.test."), (10, "a.example.test."), (30, "c.example.test"))
    assert lookup("example.test") == ["a.example.test", "b.example.test", "c.example.test"]


def test_equal_preferences_are_shuffled() -> None:
    records = [(10, f"h{i}") for i in range(6)] + [(5, "first")]
    orders = {tuple(order_by_preference(records, random.Random(seed))) for seed in range(20)}
    assert len(orders) > 1
    assert all(order[0] == "first" for order in orders)


def test_at_most_five_hosts(net: Net) -> None:
    net.mx("many.test", *[(i, f"mx{i}.many.test") for i in range(8)])
    assert lookup("many.test") == [f"mx{i}.many.test" for i in range(5)]


def test_domain_without_mx_is_its_own_host(net: Net) -> None:
    net.host("aonly.test", "127.0.0.2")
    assert lookup("aonly.test") == ["aonly.test"]


def test_nxdomain_is_permanent(net: Net) -> None:
    err = lookup_error("nowhere.test")
    assert err.permanent
    assert err.message.startswith("Could not find mail server: ")


def test_null_mx_is_permanent(net: Net) -> None:
    net.mx("nullmx.test", (0, "."))
    err = lookup_error("nullmx.test")
    assert err.permanent
    assert "null MX" in err.message


def test_servfail_is_temporary(net: Net) -> None:
    net.zone["broken.test"] = {"RCODE": ["SERVFAIL"]}
    err = lookup_error("broken.test")
    assert not err.permanent
    assert err.message.startswith("Could not find mail server: ")


def test_refused_is_permanent(net: Net) -> None:
    net.zone["refused.test"] = {"RCODE": ["REFUSED"]}
    assert lookup_error("refused.test").permanent


def test_idna_domain_is_looked_up_in_ascii(net: Net) -> None:
    net.mx("xn--aca-6ma.test", (10, "mx.xn--aca-6ma.test"))
    assert lookup("ñaca.test") == ["mx.xn--aca-6ma.test"]


def test_idna_failure_is_permanent(net: Net) -> None:
    err = lookup_error("a\u0300\u200d.test")
    assert err.permanent


def test_resolve_host_gives_ipv4_and_ipv6(net: Net) -> None:
    net.zone["dual.test"] = {"A": ["127.0.0.3"], "AAAA": ["::1"]}
    assert asyncio.run(resolve_host("dual.test.")) == ["127.0.0.3", "::1"]


def test_resolve_unknown_host_is_temporary(net: Net) -> None:
    with pytest.raises(DeliveryError) as exc:
        asyncio.run(resolve_host("missing.test"))
    assert not exc.value.permanent
    assert exc.value.message.startswith("Could not dial: ")
