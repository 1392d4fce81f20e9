"""The real daemon delivers remote mail over SMTP with STARTTLS to a server found by MX."""

from __future__ import annotations

import smtplib
import ssl
import time

from aiosmtpd.controller import Controller
from helpers.daemon import DaemonFactory, Setup
from helpers.dns import Zone, dns_server
from helpers.smtppeers import Handler, shared_port


def test_remote_recipients_of_one_domain_go_in_one_secure_transaction(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    setup = chasquid_setup
    port = shared_port()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    setup.ca.issue_cert("mx.remote.test").configure_cert(tls)
    handler = Handler()
    zone: Zone = {
        "remote.test": {"MX": [(10, "mx.remote.test.")]},
        "mx.remote.test": {"A": ["127.0.0.2"]},
    }
    controller = Controller(
        handler, hostname="127.0.0.2", port=port, tls_context=tls, require_starttls=False
    )
    controller.start()
    try:
        with dns_server(zone) as dns_addr:
            env = {
                "CHASQUID_TEST_DNS": dns_addr,
                "CHASQUID_TEST_SMTP_PORT": str(port),
                "SSL_CERT_FILE": str(setup.ca_file),
            }
            daemon = chasquid_daemon(env=env)
            with smtplib.SMTP_SSL(
                "127.0.0.1", setup.submission_tls_port, context=setup.client_context(), timeout=30
            ) as c:
                c.login(setup.user_addr, setup.password)
                c.sendmail(
                    setup.user_addr,
                    ["one@remote.test", "two@remote.test"],
                    b"Subject: x\r\n\r\nhi\r\n",
                )
            deadline = time.monotonic() + 30
            while not handler.received and time.monotonic() < deadline:
                time.sleep(0.05)
            daemon.wait_for_log(r"two@remote.test sent")
    finally:
        controller.stop()

    assert handler.mails == 1
    [msg] = handler.received
    assert msg.tls
    assert msg.mail_from == setup.user_addr
    assert sorted(msg.rcpt_tos) == ["one@remote.test", "two@remote.test"]
    assert b"\r\nhi\r\n" in msg.content
    info = (setup.data_dir / "domaininfo" / "s:remote.test").read_text()
    assert "TLS_SECURE" in info
    log = setup.mail_log.read_text()
    assert "to=one@remote.test sent" in log and "to=two@remote.test sent" in log
