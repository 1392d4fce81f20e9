"""Delivery through the real daemon: Maildir via an MDA script, pipe and catch-all aliases,
queue administration through chasquid-util, and kill -9 during a flood of mail."""

from __future__ import annotations

import json
import random
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.daemon import DaemonFactory, Setup, start
from helpers.mail import maildir_mda, maildir_messages, wait_until
from helpers.programs import shell_script

MESSAGE = b"From: user@testserver\r\nSubject: hello there\r\n\r\nFirst line.\r\n\r\n.dot line\r\n"

#: Retries every second or so, so flush and retry tests do not wait minutes.
FAST = "--testing__retry_schedule=1s"


def mailbox(setup: Setup, user: str) -> list[bytes]:
    return maildir_messages(setup.root, user)


def send(setup: Setup, sender: str, rcpts: list[str], data: bytes = MESSAGE) -> None:
    with smtplib.SMTP_SSL(
        "127.0.0.1", setup.submission_tls_port, context=setup.client_context(), timeout=30
    ) as c:
        c.login(setup.user_addr, setup.password)
        assert c.sendmail(sender, rcpts, data) == {}


def util(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from chasquid_util.cli import main; main()",
            f"-C={setup.config_dir}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def queue_files(setup: Setup) -> list[Path]:
    if not setup.queue_dir.exists():
        return []
    return [p for p in setup.queue_dir.iterdir() if p.name.startswith("m:")]


def test_maildir_pipe_and_catch_all(chasquid_setup: Setup, chasquid_daemon: DaemonFactory) -> None:
    s = chasquid_setup
    s.set_mda(maildir_mda(s.root))
    piped = s.root / "piped"
    shell_script(s.config_dir / "pipe.sh", f'cat > "{piped}"\n')
    (s.config_dir / "domains" / s.domain / "aliases").write_text("pipe: | ./pipe.sh\n*: user\n")
    d = chasquid_daemon()

    send(s, s.user_addr, [s.user_addr])
    wait_until(lambda: len(mailbox(s, "user")) == 1, what="delivery to the maildir")
    [got] = mailbox(s, "user")
    # Byte-exact: our Received header on top, then the message as sent, CRLF.
    assert got.endswith(MESSAGE)
    added = got[: -len(MESSAGE)]
    assert added.startswith(b"Received: ") and added.endswith(b"\r\n")
    assert b"\r\n\r\n" not in added and b"\n" not in added.replace(b"\r\n", b"")

    send(s, s.user_addr, ["pipe@testserver", "nobody+x@testserver"])
    wait_until(lambda: piped.exists() and len(mailbox(s, "user")) == 2, what="pipe and catch-all")
    assert piped.read_bytes().endswith(MESSAGE.replace(b"\r\n", b"\n"))
    assert b"\r\n" not in piped.read_bytes()
    wait_until(lambda: not queue_files(s), what="the queue to empty")
    log = d.mail_log_text()
    assert re.search(r" from=user@testserver to=\./pipe\.sh sent$", log, re.M)
    assert re.search(r" from=user@testserver to=user@testserver sent$", log, re.M)
    assert "Queue.SendLoop" in d.log_text()

    r = util(s, "aliases-resolve", "pipe@testserver")
    assert (r.returncode, r.stdout, r.stderr) == (0, "(pipe)  ./pipe.sh\n", "")
    r = util(s, "aliases-resolve", "someone@testserver")
    assert (r.returncode, r.stdout, r.stderr) == (0, "(email)  user@testserver\n", "")


def test_queue_list_show_flush_remove(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    s = chasquid_setup
    # Temporary failures until "ok" exists; then deliver to the maildir.
    ok = s.root / "ok"
    s.set_mda(f'[ -e "{ok}" ] || {{ echo "mailbox busy"; exit 75; }}\n' + maildir_mda(s.root))
    for user in ("a", "b", "c"):
        s.add_user(user, "pw-" + user)
    d = chasquid_daemon("--testing__retry_schedule=1h")

    send(s, s.user_addr, ["a@testserver"])
    send(s, s.user_addr, ["b@testserver"])
    d.wait_for_log(r"failed \(temporary\)", count=2, mail_log=True)

    r = util(s, "queue", "list", "--json")
    assert r.returncode == 0, r.stderr
    items = json.loads(r.stdout)
    assert len(items) == 2
    by_rcpt = {i["rcpts"][0]["address"]: i for i in items}
    assert set(by_rcpt) == {"a@testserver", "b@testserver"}
    a, b = by_rcpt["a@testserver"], by_rcpt["b@testserver"]
    assert a["from"] == s.user_addr
    assert a["rcpts"][0]["status"] == "pending"
    assert "mailbox busy" in a["rcpts"][0]["last_failure_message"]
    assert a["next_attempt"] is not None

    plain = util(s, "queue", "list")
    assert plain.returncode == 0
    assert f"{a['id']}  " in plain.stdout
    assert "PENDING a@testserver (EMAIL)" in plain.stdout
    assert "mailbox busy" in plain.stdout

    show = util(s, "queue", "show", a["id"])
    assert show.returncode == 0, show.stderr
    assert f"ID: {a['id']}" in show.stdout
    assert "Subject: hello there" in show.stdout
    assert util(s, "queue", "show", "nonexistent").returncode == 1

    ok.touch()
    r = util(s, "queue", "flush", a["id"])
    assert (r.returncode, r.stdout) == (0, "Flushed 1 item\n")
    wait_until(lambda: len(mailbox(s, "a")) == 1, what="the flushed item")

    r = util(s, "queue", "remove", b["id"], "--no-dsn")
    assert (r.returncode, r.stdout) == (0, f"Removed {b['id']}\n"), r.stderr
    wait_until(lambda: not queue_files(s), what="the queue to empty")
    assert json.loads(util(s, "queue", "list", "--json").stdout) == []
    assert mailbox(s, "b") == [] and mailbox(s, "user") == []

    # Remove with a DSN: it goes back to the (local) sender.
    ok.unlink()
    send(s, s.user_addr, ["c@testserver"])
    d.wait_for_log(r"to=c@testserver failed \(temporary\)", mail_log=True)
    [c] = json.loads(util(s, "queue", "list", "--json").stdout)
    ok.touch()
    assert util(s, "queue", "remove", c["id"]).returncode == 0
    wait_until(lambda: len(mailbox(s, "user")) == 1, what="the DSN")
    dsn = mailbox(s, "user")[0]
    assert b"Final-Recipient: utf-8; c@testserver" in dsn
    assert b"removed from the queue by the administrator" in dsn
    assert mailbox(s, "c") == []

    assert d.stop() == 0
    r = util(s, "queue", "list")
    assert r.returncode == 1
    assert "chasquid is not running" in r.stderr
    r = util(s, "aliases-resolve", "x@testserver")
    assert r.returncode == 0 and "resolving from the files instead" in r.stderr


@pytest.mark.timeout(400)
def test_kill9_at_random_moments_loses_no_accepted_message(chasquid_setup: Setup) -> None:
    s = chasquid_setup
    sink = s.root / "sink"
    s.set_mda(f"grep -m1 -o 'msg-[0-9]*' >> \"{sink}\"")
    total = 500
    todo = [f"msg-{n}" for n in range(total)]
    accepted: set[str] = set()
    lock = threading.Lock()
    rng = random.Random()
    deadline = time.monotonic() + 300

    def sender(batch: list[str], stop: threading.Event) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as c:
                for tag in batch:
                    if stop.is_set():
                        return
                    data = f"Subject: {tag}\r\n\r\nbody of {tag}\r\n".encode()
                    c.sendmail("", [s.user_addr], data)
                    with lock:
                        accepted.add(tag)
        except (smtplib.SMTPException, OSError):
            return  # killed mid-way: unacknowledged messages are resent next round

    rounds = 0
    while len(accepted) < total:
        assert time.monotonic() < deadline, f"only {len(accepted)} accepted"
        rounds += 1
        d = start(s, [FAST])
        pending = [t for t in todo if t not in accepted]
        stop = threading.Event()
        threads = [
            threading.Thread(target=sender, args=(pending[i::4], stop), daemon=True)
            for i in range(4)
        ]
        for t in threads:
            t.start()
        # Kill at a random moment while mail is flowing and being delivered.
        time.sleep(rng.uniform(0.1, 0.6))
        if len(accepted) < total:
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait(10)
        stop.set()
        for t in threads:
            t.join(30)
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait(10)

    assert rounds >= 2, "the daemon was never killed while mail was in flight"
    # Then kill it a few times while the backlog is being delivered.
    for _ in range(3):
        d = start(s, [FAST])
        time.sleep(rng.uniform(0.05, 0.5))
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
    final = start(s, [FAST])
    try:

        def delivered() -> set[str]:
            return set(sink.read_text().split()) if sink.exists() else set()

        wait_until(
            lambda: accepted <= delivered() and not queue_files(s),
            timeout=max(30.0, deadline - time.monotonic()),
            what="every accepted message at the sink",
        )
    finally:
        assert final.stop() == 0
    # A message can be delivered without its 250 having reached us (killed
    # mid-reply): at least every accepted one, and nothing that was not sent.
    assert accepted <= delivered() <= set(todo)
