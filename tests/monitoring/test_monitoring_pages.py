"""The monitoring server's pages over real HTTP on loopback (the server in-process).

What the daemon feeds it (counters, traces, queue items) is built here; the
end-to-end tests in test_monitoring_daemon.py check the same pages on a
daemon that handled real mail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from helpers.mail import wait_until
from helpers.monitoring import Feed, InProcess, Items, conversation, queue_item
from helpers.requirements import unavailable
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as classic_families

from chasquid.confdir.aliases import RecipientKind
from chasquid.daemon.queue.item import QueuedRecipient, RecipientStatus
from chasquid.daemon.telemetry import metrics
from chasquid.daemon.telemetry.trace import Trace

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture
def state() -> Feed:
    return Feed()


@pytest.fixture
def server(state: Feed) -> Iterator[InProcess]:
    with InProcess(state.sources()) as srv:
        yield srv


# --- index, plain errors -----------------------------------------------------------------


def test_index_says_who_and_links_every_page(server: InProcess) -> None:
    r = server.get("/")
    assert r.status == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    html = r.text
    assert "<title>box: chasquid monitoring</title>" in html
    assert "<h1>chasquid @mx.example.org</h1>" in html
    assert "1.2.3" in html and "2026-01-02 03:04:05 +0000" in html
    assert "built with Python 3." in html
    assert re.search(r"started \w{3}, \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}, up for \d+s", html)
    for link in (
        "/debug/queue",
        "/debug/traces",
        "/debug/vars",
        "/metrics",
        "/debug/flags",
        "/debug/config",
        "/debug/pprof/cmdline",
        "/debug/pprof/",
    ):
        assert f'href="{link}"' in html
    assert "/exit" not in html
    assert "not loaded yet" in html  # no queue yet


@pytest.mark.parametrize(
    "path", ["/nope", "/index.html", "/debug", "/debug/pprof/heap", "/metrics/x"]
)
def test_unknown_paths_are_404_with_a_plain_body(server: InProcess, path: str) -> None:
    r = server.get(path)
    assert (r.status, r.body) == (404, b"404 page not found\n")
    assert r.headers["content-type"].startswith("text/plain")


def test_queue_is_404_until_the_queue_is_loaded(server: InProcess) -> None:
    assert server.get("/debug/queue").status == 404


@pytest.mark.parametrize("path", ["/", "/metrics", "/debug/traces", "/debug/vars"])
def test_other_methods_are_405(server: InProcess, path: str) -> None:
    r = server.get(path, method="POST")
    assert r.status == 405
    assert r.body == b"405 method not allowed\n"
    assert "GET" in r.headers["allow"]


# --- /exit ---------------------------------------------------------------------------------


def test_exit_needs_post(server: InProcess, state: Feed) -> None:
    r = server.get("/exit")
    assert (r.status, r.body) == (405, b"Use POST method for exiting\n")
    assert state.exits == 0


def exits_soon(state: Feed) -> int:
    """The exit is asked for once the answer is sent: give the server's loop a moment."""
    wait_until(lambda: state.exits, 5, "the exit request")
    return state.exits


def test_exit_from_a_tool(server: InProcess, state: Feed) -> None:
    r = server.get("/exit", method="POST")
    assert (r.status, r.body) == (200, b"OK exiting")
    assert exits_soon(state) == 1


def test_exit_from_our_own_origin(server: InProcess, state: Feed) -> None:
    origin = f"http://127.0.0.1:{server.port}"
    r = server.get("/exit", method="POST", headers={"Origin": origin, "Referer": origin + "/"})
    assert r.status == 200
    assert exits_soon(state) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {"Sec-Fetch-Site": "cross-site"},
        # DNS rebinding: the attacker's name points at 127.0.0.1, so Origin and Host agree.
        {"Host": "evil.example:1099", "Origin": "http://evil.example:1099"},
    ],
)
def test_exit_refuses_other_sites(server: InProcess, state: Feed, headers: dict[str, str]) -> None:
    r = server.get("/exit", method="POST", headers=headers)
    assert r.status == 403
    assert b"another site" in r.body
    time.sleep(0.1)
    assert state.exits == 0


# --- traces -------------------------------------------------------------------------------


def test_families_table_links(server: InProcess, state: Feed) -> None:
    server.run(lambda: conversation(state.tracer))
    r = server.get("/debug/traces")
    assert r.status == 200
    html = r.text
    assert "<title>Traces</title>" in html and "<h1>Traces</h1>" in html
    names = re.findall(r'<td><a href="\?fam=[^&"]+&b=0&all=true">([^<]+)</a></td>', html)
    assert names == ["Courier.SMTP.Deliver", "Queue.SendLoop", "SMTP.Conn"]
    # Literal query strings with raw '&', as chasquid's pages have them.
    assert "?fam=Courier.SMTP.Deliver&b=-2&all=true" in html
    assert '?fam=Queue.SendLoop&b=-1&all=true">1 active' in html
    assert "?fam=SMTP.Conn&lat=true&all=true" in html
    assert "≥5ms" in html and "≥10s" in html
    # The recent errors of every family, for a glance.
    assert "Recent errors" in html and "451 4.7.0 try again later" in html


def test_bucket_view(server: InProcess, state: Feed) -> None:
    conn, _, _ = server.run(lambda: conversation(state.tracer))
    r = server.get("/debug/traces?fam=SMTP.Conn&b=0&all=true")
    assert r.status == 200
    html = r.text
    assert "<title>SMTP.Conn - ≥0s</title>" in html
    assert f'href="?trace={conn.id.replace("!", "%21")}"' in html
    assert "-&gt; HELO client.example" in html
    assert re.search(r"\d\d:\d\d:\d\d\.\d{6}", html)
    assert re.search(r"> \.\s*\d+<", html)  # deltas below a second: ' .  5000'
    assert "Only in bucket" in html


def test_errors_and_active_views(server: InProcess, state: Feed) -> None:
    _, _loop, _attempt = server.run(lambda: conversation(state.tracer))
    html = server.get("/debug/traces?fam=Courier.SMTP.Deliver&b=-2").text
    assert "<title>Courier.SMTP.Deliver - errors</title>" in html
    assert "error: 451 4.7.0 try again later" in html
    assert "parent:" in html and "Queue.SendLoop - AbCdEfGhIjK" in html
    html = server.get("/debug/traces?fam=Queue.SendLoop&b=-1").text
    assert "<title>Queue.SendLoop - active</title>" in html
    assert "(running)" in html
    assert "new child Courier.SMTP.Deliver someone@remote.example" in html


def test_trace_view_merges_linked_and_child_traces(server: InProcess, state: Feed) -> None:
    conn, loop, _attempt = server.run(lambda: conversation(state.tracer))
    html = server.get(f"/debug/traces?trace={conn.id}").text
    assert "<title>SMTP.Conn - 127.0.0.1:40000</title>" in html
    # The whole story of the message on one page: the connection, the queue item
    # it produced, and the item's delivery attempt with its error.
    assert "queued as AbCdEfGhIjK" in html
    assert "someone@remote.example temporary error" in html
    assert "error: 451 4.7.0 try again later" in html
    assert "· · error: 451" in html  # the attempt is two levels down
    # Both ways: the item's trace links back to the connection.
    html = server.get(f"/debug/traces?trace={loop.id}").text
    assert "received on SMTP.Conn 127.0.0.1:40000" in html
    assert f"trace={conn.id.replace('!', '%21')}&ref=" in html


def test_latency_view(server: InProcess, state: Feed) -> None:
    server.run(lambda: conversation(state.tracer))
    html = server.get("/debug/traces?fam=SMTP.Conn&lat=1").text
    assert "<title>SMTP.Conn - latency</title>" in html
    assert "Count: 1" in html
    assert "100.00%" in html


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("fam=Nope&b=0", 404, "Unknown family"),
        ("fam=SMTP.Conn&b=x", 400, "Invalid bucket (not a number)"),
        ("fam=SMTP.Conn&b=8", 400, "Invalid bucket number"),
        ("fam=SMTP.Conn&b=-3", 400, "Invalid bucket number"),
        ("trace=SMTP.Conn!1!2", 404, "Trace not found"),
    ],
)
def test_trace_page_errors(
    server: InProcess, state: Feed, query: str, status: int, message: str
) -> None:
    server.run(lambda: conversation(state.tracer))
    r = server.get(f"/debug/traces?{query}")
    assert r.status == status
    assert f'<p class="error">Error: {message}</p>' in r.text


def test_client_text_is_escaped_truncated_and_never_breaks_the_page(
    server: InProcess, state: Feed
) -> None:
    hostile = '<script>alert("x")</script>'

    def record() -> Trace:
        t = state.tracer.new("SMTP.Conn", f"{hostile}:25")
        t.debug(f"-> HELO {hostile}")
        t.debug("-> MAIL FROM:<\udcff\udcfe@\x1b[31mred>")  # undecodable bytes, an escape
        t.debug("-> NOOP " + "A" * 50_000)
        t.error(f"bad {hostile}")
        t.finish()
        return t

    t = server.run(record)
    for path in ("/debug/traces?fam=SMTP.Conn&b=0", f"/debug/traces?trace={t.id}", "/debug/traces"):
        r = server.get(path)
        assert r.status == 200
        html = r.text
        assert "<script>" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
        assert "\x1b" not in html
    html = server.get(f"/debug/traces?trace={t.id}").text
    assert "\\xff\\xfe@\\x1b[31mred" in html
    assert "A" * 50_000 not in html and "more characters]" in html
    assert len(html) < 40_000


# --- queue ------------------------------------------------------------------------------


@pytest.fixture
def queued(state: Feed) -> Items:
    state.queue = Items()
    failing = queue_item(
        "failing0001",
        QueuedRecipient(
            "someone@remote.example",
            status=RecipientStatus.PENDING,
            last_failure_message='451 4.7.0 "greylisted", try later',
            original_address="alias@mx.example.org",
        ),
        QueuedRecipient("local@mx.example.org", status=RecipientStatus.SENT),
        age=7200,
    )
    bounced = queue_item(
        "bounced0002",
        QueuedRecipient(
            "<script>x</script>@remote.example",
            kind=RecipientKind.FORWARD,
            status=RecipientStatus.FAILED,
            last_failure_message="550 5.1.1 <b>no such user</b>",
        ),
        QueuedRecipient("|cat", kind=RecipientKind.PIPE),
    )
    state.queue.items += [bounced, failing]
    state.queue.next["failing0001"] = datetime.now(UTC) + timedelta(minutes=5)
    return state.queue


def test_queue_text_dump(queued: Items, server: InProcess) -> None:
    r = server.get("/debug/queue")  # no Accept: text, as curl gets it
    assert r.status == 200 and r.headers["content-type"] == "text/plain; charset=utf-8"
    text = r.text
    head, _, rest = text.partition("\n\n## Item ")
    assert re.fullmatch(
        r"# Queue status\n\ndate: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ [+-]\d{4} \S+\nlength: 2",
        head,
    )
    blocks = ("## Item " + rest).split("\n\n")
    assert blocks[0].splitlines()[0] == "## Item failing0001"  # oldest first
    assert blocks[0].splitlines()[2:] == [
        "from: sender@example.org",
        "to: [alias@mx.example.org local@mx.example.org]",
        "PENDING someone@remote.example (EMAIL)",
        "  original address: alias@mx.example.org",
        '  last failure: "451 4.7.0 \\"greylisted\\", try later"',
        "SENT local@mx.example.org (EMAIL)",
        "  original address: ",
        '  last failure: ""',
    ]
    assert re.fullmatch(r"created at: \d{4}-\d\d-\d\d .*", blocks[0].splitlines()[1])
    assert "FAILED <script>x</script>@remote.example (FORWARD)" in blocks[1]
    assert "PENDING |cat (PIPE)" in blocks[1]
    assert text.endswith("\n\n")
    assert "secret body" not in text and "the body must never show" not in text
    forced = server.get("/debug/queue?format=text", headers={"Accept": "text/html"}).text
    assert forced.partition("length:")[2] == text.partition("length:")[2]


def test_queue_page_for_people(queued: Items, server: InProcess) -> None:
    for headers, path in (
        ({"Accept": "text/html,*/*"}, "/debug/queue"),
        ({}, "/debug/queue?format=html"),
    ):
        r = server.get(path, headers=headers)
        assert r.status == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    html = r.text
    assert "2 items" in html
    assert html.index("failing0001") < html.index("bounced0002")
    assert 'class="item failing"' in html and 'class="item failed"' in html
    assert "2 h ago" in html and "in 4 min" in html
    assert "451 4.7.0 &#34;greylisted&#34;, try later" in html
    assert "&lt;script&gt;x&lt;/script&gt;@remote.example" in html
    assert "550 5.1.1 &lt;b&gt;no such user&lt;/b&gt;" in html
    assert "<script>" not in html
    assert "secret body" not in html
    assert "alias@mx.example.org" in html  # the original address


def test_queue_page_links_an_item_to_its_trace(
    queued: Items, server: InProcess, state: Feed
) -> None:
    t = server.run(lambda: state.tracer.new("Queue.SendLoop", "failing0001"))
    html = server.get("/debug/queue?format=html").text
    assert f'href="/debug/traces?trace={t.id.replace("!", "%21")}"' in html


def test_index_counts_the_queue(queued: Items, server: InProcess) -> None:
    html = server.get("/").text
    assert ">2 items</a>" in html
    assert "2 with delivery errors" in html


# --- variables, metrics ---------------------------------------------------------------


def count(state: Feed) -> None:
    c = state.counters
    c.inc(metrics.QUEUE_PUTS, by=3)
    c.inc(metrics.SMTP_IN_COMMANDS, "EHLO")
    c.inc(metrics.SMTP_IN_COMMANDS, "DATA", by=2)
    c.inc(metrics.SMTP_IN_COMMANDS, 'unknown<"FOO">')
    c.inc(metrics.SMTP_IN_COMMANDS, "unknown<\udcff>")
    c.inc(metrics.QUEUE_DELIVERY_ATTEMPTS, "email:local")


def test_vars(server: InProcess, state: Feed) -> None:
    count(state)
    state.counters.inc(metrics.Counter("chasquid/undeclared/thing", ""))
    r = server.get("/debug/vars")
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    lines = r.text.splitlines()
    assert lines[0] == "{" and lines[-1] == "}"
    names = [json.loads("{" + line.rstrip(",") + "}").popitem()[0] for line in lines[1:-1]]
    assert names == sorted(names)
    data = json.loads(r.text)
    assert data["chasquid/queue/putCount"] == 3
    assert data["chasquid/smtpIn/commandCount"]["DATA"] == 2
    assert data["chasquid/smtpIn/tlsCount"] == {}  # declared, never counted
    assert data["chasquid/undeclared/thing"] == 1
    assert data["chasquid/version"] == "1.2.3"
    assert data["chasquid/sourceDateStr"] == "2026-01-02 03:04:05 +0000"
    assert data["chasquid/sourceDateTimestamp"] == 1767323045
    assert data["cmdline"] == ["chasquid", "-config_dir=/etc/chasquid", "-v=1"]
    assert data["memstats"]["rss_bytes"] > 0


def test_metrics_classic_text(server: InProcess, state: Feed) -> None:
    count(state)
    r = server.get("/metrics")
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = r.text
    assert (
        "# HELP chasquid_queue_putCount count of envelopes attempted to be put in the queue" in text
    )
    assert "chasquid_queue_putCount 3.0" in text
    assert 'chasquid_smtpIn_commandCount{command="unknown<\\"FOO\\">"} 1.0' in text
    assert 'chasquid_smtpIn_commandCount{command="unknown<\\\\udcff>"} 1.0' in text
    assert 'chasquid_queue_deliverAttempts{recipient_type="email:local"} 1.0' in text
    assert "# HELP chasquid_smtpIn_tlsCount count of TLS usage in incoming connections" in text
    names = re.findall(r"^# HELP (\S+)", text, re.M)
    assert names == sorted(names)
    families = {f.name: f for f in classic_families(text)}
    assert families["chasquid_sourceDateTimestamp"].samples[0].value == 1767323045


def test_metrics_openmetrics_for_prometheus(server: InProcess, state: Feed) -> None:
    count(state)
    # What Prometheus 2.x sends.
    accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
        "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    r = server.get("/metrics", headers={"Accept": accept})
    assert r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert r.text.endswith("# EOF\n")
    parsed = text_string_to_metric_families(r.text)  # type: ignore[no-untyped-call]
    families = {f.name: f for f in parsed}
    samples = {
        (s.name, tuple(s.labels.items())): s.value
        for s in families["chasquid_smtpIn_commandCount"].samples
    }
    assert samples[("chasquid_smtpIn_commandCount", (("command", "DATA"),))] == 2
    assert families["chasquid_queue_putCount"].samples[0].name == "chasquid_queue_putCount"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool (Debian package prometheus) is not installed")
    return path


def test_metrics_pass_promtool(server: InProcess, state: Feed) -> None:
    count(state)
    scrape = server.get("/metrics").body
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=scrape, capture_output=True, timeout=60
    )
    complaints = (result.stdout + result.stderr).decode().splitlines()
    # chasquid's camelCase names are kept on purpose; nothing else may be reported.
    others = [c for c in complaints if "should be written in 'snake_case' not 'camelCase'" not in c]
    assert others == []
    assert any("camelCase" in c for c in complaints)


# --- execution pages ----------------------------------------------------------------------


def test_flags(server: InProcess) -> None:
    r = server.get("/debug/flags")
    assert r.text == (
        "-config_dir=/etc/chasquid\n-v=1\n\n-logtime=false\n-testing__reload_every=30s\n"
    )


def test_config(server: InProcess) -> None:
    text = server.get("/debug/config").text
    assert text.startswith('hostname: "mx.example.org"\n')
    assert 'data_dir: "/var/lib/chasquid"' in text
    assert not text.endswith("\n\n")


def test_pprof(server: InProcess) -> None:
    r = server.get("/debug/pprof")
    assert r.status == 301 and r.headers["location"] == "/debug/pprof/"
    html = server.get("/debug/pprof/").text
    assert 'href="goroutine?debug=1"' in html and 'href="cmdline"' in html
    assert (
        server.get("/debug/pprof/cmdline").body == b"chasquid\x00-config_dir=/etc/chasquid\x00-v=1"
    )
    dump = server.get("/debug/pprof/goroutine?debug=2").text
    assert re.match(r"\d+ asyncio tasks, \d+ threads\n", dump)
    assert "task " in dump and "[running]" in dump
    assert "goroutine" in dump and "stacks.py" in dump  # the handler's own await chain
    assert "thread MainThread" in dump
