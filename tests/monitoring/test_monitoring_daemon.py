"""The monitoring server of a real daemon that handled real mail (see conftest.py's ``served``)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from urllib.parse import unquote

from helpers.daemon import DaemonFactory, Setup, messages, run_to_exit
from helpers.mail import wait_until
from helpers.monitoring import HOSTILE, Served
from helpers.ports import free_port
from helpers.requirements import unavailable


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a classic-format scrape."""
    inside = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name + (f"{{{inside}}}" if inside else "")) + r" (\S+)$"
    m = re.search(pattern, text, re.M)
    assert m, f"{name} {labels} not in:\n{text}"
    return float(m.group(1))


def trace_link(html: str, text: str) -> str:
    """The href of the link whose text contains ``text``."""
    m = re.search(r'<a href="([^"]+)"[^>]*>[^<]*' + re.escape(text), html)
    assert m, f"no link with {text!r}"
    return m.group(1).replace("&amp;", "&")


def test_the_queue_shows_what_is_pending_and_why(served: Served) -> None:
    text = served.get("/debug/queue?format=text").text
    assert "length: 2" in text
    assert f"## Item {served.deferred}" in text and f"## Item {served.remote}" in text
    assert served.delivered not in text and served.bounced not in text
    assert "PENDING deferred@testserver (EMAIL)" in text
    assert re.search(r'last failure: ".*mailbox busy', text)
    assert "PENDING someone@remote.example (EMAIL)" in text
    assert "body text never shown" not in text

    html = served.get("/debug/queue", headers={"Accept": "text/html"}).text
    assert "2 items" in html
    assert html.count('class="item failing"') == 2
    assert "mailbox busy" in html
    assert "body text never shown" not in html


def test_a_connection_links_to_its_item_and_its_delivery_and_back(served: Served) -> None:
    html = served.get("/debug/queue?format=html").text
    # The deferred item's trace, from the queue page.
    section = html[html.index(f'id="{served.deferred}"') :]
    item_link = trace_link(section, "trace")
    item_page = served.get(item_link).text
    assert f"<title>Queue.SendLoop - {served.deferred}</title>" in item_page
    assert "new child Courier.MDA deferred@testserver" in item_page
    assert "deferred@testserver temporary error:" in item_page and "mailbox busy" in item_page
    # Back to the connection that queued it...
    conn_link = trace_link(item_page, "queued by SMTP.Conn")
    conn_page = served.get("/debug/traces" + conn_link).text
    assert "<title>SMTP.Conn - 127.0.0.1:" in conn_page
    assert "-&gt; AUTH &lt;redacted&gt;" in conn_page
    assert f"&lt;- 250  2.0.0 Queued as {served.deferred}" in conn_page
    # ...whose own page tells the whole story, the delivery attempt included.
    assert f"queued as {served.deferred}" in conn_page
    assert "error: deferred@testserver: " in conn_page
    # And the delivery attempt links up to its item.
    attempt_link = trace_link(item_page, "new child Courier.MDA")
    attempt_page = served.get("/debug/traces" + attempt_link).text
    assert "<title>Courier.MDA - deferred@testserver</title>" in attempt_page
    assert f"Queue.SendLoop - {served.deferred}" in attempt_page  # its parent


def test_traces_list_every_family_and_the_errors(served: Served) -> None:
    html = served.get("/debug/traces").text
    families = re.findall(r'<td><a href="\?fam=([^&"]+)&b=0&all=true">', html)
    for family in (
        "Authentication",
        "Courier.MDA",
        "Courier.SMTP.Deliver",
        "Queue.SendLoop",
        "SMTP.Conn",
    ):
        assert family in families
    assert families == sorted(families)
    assert '?fam=Authentication&b=-1&all=true">1 active' in html
    assert "Recent errors" in html
    auth = served.get("/debug/traces?fam=Authentication&b=-1").text
    assert "AUTH as user@testserver: failed" in auth
    assert "AUTH as user@testserver: successful" in auth
    remote = served.get("/debug/traces?fam=Courier.SMTP.Deliver&b=-2").text
    # The courier's own steps, in the trace of the attempt.
    assert "MXs of remote.example: mx.remote.example" in remote
    assert "mx.remote.example: Could not dial" in remote
    assert "error: someone@remote.example: all MXs returned transient failures" in remote


def test_nothing_a_client_sent_reaches_a_page_unescaped(served: Served) -> None:
    html = served.get("/debug/traces?fam=SMTP.Conn&b=0").text
    assert "-&gt; HELO &lt;script&gt;window.pwned=1&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&#34;window.pwned=1&#34;&gt;" in html
    for path in (
        "/",
        "/debug/queue?format=html",
        "/debug/traces",
        "/debug/traces?fam=SMTP.Conn&b=-2",
    ):
        page = served.get(path).text
        assert "<script>" not in page and "<img" not in page, path
    assert HOSTILE not in served.get("/debug/traces?fam=SMTP.Conn&b=0").text


def test_metrics_moved_with_the_mail(served: Served) -> None:
    text = served.get("/metrics").text
    assert metric(text, "chasquid_queue_putCount") == 5  # four messages and a DSN
    assert metric(text, "chasquid_queue_dsnQueued") == 1
    assert metric(text, "chasquid_queue_length") == 2
    assert metric(text, "chasquid_queue_deliverAttempts", recipient_type="email:local") == 4
    assert metric(text, "chasquid_queue_deliverAttempts", recipient_type="email:remote") == 1
    assert metric(text, "chasquid_queue_deliveryResults", result="sent") == 2
    assert metric(text, "chasquid_queue_deliveryResults", result="temporary") == 2
    assert metric(text, "chasquid_queue_deliveryResults", result="permanent") == 1
    assert metric(text, "chasquid_smtpIn_responseCodeCount", code="535") == 1
    assert metric(text, "chasquid_smtpIn_commandCount", command="DATA") == 4
    assert metric(text, "chasquid_smtpIn_tlsCount", status="tls") == 4
    assert metric(text, "chasquid_sourceDateTimestamp") > 1e9
    vars_text = served.get("/debug/vars").text
    assert '"chasquid/queue/putCount": 5' in vars_text
    assert '"chasquid/queue/length": 2' in vars_text


def test_promtool_finds_nothing_but_the_camel_case_names(served: Served) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool (Debian package prometheus) is not installed")
    scrape = served.get("/metrics").body
    result = subprocess.run(
        [promtool, "check", "metrics"], input=scrape, capture_output=True, timeout=60
    )
    complaints = (result.stdout + result.stderr).decode().splitlines()
    others = [c for c in complaints if "should be written in 'snake_case' not 'camelCase'" not in c]
    assert others == []
    assert complaints  # the camelCase names are there, and promtool read them


def test_index_flags_config_and_cmdline(served: Served) -> None:
    html = served.get("/").text
    assert ": chasquid monitoring</title>" in html
    assert "<h1>chasquid @testserver</h1>" in html
    assert ">2 items</a>" in html
    flags = served.get("/debug/flags").text
    given, _, others = flags.partition("\n\n")
    assert f"-config_dir={served.setup.config_dir}" in given.splitlines()
    assert "-testing__reload_every=1h0m0s" in given.splitlines()
    assert "-testing__retry_schedule=1h" in given.splitlines()
    assert "-logtime=false" in others.splitlines()
    assert "-v=0" in others.splitlines()
    config = served.get("/debug/config").text
    assert 'hostname: "testserver"' in config
    assert f'monitoring_address: "127.0.0.1:{served.port}"' in config
    cmdline = served.get("/debug/pprof/cmdline").body.split(b"\0")
    assert f"--config_dir={served.setup.config_dir}".encode() in cmdline


def test_post_exit_stops_the_daemon_gracefully(served: Served) -> None:
    assert (
        served.get("/exit", method="POST", headers={"Origin": "http://evil.example"}).status == 403
    )
    assert served.daemon.proc.poll() is None
    r = served.get("/exit", method="POST")
    assert (r.status, r.body) == (200, b"OK exiting")
    assert served.daemon.wait(45) == 0
    log = served.daemon.log_text()
    assert "Exit requested over HTTP" in log
    assert "chasquid exiting" in log


def test_start_up_lines(served: Served) -> None:
    lines = messages(served.daemon.log_text())
    assert f"Monitoring HTTP server listening on 127.0.0.1:{served.port}" in lines
    # It listens before domains are loaded, as chasquid does.
    assert lines.index(f"Monitoring HTTP server listening on 127.0.0.1:{served.port}") < (
        lines.index("Loading domains:")
    )
    assert not [line for line in lines if "not a loopback address" in line]


def test_a_busy_monitoring_port_is_fatal(chasquid_setup: Setup) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        chasquid_setup.extra_conf.append(f'monitoring_address: "127.0.0.1:{port}"')
        chasquid_setup.write_conf()
        status, log = run_to_exit(chasquid_setup)
    assert status == 1
    fatal = messages(log, "☠")
    assert fatal == [
        f"Monitoring server failed: listen tcp 127.0.0.1:{port}: bind: address already in use"
    ]


def test_an_address_beyond_loopback_is_warned_about(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    port = free_port()
    chasquid_setup.extra_conf.append(f'monitoring_address: ":{port}"')
    chasquid_setup.write_conf()
    d = chasquid_daemon()
    errors = messages(d.log_text(), "E")
    assert errors == [
        f'Monitoring address ":{port}" is not a loopback address: whoever can reach it can '
        "read the queue, the traces and the configuration, and stop the daemon"
    ]
    wait_until(lambda: b"chasquid" in _get_index(port), 10, "the index page")


def _get_index(port: int) -> bytes:
    from helpers.monitoring import fetch

    return fetch(port, "/").body


def test_trace_ids_in_links_are_percent_encoded(served: Served) -> None:
    html = served.get("/debug/traces?fam=SMTP.Conn&b=0").text
    ids = [unquote(m) for m in re.findall(r'href="\?trace=([^"&]+)"', html)]
    assert ids and all(i.startswith("SMTP.Conn!") for i in ids)
