"""The pages in a real browser (headless Chromium): readable without JavaScript, never scriptable
by what a client sent. Screenshots go to the test's temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.browser import chromium, screenshot_dir  # noqa: F401
from helpers.monitoring import HOSTILE, Feed, InProcess, Items, Served, conversation, queue_item
from playwright.sync_api import Browser, Dialog, Page

from chasquid.daemon.queue.item import QueuedRecipient, RecipientStatus


@pytest.fixture
def feed() -> Feed:
    feed = Feed(queue=Items())
    assert feed.queue is not None
    feed.queue.items.append(
        queue_item(
            "AbCdEfGhIjK",
            QueuedRecipient(
                "someone@remote.example",
                status=RecipientStatus.PENDING,
                last_failure_message=f"451 4.7.0 greylisted {HOSTILE}",
            ),
            age=600,
        )
    )
    feed.queue.next["AbCdEfGhIjK"] = datetime.now(UTC) + timedelta(minutes=3)
    return feed


@pytest.fixture
def server(feed: Feed) -> Iterator[InProcess]:
    with InProcess(feed.sources()) as srv:
        srv.run(lambda: conversation(feed.tracer, helo=HOSTILE))
        yield srv


def page_without_js(browser: Browser) -> Page:
    return browser.new_context(java_script_enabled=False).new_page()


def test_pages_read_without_javascript(
    chromium: Browser,  # noqa: F811
    server: InProcess,
    tmp_path: Path,
) -> None:
    page = page_without_js(chromium)
    shots = screenshot_dir(tmp_path)
    base = f"http://127.0.0.1:{server.port}"

    page.goto(base + "/")
    page.screenshot(path=shots / "index.png", full_page=True)
    assert page.title() == "box: chasquid monitoring"
    assert page.inner_text("h1") == "chasquid @mx.example.org"
    page.click("text=1 item")  # the queue, from the index
    assert page.url == base + "/debug/queue"
    page.screenshot(path=shots / "queue.png", full_page=True)
    section = page.locator("section.item.failing")
    assert "AbCdEfGhIjK" in section.inner_text()
    assert "451 4.7.0 greylisted" in section.inner_text()
    assert "in 2 min" in section.inner_text() or "in 3 min" in section.inner_text()

    page.goto(base + "/debug/traces")
    page.screenshot(path=shots / "traces.png", full_page=True)
    page.click("text=SMTP.Conn")
    page.screenshot(path=shots / "bucket.png", full_page=True)
    page.click("text=127.0.0.1:40000")
    page.screenshot(path=shots / "trace.png", full_page=True)
    assert page.title() == "SMTP.Conn - 127.0.0.1:40000"
    timeline = page.inner_text("table.events")
    assert "queued as AbCdEfGhIjK" in timeline
    assert "error: 451 4.7.0 try again later" in timeline
    # What the client sent shows as the text it was.
    assert f"-> HELO {HOSTILE}" in timeline
    for name in ("index", "queue", "traces", "bucket", "trace"):
        assert (shots / f"{name}.png").stat().st_size > 1000


def test_what_clients_send_never_runs_as_script(
    chromium: Browser,  # noqa: F811
    server: InProcess,
) -> None:
    page = chromium.new_context(java_script_enabled=True).new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    base = f"http://127.0.0.1:{server.port}"
    conn_link = None
    for path in ("/", "/debug/queue", "/debug/traces", "/debug/traces?fam=SMTP.Conn&b=0"):
        page.goto(base + path)
        assert page.evaluate("window.pwned") is None, path
        if path.endswith("b=0"):
            conn_link = page.get_attribute("text=127.0.0.1:40000", "href")
    assert conn_link is not None
    page.goto(base + "/debug/traces" + conn_link)
    assert page.evaluate("window.pwned") is None
    assert page.locator("img[src=x]").count() == 0
    assert dialogs == []


def test_a_person_finds_what_happened_to_the_mail(
    chromium: Browser,  # noqa: F811
    served: Served,
    tmp_path: Path,
) -> None:
    """Headless Chromium (no JavaScript) on a daemon that handled real mail."""
    page = page_without_js(chromium)
    shots = screenshot_dir(tmp_path)

    page.goto(served.base + "/")
    page.screenshot(path=shots / "daemon-index.png", full_page=True)
    assert page.inner_text("h1") == "chasquid @testserver"
    glance = page.inner_text("table")
    assert "2 items" in glance and "2 with delivery errors" in glance

    page.click("text=2 items")
    page.screenshot(path=shots / "daemon-queue.png", full_page=True)
    deferred = page.locator(f'section[id="{served.deferred}"]')
    assert "mailbox busy" in deferred.inner_text()
    assert "pending" in deferred.inner_text()
    remote = page.locator(f'section[id="{served.remote}"]')
    assert "someone@remote.example" in remote.inner_text()
    assert "Could not dial: mx.remote.example" in remote.inner_text()

    # From the queue item to its trace, to the connection that sent it.
    deferred.locator("text=trace").click()
    page.screenshot(path=shots / "daemon-item-trace.png", full_page=True)
    assert page.title() == f"Queue.SendLoop - {served.deferred}"
    assert "mailbox busy" in page.inner_text("table.events")
    page.click("text=queued by SMTP.Conn")
    page.screenshot(path=shots / "daemon-connection-trace.png", full_page=True)
    story = page.inner_text("table.events")
    assert "-> AUTH <redacted>" in story
    assert f"Queued as {served.deferred}" in story
    assert "deferred@testserver temporary error" in story

    # The failed AUTH and the hostile client, among the connections with errors.
    page.goto(served.base + "/debug/traces")
    page.click("text=SMTP.Conn")
    page.screenshot(path=shots / "daemon-connections.png", full_page=True)
    text = page.inner_text("body")
    assert "535  5.7.8 Incorrect user or password" in text
    assert "-> HELO <script>window.pwned=1</script>" in text

    page.goto(served.base + "/metrics")
    page.screenshot(path=shots / "daemon-metrics.png", full_page=True)
    assert 'chasquid_smtpIn_responseCodeCount{code="535"} 1.0' in page.inner_text("body")
    page.goto(served.base + "/debug/vars")
    page.screenshot(path=shots / "daemon-vars.png", full_page=True)
    assert '"chasquid/queue/length": 2' in page.inner_text("body")
    for name in ("index", "queue", "item-trace", "connection-trace", "connections", "metrics"):
        assert (shots / f"daemon-{name}.png").stat().st_size > 1000
