"""Two real daemons deliver to each other on loopback hosts.

A is srv-a.test on 127.0.0.2, B is srv-b.test on 127.0.0.3, both on the same
SMTP port; DNS, the trusted CA and MTA-STS policies are served by the test.
127.0.0.4 is a relay to B that hides STARTTLS: a peer without TLS, or an
attacker downgrading the connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
import trustme
from helpers.mail import wait_until
from helpers.mailnet import (
    MailNet,
    Peer,
    mail_net,
    parse_dsn,
    starttls_stripper,
    sts_server,
)

A_HOST, B_HOST, RELAY_HOST = "127.0.0.2", "127.0.0.3", "127.0.0.4"


@pytest.fixture
def net(tmp_path: Path) -> Iterator[MailNet]:
    with mail_net(tmp_path) as n:
        yield n


def pair(
    net: MailNet, a_domain: str = "srv-a.test", b_domain: str = "srv-b.test"
) -> tuple[Peer, Peer]:
    a = net.add_peer("a", a_domain, A_HOST)
    b = net.add_peer("b", b_domain, B_HOST)
    return a, b


def last_errors(peer: Peer) -> dict[str, str]:
    """Recipient -> last failure message of every item in the peer's queue."""
    out = {}
    for item in peer.queue():
        for r in item["rcpts"]:
            if r.get("last_failure_message"):
                out[r["address"]] = r["last_failure_message"]
    return out


def test_plain_untrusted_and_trusted_tls_raise_the_outgoing_level(net: MailNet) -> None:
    a, b = pair(net)
    rogue = trustme.CA()
    net.add_cert(b, "untrusted", ["untrusted.srv-b.test"], rogue)
    net.add_host("untrusted.srv-b.test", B_HOST)
    net.add_host("plain.srv-b.test", RELAY_HOST)
    net.start(a)
    net.start(b)

    with starttls_stripper(RELAY_HOST, B_HOST, net.port) as relay:
        net.set_mx("srv-b.test", "plain.srv-b.test")
        a.send(["user@srv-b.test"], subject="plain")
        b.wait_mail(1)
        assert relay.connections >= 1
    assert a.level("srv-b.test") == "PLAIN"

    net.set_mx("srv-b.test", "untrusted.srv-b.test")
    a.send(["user@srv-b.test"], subject="untrusted")
    b.wait_mail(2)
    assert a.level("srv-b.test") == "TLS_INSECURE"

    net.set_mx("srv-b.test", "mx.srv-b.test")
    a.send(["user@srv-b.test"], subject="trusted")
    b.wait_mail(3)
    assert a.level("srv-b.test") == "TLS_SECURE"
    assert [m["Subject"] for m in b.mailbox()] == ["plain", "untrusted", "trusted"]
    assert b.envelope_senders() == ["user@srv-a.test"] * 3

    # And the other way round.
    b.send(["user@srv-a.test"], subject="back")
    a.wait_mail(1)
    [back] = a.mailbox()
    assert back["Subject"] == "back"
    assert b.level("srv-a.test") == "TLS_SECURE"
    assert a.queue() == [] and b.queue() == []


def test_downgrade_refused_until_domaininfo_remove(net: MailNet) -> None:
    a, b = pair(net)
    # SPF passes for A's mail, so B tracks A's incoming level.
    net.zone.setdefault("srv-a.test", {})["TXT"] = ["v=spf1 ip4:127.0.0.0/8 -all"]
    net.add_host("plain.srv-b.test", RELAY_HOST)
    net.start(a)
    net.start(b)

    a.send(["user@srv-b.test"], subject="secure")
    b.wait_mail(1)
    assert a.level("srv-b.test") == "TLS_SECURE"
    assert b.level("srv-a.test", "incoming") == "TLS_CLIENT"

    with starttls_stripper(RELAY_HOST, B_HOST, net.port) as relay:
        net.set_mx("srv-b.test", "plain.srv-b.test")
        a.send(["user@srv-b.test"], subject="stripped")
        # Outgoing: A refuses to send in clear to a domain seen with verified TLS,
        # and keeps retrying (temporary).
        wait_until(lambda: "user@srv-b.test" in last_errors(a), what="a failed attempt")
        assert last_errors(a)["user@srv-b.test"] == (
            "all MXs returned transient failures (last: Security level check failed (level:PLAIN))"
        )
        [item] = a.queue()
        show = a.util("queue", "show", "--", item["id"])
        assert show.returncode == 0 and "Security level check failed (level:PLAIN)" in show.stdout
        assert relay.connections >= 1 and len(b.mailbox()) == 1

        # The operator clears A's record of B through the running daemon; the
        # retry now goes in clear, and B refuses it: SPF passed, and A's domain
        # was seen over TLS (incoming downgrade), a permanent failure.
        r = a.util("domaininfo-remove", "srv-b.test")
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        a.wait_mail(1)
        [dsn] = [parse_dsn(m) for m in a.raw_mailbox()]
        assert dsn.failed == ["user@srv-b.test"]
        assert dsn.diagnostic("user@srv-b.test").startswith("MAIL+RCPT 550 5.7.3 ")
        assert "user@srv-b.test" in dsn.text
        assert len(b.mailbox()) == 1
        wait_until(lambda: a.queue() == [], what="A's queue to empty")

        # Once B forgets A's level too, mail in clear flows again.
        r = b.util("domaininfo-remove", "srv-a.test")
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        a.send(["user@srv-b.test"], subject="plain again")
        b.wait_mail(2)
    assert [m["Subject"] for m in b.mailbox()] == ["secure", "plain again"]
    assert a.level("srv-b.test") == "PLAIN"
    assert b.level("srv-a.test", "incoming") == "PLAIN"


def test_unroutable_and_refused_recipients_get_their_result_and_one_dsn(net: MailNet) -> None:
    a, b = pair(net)
    b.setup.add_user("user", "pw", domain="nomx.test")
    # A give-up short enough that the recipient that only ever fails temporarily ends in
    # the DSN too, yet long enough that a loaded machine still finds the item in the
    # queue while it checks the errors below (at 8 s, `queue show` sometimes came after
    # the give-up had already removed it).
    a.setup.extra_conf.append('give_up_send_after: "25s"')
    net.zone.update(
        {
            "nullmx.test": {"MX": [(0, ".")]},
            "nomx.test": {"A": [B_HOST]},  # no MX: the domain itself is the mail host
            "noaddr.test": {"TXT": ["exists, but has neither MX nor A"]},
            "dnsrefused.test": {"RCODE": ["REFUSED"]},
        }
    )
    net.start(a)
    net.start(b)
    rcpts = [
        "user@srv-b.test",
        "nobody@srv-b.test",
        "user@nomx.test",
        "x@nullmx.test",
        "x@nxdomain.test",
        "x@noaddr.test",
        "x@dnsrefused.test",
    ]
    a.send(rcpts, subject="to everywhere")
    b.wait_mail(2)
    assert sorted(str(m["To"]) for m in b.mailbox()) == [", ".join(rcpts)] * 2

    # While one recipient is still being retried, the queue shows every last error.
    wait_until(lambda: len(last_errors(a)) == 5, what="five failed recipients in the queue")
    errors = last_errors(a)
    assert errors["nobody@srv-b.test"].startswith("MAIL+RCPT 550 5.1.1 ")
    assert errors["x@nullmx.test"] == (
        "Could not find mail server: domain nullmx.test does not accept mail (null MX)"
    )
    assert errors["x@nxdomain.test"] == (
        "Could not find mail server: domain nxdomain.test does not exist (NXDOMAIN)"
    )
    assert errors["x@dnsrefused.test"].startswith("Could not find mail server: ")
    assert "Could not dial" in errors["x@noaddr.test"]
    [item] = a.queue()
    statuses = {r["address"]: r["status"] for r in item["rcpts"]}
    assert statuses == {
        "user@srv-b.test": "sent",
        "user@nomx.test": "sent",
        "nobody@srv-b.test": "failed",
        "x@nullmx.test": "failed",
        "x@nxdomain.test": "failed",
        "x@dnsrefused.test": "failed",
        "x@noaddr.test": "pending",
    }
    show = a.util("queue", "show", "--", item["id"])
    assert show.returncode == 0, show.stderr
    for rcpt, error in errors.items():
        assert rcpt in show.stdout
        assert " ".join(error.split()) in " ".join(show.stdout.split())

    # At give-up, one DSN reaches the sender with the last error of each recipient.
    a.wait_mail(1, timeout=60)
    [raw] = a.raw_mailbox()
    dsn = parse_dsn(raw)
    failed = sorted(r for r in rcpts if r not in ("user@srv-b.test", "user@nomx.test"))
    assert dsn.failed == failed
    assert [r["Final-Recipient"] for r in dsn.recipients] == [
        "utf-8; nobody@srv-b.test",
        "utf-8; x@nullmx.test",
        "utf-8; x@nxdomain.test",
        "utf-8; x@dnsrefused.test",
        "utf-8; x@noaddr.test",
    ]
    assert [r["Status"] for r in dsn.recipients] == ["5.0.0"] * 4 + ["4.0.0"]
    for r in failed:
        assert dsn.diagnostic(r) == " ".join(errors[r].split()) or r == "x@noaddr.test"
        assert f"  - {r}" in dsn.text
    assert "Could not dial" in dsn.diagnostic("x@noaddr.test")
    original = list(dsn.message.iter_parts())[2].get_payload(0)
    assert isinstance(original, Message)
    assert original["Subject"] == "to everywhere"
    wait_until(lambda: a.queue() == [], what="A's queue to empty")


def test_idna_domains_both_ways_and_sender_rewriting_in_ascii(net: MailNet) -> None:
    a, b = pair(net, "árbol.test", "ñaca.test")
    (b.setup.config_dir / "domains" / "ñaca.test" / "aliases").write_text("fwd: user@árbol.test\n")
    net.start(a)
    net.start(b)

    # A -> B with the Unicode address (SMTPUTF8 all the way).
    a.send(["user@ñaca.test"], subject="unicode address")
    b.wait_mail(1)
    assert b.envelope_senders() == ["user@árbol.test"]
    assert a.level("ñaca.test") == "TLS_SECURE"
    assert (a.setup.data_dir / "domaininfo" / "s:%C3%B1aca.test").exists()

    # B -> A with the ASCII (IDNA) form of the address.
    b.send(["user@xn--rbol-4na.test"], subject="ascii address")
    a.wait_mail(1)
    assert [m["Subject"] for m in a.mailbox()] == ["ascii address"]
    assert b.level("árbol.test") == "TLS_SECURE"

    # A -> B -> A through an alias: B rewrites the foreign sender (with SRS,
    # its domain goes out in ASCII form; A's reception turns it back to Unicode).
    a.send(["fwd@ñaca.test"], subject="forwarded")
    a.wait_mail(2)
    assert a.envelope_senders()[1] == "fwd+fwd_from=user=árbol.test@ñaca.test"
    assert [m["Subject"] for m in a.mailbox()] == ["ascii address", "forwarded"]
    assert a.queue() == [] and b.queue() == []


def test_forwarding_loop_between_the_two_is_stopped(net: MailNet) -> None:
    a, b = pair(net)
    (a.setup.config_dir / "domains" / "srv-a.test" / "aliases").write_text(
        "loop: loop@srv-b.test\n"
    )
    (b.setup.config_dir / "domains" / "srv-b.test" / "aliases").write_text(
        "loop: loop@srv-a.test\n"
    )
    limit = "--testing__max_received_headers=5"
    net.start(a, limit)
    net.start(b, limit)

    a.send(["loop@srv-a.test"], subject="round and round")

    def rejections() -> list[str]:
        logs = [p.daemon.mail_log_text() for p in (a, b) if p.daemon]
        return [line for log in logs for line in log.splitlines() if " rejected " in line]

    # The message, and then the DSN about it (sent to the forwarder's rewritten
    # address, which loops through the same aliases), are both refused as loops.
    wait_until(lambda: len(rejections()) >= 2, what="two loop rejections")
    wait_until(lambda: a.queue() == [] and b.queue() == [], what="both queues to empty")
    assert all("5.4.6" in line for line in rejections()), rejections()
    queued = [
        line
        for p in (a, b)
        if p.daemon
        for line in p.daemon.mail_log_text().splitlines()
        if " queued " in line
    ]
    # Each trip adds a Received header: about five hops per message, then it stops.
    assert 6 <= len(queued) <= 16, queued
    assert a.mailbox() == [] and b.mailbox() == []
    # One DSN about the original message; never one about the DSN (null sender).
    dsns = [p.daemon.log_text().count(": sent DSN ") for p in (a, b) if p.daemon]
    assert sum(dsns) == 1, dsns
    assert not any(" from= " in line for line in queued)


def test_mta_sts_enforce_and_testing_policies_served_over_https(net: MailNet) -> None:
    a, b = pair(net)
    rogue = trustme.CA()
    net.add_cert(b, "untrusted", ["untrusted.srv-b.test"], rogue)
    net.add_host("untrusted.srv-b.test", B_HOST)
    policies = {
        # domain: (MX host, policy mode, policy mx pattern)
        "srv-b.test": ("mx.srv-b.test", "enforce", "*.srv-b.test"),
        "strict.test": ("mx.srv-b.test", "enforce", "*.elsewhere.test"),
        "testing.test": ("mx.srv-b.test", "testing", "*.elsewhere.test"),
        "weak.test": ("untrusted.srv-b.test", "enforce", "untrusted.srv-b.test"),
    }
    texts = {}
    for domain, (mx, mode, pattern) in policies.items():
        if domain != "srv-b.test":
            b.setup.add_user("user", "pw", domain=domain)
        net.set_mx(domain, mx)
        net.zone[f"_mta-sts.{domain}"] = {"TXT": ["v=STSv1; id=20240101"]}
        net.add_host(f"mta-sts.{domain}", "127.0.0.5")
        texts[domain] = f"version: STSv1\nmode: {mode}\nmx: {pattern}\nmax_age: 86400\n"
    net.start(a)
    net.start(b)

    with sts_server("127.0.0.5", net.https_port, net.ca, texts) as requested:
        a.send([f"user@{d}" for d in policies], subject="sts")
        # Enforce with a matching MX and verified TLS, and testing mode even with
        # a non-matching MX, deliver.
        b.wait_mail(2)
        wait_until(lambda: len(last_errors(a)) == 2, what="two recipients held back")
        assert sorted(set(requested)) == sorted(f"mta-sts.{d}" for d in policies)

    errors = last_errors(a)
    assert set(errors) == {"user@strict.test", "user@weak.test"}
    # No MX of strict.test is allowed by its policy: nothing was even tried.
    assert errors["user@strict.test"] == "all MXs returned transient failures (last: <nil>)"
    assert "invalid security level (TLS_INSECURE) for STS policy" in errors["user@weak.test"]
    [item] = a.queue()
    assert {r["address"]: r["status"] for r in item["rcpts"]} == {
        "user@srv-b.test": "sent",
        "user@testing.test": "sent",
        "user@strict.test": "pending",
        "user@weak.test": "pending",
    }
    assert len(b.mailbox()) == 2
    cache = a.setup.data_dir / "sts-cache"
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith("pol:")) == sorted(
        f"pol:{d}" for d in policies
    )
