"""End-to-end reception tests: a real server, real config, queue and mail log on tmp_path."""

from __future__ import annotations

import base64
import smtplib
import ssl
from collections.abc import Callable

import pytest
from helpers.dns import dns_server
from helpers.rawclient import RawClient
from helpers.reception import HOSTNAME, PASSWORD, Running

from chasquid.daemon.smtpsrv.server import Mode
from chasquid.daemon.telemetry import metrics

MakeServer = Callable[..., Running]


def code(reply: str) -> str:
    """The code and enhanced code of the last reply line."""
    last = reply.split("\n")[-1]
    return " ".join(last.split(" ")[:2]) if last[4:5].isdigit() else last[:3]


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def starttls(c: RawClient, srv: Running, sni: str | None = HOSTNAME) -> None:
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    ctx = srv.client_tls()
    if sni is None or sni != HOSTNAME:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    c.wrap(ctx, sni)


def test_ehlo_extensions_before_and_after_tls(srv: Running, conn: RawClient) -> None:
    assert conn.cmd("EHLO client.example").split("\n")[1:] == [
        "250-8BITMIME",
        "250-PIPELINING",
        "250-SMTPUTF8",
        "250-ENHANCEDSTATUSCODES",
        "250-SIZE 52428800",
        "250-STARTTLS",
        "250 HELP",
    ]
    starttls(conn, srv)
    ehlo = conn.cmd("EHLO client.example")
    assert "250-AUTH PLAIN LOGIN" in ehlo and "STARTTLS" not in ehlo


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("HELO", "501"),
        ("EHLO   ", "501"),
        ("HELP", "214 2.0.0"),
        ("NOOP", "250 2.0.0"),
        ("RSET", "250 2.0.0"),
        ("VRFY user", "502 5.5.1"),
        ("EXPN list", "502 5.5.1"),
        ("BDAT 10", "500 5.5.1"),
        ("", "500 5.5.1"),
        ("AUTH PLAIN", "503 5.7.10"),
        ("MAIL TO:<a@b>", "500 5.5.2"),
        ("MAIL  FROM:<a@b>", "500 5.5.2"),
        ("MAIL FROM:", "500 5.5.4"),
        ("MAIL FROM:<a b@c>", "501 5.1.7"),
        ("MAIL FROM:<>SIZE=10", "501 5.1.7"),
        ("MAIL FROM:<nodomain>", "501 5.1.7"),
        ("MAIL FROM:<" + "a" * 251 + "@b.com>", "501 5.1.7"),
        ("MAIL FROM:<a@xn--->", "501 5.1.8"),
        ("RCPT TO:<user@example.com>", "503 5.5.1"),
        ("DATA", "503 5.5.1"),
    ],
)
def test_single_replies(conn: RawClient, line: str, expected: str) -> None:
    assert conn.cmd(line).startswith(expected)


def test_starttls_twice_and_quit(srv: Running, conn: RawClient) -> None:
    starttls(conn, srv)
    assert conn.cmd("STARTTLS").startswith("503 5.5.1")
    assert conn.cmd("QUIT").startswith("221 2.0.0")
    assert conn.closed()


def test_error_limit_421_after_two_errors(
    conn: RawClient, srv: Running, caplog: pytest.LogCaptureFixture
) -> None:
    assert conn.cmd("VRFY a").startswith("502")
    assert conn.cmd("XYZZY").startswith("500 5.5.1")
    assert conn.cmd("EXPN a").startswith("421 4.5.0")
    assert conn.closed()


@pytest.mark.parametrize("verb", ["GET / HTTP/1.1", "POST /x", "CONNECT a:1"])
def test_http_verbs_close(srv: Running, conn: RawClient, verb: str) -> None:
    assert conn.cmd("NOOP").startswith("250")
    assert conn.cmd(verb).startswith("502 5.7.0")
    assert conn.closed()
    assert srv.ctx.counters.get(metrics.SMTP_IN_WRONG_PROTOCOL, verb.split()[0]) == 1


def test_line_length_limit(conn: RawClient) -> None:
    assert conn.cmd("NOOP " + "x" * 995).startswith("250")  # exactly 1000 octets
    assert conn.cmd("NOOP " + "x" * 996).startswith("554")
    assert conn.closed()


def test_submission_requires_auth(make_server: MakeServer) -> None:
    srv = make_server(Mode.SUBMISSION)
    c = RawClient(srv.port)
    c.reply()
    assert c.cmd("EHLO x").startswith("250")
    assert c.cmd("MAIL FROM:<user@example.com>").startswith("550 5.7.9")
    c.close()


def deliver(c: RawClient, sender: str, rcpt: str, body: bytes) -> str:
    assert c.cmd("EHLO client.example").startswith("250")
    assert c.cmd(f"MAIL FROM:<{sender}>").startswith("250 2.1.5")
    assert c.cmd(f"RCPT TO:<{rcpt}>").startswith("250 2.1.5")
    assert c.cmd("DATA").startswith("354")
    c.send(body)
    return c.reply()


def test_queue_file_exists_when_250_arrives(srv: Running, conn: RawClient) -> None:
    reply = deliver(conn, "", "user@example.com", b"Subject: hi\r\n\r\nbody\r\n.\r\n")
    assert reply.startswith("250 2.0.0")
    item_id = reply.rsplit("Queued as ", 1)[1]
    files = [p.name for p in srv.queue_dir.iterdir()]
    assert any(item_id in f for f in files), files
    assert f"{item_id} from=<> queued ip=127.0.0.1:" in srv.maillog_text()
    item = srv.ctx.queue.get(item_id)
    assert item is not None
    # Every unauthenticated message gets a DKIM result, even without SPF (null sender).
    assert item.body.read().startswith(
        f"Authentication-Results: {HOSTNAME}\n\t;dkim=none\n".encode()
        + b"Received: from client.example ([127.0.0.1])\n\tby "
    )
    assert b'(over SMTP, plain text!, envelope from "<>")' in item.body.read()
    assert item.body.read().endswith(b"Subject: hi\n\nbody\n")


def test_bare_lf_in_data_is_521_and_closes(conn: RawClient) -> None:
    reply = deliver(conn, "", "user@example.com", b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<a@b>\r\n")
    assert reply.startswith("521 5.5.2")
    assert conn.closed()


def test_size_limit_552_keeps_envelope(make_server: MakeServer) -> None:
    srv = make_server(conf="max_data_size_mb: 1\n")
    c = RawClient(srv.port)
    c.reply()
    big = b"Subject: x\r\n\r\n" + (b"y" * 998 + b"\r\n") * 1100 + b".\r\n"
    assert deliver(c, "", "user@example.com", big).startswith("552 5.3.4")
    assert c.cmd("DATA").startswith("354")
    c.send(b"Subject: small\r\n\r\nok\r\n.\r\n")
    assert c.reply().startswith("250 2.0.0")
    c.close()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b".\r\n", "554 5.6.0"),
        (b"Hello world\r\n.\r\n", "554 5.6.0"),
        (b"Received: x\r\n" * 51 + b"\r\nbody\r\n.\r\n", "554 5.4.6"),
        (b"Received: x\r\n" * 50 + b"\r\nbody\r\n.\r\n", "250 2.0.0"),
    ],
)
def test_header_checks(conn: RawClient, srv: Running, body: bytes, expected: str) -> None:
    assert deliver(conn, "a@example.org", "user@example.com", body).startswith(expected)


@pytest.mark.parametrize(
    ("rcpt", "expected"),
    [
        ("someone@elsewhere.example", "503 5.7.1"),
        ("user%elsewhere.example@example.com", "550 5.1.1"),
        ("@example.com:someone@elsewhere.example", "501 5.1.3"),
        ('"someone@elsewhere.example"@example.com', "550"),
        ("someone@elsewhere.example.", "501 5.1.3"),
        ("user@example.com.", "501 5.1.3"),
        ("user@exаmple.com", "503 5.7.1"),  # Cyrillic a: a look-alike, not local
        ("nobody@example.com", "550 5.1.1"),
        ("user@xn--bcher-kva.example", "550 5.1.1"),
        ("USER+tag@Example.COM", "250 2.1.5"),
        ("postmaster@example.com", "250 2.1.5"),
        ("Ⅳ@example.com", "550 5.1.3"),
    ],
)
def test_rcpt_relay_and_existence(srv: Running, conn: RawClient, rcpt: str, expected: str) -> None:
    assert conn.cmd("EHLO x").startswith("250")
    assert conn.cmd("MAIL FROM:<>").startswith("250")
    assert conn.cmd(f"RCPT TO:<{rcpt}>").startswith(expected)


def test_relay_rejection_logged(srv: Running, conn: RawClient) -> None:
    conn.cmd("MAIL FROM:<a@example.org>")
    conn.cmd("RCPT TO:<b@elsewhere.example>")
    assert "rejected from=a@example.org to=[b@elsewhere.example] - relay not allowed" in (
        srv.maillog_text()
    )


def test_recipient_limit(conn: RawClient) -> None:
    conn.cmd("MAIL FROM:<>")
    conn.send("".join("RCPT TO:<user@example.com>\r\n" for _ in range(101)))
    for _ in range(101):
        assert conn.reply().startswith("250 2.1.5")
    assert conn.cmd("RCPT TO:<user@example.com>").startswith("452 4.5.3")


def test_pipelining(conn: RawClient) -> None:
    conn.send(
        "EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n"
        "Subject: p\r\n\r\nx\r\n.\r\nNOOP\r\n"
    )
    replies = [conn.reply() for _ in range(6)]
    assert [r[:3] for r in replies] == ["250", "250", "250", "354", "250", "250"]


def test_smtputf8(srv: Running, conn: RawClient) -> None:
    reply = deliver(
        conn, "ñandú@example.org", "user@example.com", "Subject: ñ\r\n\r\nü\r\n.\r\n".encode()
    )
    assert reply.startswith("250")


def test_auth_plain_and_login_with_smtplib(srv: Running) -> None:
    for mech in ("PLAIN", "LOGIN"):
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as s:
            tls = srv.client_tls()
            tls.check_hostname = False  # smtplib sends the IP as SNI
            s.starttls(context=tls)
            s.ehlo("laptop")
            s.user, s.password = "user@example.com", PASSWORD
            s.auth(mech, getattr(s, "auth_" + mech.lower()))
            s.sendmail(
                "user@example.com", ["someone@elsewhere.example"], b"Subject: r\r\n\r\nx\r\n"
            )
    assert "auth succeeded for user@example.com" in srv.maillog_text()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("AUTH CRAM-MD5", "534 5.7.9"),
        ("AUTH", "534 5.7.9"),
        ("AUTH PLAIN ", "501 5.5.2"),
        ("AUTH PLAIN *", "501 5.5.2"),
        ("AUTH PLAIN !!!", "501 5.5.2"),
        ("AUTH PLAIN " + base64.b64encode(b"a\0b").decode(), "501 5.5.2"),
        ("AUTH PLAIN " + plain("user@example.com", "wrong"), "535 5.7.8"),
        ("AUTH PLAIN " + plain("recv@example.com", ""), "535 5.7.8"),
        ("AUTH plain " + plain("user@example.com", PASSWORD), "235 2.7.0"),
        ("AUTH PLAIN " + plain("USER@EXAMPLE.COM", PASSWORD), "235 2.7.0"),
    ],
)
def test_auth_replies(srv: Running, conn: RawClient, line: str, expected: str) -> None:
    starttls(conn, srv)
    assert conn.cmd(line).startswith(expected)


def test_auth_334_challenge_and_already_authenticated(srv: Running, conn: RawClient) -> None:
    starttls(conn, srv)
    assert conn.cmd("AUTH PLAIN") == "334 "
    assert conn.cmd(plain("user@example.com", PASSWORD)).startswith("235")
    assert conn.cmd("AUTH PLAIN").startswith("503 5.5.1")
    # An authenticated session may relay, and gets no Received-SPF.
    reply = deliver(
        conn, "user@example.com", "x@elsewhere.example", b"Subject: s\r\n\r\nb\r\n.\r\n"
    )
    assert reply.startswith("250")


def test_auth_failure_logged_with_fail2ban_line(
    srv: Running, conn: RawClient, caplog: pytest.LogCaptureFixture
) -> None:
    starttls(conn, srv)
    conn.cmd("AUTH PLAIN " + plain("user@example.com", "bad"))
    assert "auth failed for user@example.com" in srv.maillog_text()
    assert any(
        "SMTP.Conn 127.0.0.1:" in r.getMessage() and "AUTH failed: 535" in r.getMessage()
        for r in caplog.records
    )


def test_sni_chooses_certificate_and_hostname(srv: Running, conn: RawClient) -> None:
    starttls(conn, srv, sni="host.wild.test")
    assert isinstance(conn.sock, ssl.SSLSocket)
    cert = conn.sock.getpeercert(binary_form=True)
    assert cert is not None
    from cryptography import x509

    names = (
        x509.load_der_x509_certificate(cert)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value.get_values_for_type(x509.DNSName)
    )
    assert "*.wild.test" in names
    assert conn.cmd("EHLO x").startswith("250-host.wild.test ")


def test_invalid_sni_keeps_hostname(srv: Running, conn: RawClient) -> None:
    starttls(conn, srv, sni="bad_name.example")
    assert conn.cmd("EHLO x").startswith(f"250-{HOSTNAME} ")


def test_implicit_tls_greeting_uses_sni(make_server: MakeServer) -> None:
    srv = make_server(Mode.SUBMISSION_TLS)
    c = RawClient(srv.port)
    ctx = srv.client_tls()
    c.wrap(ctx, "other.example.net")
    assert c.reply() == "220 other.example.net ESMTP chasquid"
    assert "250-AUTH PLAIN LOGIN" in c.cmd("EHLO x")
    c.close()


def test_proxy_protocol(make_server: MakeServer) -> None:
    srv = make_server(conf="haproxy_incoming: true\n")
    c = RawClient(srv.port)
    c.send("PROXY TCP4 192.0.2.7 127.0.0.1 41234 25\r\n")
    assert c.reply().startswith("220")
    c.cmd("MAIL FROM:<>")
    c.cmd("RCPT TO:<x@elsewhere.example>")
    assert "192.0.2.7:41234 rejected" in srv.maillog_text()
    c.close()
    bad = RawClient(srv.port)
    bad.send("PROXY UNKNOWN\r\n")
    assert bad.closed()
    bad.close()


def test_spf_fail_and_pass(make_server: MakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    zone = {
        "bad.example": {"TXT": ["v=spf1 -all"]},
        "good.example": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    }
    with dns_server(zone) as addr:
        monkeypatch.setenv("CHASQUID_TEST_DNS", addr)
        srv = make_server()
        c = RawClient(srv.port)
        c.reply()
        c.cmd("EHLO x")
        assert c.cmd("MAIL FROM:<a@bad.example>") == "550 5.7.23 SPF check failed: matched all"
        reply = deliver(c, "a@good.example", "user@example.com", b"Subject: s\r\n\r\nb\r\n.\r\n")
        assert reply.startswith("250")
        item = srv.ctx.queue.get(reply.rsplit("Queued as ", 1)[1])
        assert item is not None
        assert item.body.read().startswith(
            f"Authentication-Results: {HOSTNAME}\n\t;spf=pass (matched ip)\n\t;dkim=none\n"
            "Received-SPF: pass (matched ip)\nReceived: ".encode()
        )
        assert "failed SPF: matched all" in srv.maillog_text()
        # SPF pass over plain text recorded the domain at PLAIN: still fine.
        assert srv.ctx.domaininfo.get("good.example") is not None
        c.close()


HOOK = """#!/bin/sh
env | sort > "$PWD/../hook-env"
case "$RCPT_TO" in
  *perm*) echo "5.7.1 spam detected"; exit 20 ;;
  *temp*) echo "first"; echo "4.7.1 try later"; exit 1 ;;
esac
printf 'X-Hook: yes\\n'
"""


def test_post_data_hook(make_server: MakeServer) -> None:
    srv = make_server(hook=HOOK)
    (srv.root / "conf" / "domains" / "example.com" / "aliases").write_text(
        "perm: user\ntemp: user\n"
    )
    c = RawClient(srv.port)
    c.reply()
    reply = deliver(c, "", "user@example.com", b"Subject: s\r\n\r\nb\r\n.\r\n")
    assert reply.startswith("250")
    item = srv.ctx.queue.get(reply.rsplit("Queued as ", 1)[1])
    assert item is not None
    assert item.body.read().startswith(b"X-Hook: yes\nAuthentication-Results: ")
    assert b"\n\t;dkim=none\nReceived: " in item.body.read()
    env = dict(
        line.split("=", 1)
        for line in (srv.root / "hook-env").read_text().splitlines()
        if "=" in line
    )
    assert env["MAIL_FROM"] == "<>" and env["RCPT_TO"] == "user@example.com"
    assert env["FROM_LOCAL_DOMAIN"] == "1" and env["ON_TLS"] == "0" and env["SPF_PASS"] == "0"
    assert env["EHLO_DOMAIN"] == "client.example" and env["AUTH_AS"] == ""
    assert env["REMOTE_ADDR"].startswith("127.0.0.1:")
    c.close()


@pytest.mark.parametrize(
    ("rcpt", "expected"), [("perm", "554 5.7.1 spam detected"), ("temp", "451 4.7.1 try later")]
)
def test_post_data_hook_rejects(make_server: MakeServer, rcpt: str, expected: str) -> None:
    srv = make_server(hook=HOOK.replace('"$RCPT_TO"', f'"${{RCPT_TO}}{rcpt}"'))
    c = RawClient(srv.port)
    c.reply()
    assert deliver(c, "", "user@example.com", b"Subject: s\r\n\r\nb\r\n.\r\n") == expected
    assert f"- {expected[4:]}" in srv.maillog_text()
    c.close()
