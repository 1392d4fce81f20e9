"""The delivery loop with real MDA/pipe couriers running scripts in tmp_path."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers.mail import parse_message
from helpers.programs import shell_script

from chasquid.confdir.aliases import Recipient, RecipientKind
from chasquid.daemon.courier.base import DeliveryError
from chasquid.daemon.courier.mda import MDACourier
from chasquid.daemon.courier.pipe import PipeCourier
from chasquid.daemon.queue.delivery import (
    INTERRUPTED_MESSAGE,
    Couriers,
    Delivery,
    next_delay,
    parse_retry_schedule,
    start_delivery,
)
from chasquid.daemon.queue.queue import Queue
from chasquid.daemon.queue.store import QueueStore
from chasquid.daemon.telemetry import metrics
from chasquid.daemon.telemetry.maillog import MailLog
from chasquid.msgbody import Body

LOCAL = {"local.test", "ñandú.test"}
MESSAGE = b"Subject: hi\nMessage-ID: <orig@x>\n\nline one\nline two\n"
FAST = (0.2,)


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (no pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


def _is_local(addr: str) -> bool:
    return addr.partition("@")[2] in LOCAL or "@" not in addr or addr == "<>"


@dataclass
class StaticResolver:
    """Aliases for the tests: a fixed table, everything else is itself."""

    table: dict[str, list[Recipient]] = field(default_factory=dict)

    async def resolve(self, addr: str) -> list[Recipient]:
        return self.table.get(addr, [Recipient(addr)])


@dataclass
class RecordingRemote:
    """Stands in for the SMTP courier (built in a later issue): records each call."""

    calls: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)
    error: DeliveryError | None = None

    async def deliver_many(
        self, sender: str, rcpts: Sequence[str], body: Body, *, via: Sequence[str] = ()
    ) -> dict[str, DeliveryError | None]:
        self.calls.append((sender, tuple(rcpts), tuple(via)))
        return {r: self.error for r in rcpts}


@dataclass
class Env:
    tmp: Path
    queue: Queue
    maillog_path: Path
    delivery: Delivery
    remote: RecordingRemote
    mailbox: Path

    def log(self) -> str:
        return self.maillog_path.read_text()

    def delivered(self) -> list[Path]:
        return sorted(self.mailbox.glob("*"))

    def queue_files(self) -> list[Path]:
        """The items' files and their state files."""
        directory = self.queue.store.directory
        return sorted([*directory.glob("m:*"), *directory.glob("e:*")])


def make_env(
    tmp_path: Path,
    mda_body: str,
    *,
    give_up: float = 60.0,
    schedule: Sequence[float] = FAST,
    table: dict[str, list[Recipient]] | None = None,
    remote: RecordingRemote | None = None,
) -> Env:
    mailbox = tmp_path / "mailbox"
    mailbox.mkdir()
    mda = shell_script(tmp_path / "mda.sh", mda_body.replace("MAILBOX", str(mailbox)))
    queue = Queue(
        QueueStore(tmp_path / "queue"), lambda: StaticResolver(table or {}), give_up=give_up
    )
    maillog_path = tmp_path / "mail.log"
    maillog = MailLog.open(str(maillog_path))
    rem = remote or RecordingRemote()
    couriers = Couriers(
        local=MDACourier(str(mda), ("%from%", "%to%"), tmp_path),
        pipe=PipeCourier(tmp_path),
        remote=rem,
    )
    delivery = start_delivery(queue, couriers, maillog, lambda: _is_local, retry_schedule=schedule)
    return Env(tmp_path, queue, maillog_path, delivery, rem, mailbox)


async def wait_empty(env: Env, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while len(env.queue) or env.delivery.runners:
            await asyncio.sleep(0.02)


DELIVER = 'n=$(ls MAILBOX | wc -l); cat > "MAILBOX/$2.$n"\n'


@sync
async def test_success_delivers_crlf_and_removes_item(tmp_path: Path) -> None:
    env = make_env(tmp_path, DELIVER)
    await env.queue.load()
    item_id = await env.queue.put("a@local.test", ["b@local.test"], MESSAGE)
    await wait_empty(env)
    [got] = env.delivered()
    assert got.read_bytes() == MESSAGE.replace(b"\n", b"\r\n")
    assert got.name.startswith("b@local.test.")
    log = env.log()
    assert f"{item_id} from=a@local.test to=b@local.test sent" in log
    assert f"{item_id} from=a@local.test all done" in log
    assert env.queue_files() == []
    assert env.queue.counters.get(metrics.QUEUE_DELIVERY_ATTEMPTS, "email:local") == 1


@sync
async def test_item_delivered_at_once_is_written_only_when_queued(tmp_path: Path) -> None:
    # Once every recipient is sent the file is deleted: rewriting it first
    # would be an fsync'd write nobody reads.
    env = make_env(tmp_path, DELIVER)
    await env.queue.load()
    await env.queue.put("a@local.test", ["b@local.test", "c@local.test"], MESSAGE)
    await wait_empty(env)
    assert len(env.delivered()) == 2
    assert env.queue_files() == []
    # The put, then one rewrite for whichever recipient finished first.
    assert env.queue.counters.get(metrics.QUEUE_ITEMS_WRITTEN) == 2


@sync
async def test_temporary_then_success_with_state_on_disk(tmp_path: Path) -> None:
    # First attempt: tempfail. Second attempt: save what the queue file says
    # at that moment (the first outcome must already be on disk), then deliver.
    body = (
        'if [ ! -e MAILBOX/../tried ]; then touch MAILBOX/../tried; echo "try later"; exit 75; fi\n'
        "cat MAILBOX/../queue/e:* > MAILBOX/../state-at-second-attempt\n" + DELIVER
    )
    env = make_env(tmp_path, body)
    await env.queue.load()
    item_id = await env.queue.put("a@local.test", ["b@local.test"], MESSAGE)
    await wait_empty(env)
    assert len(env.delivered()) == 1
    state = (tmp_path / "state-at-second-attempt").read_bytes()
    assert b'"status":"pending"' in state
    assert b"MDA delivery failed: exit status 75" in state
    log = env.log()
    assert (
        f"{item_id} from=a@local.test to=b@local.test failed (temporary): "
        'MDA delivery failed: exit status 75 - "try later\\n"'
    ) in log
    assert f"{item_id} from=a@local.test completed loop, next in 2" in log  # 200-210ms
    order = [log.index(s) for s in ("failed (temporary)", "completed loop", " sent", "all done")]
    assert order == sorted(order)
    assert env.queue_files() == []


@sync
async def test_permanent_failure_sends_dsn_to_sender(tmp_path: Path) -> None:
    body = 'case "$2" in bad@*) echo "no such user"; exit 1;; esac\n' + DELIVER
    env = make_env(tmp_path, body)
    await env.queue.load()
    item_id = await env.queue.put(
        "sender@local.test", ["bad@local.test", "good@local.test"], MESSAGE
    )
    await wait_empty(env)
    files = env.delivered()
    assert [f.name.split(".")[0] for f in files] == ["good@local", "sender@local"]
    dsn_file = next(f for f in files if f.name.startswith("sender@"))
    dsn = parse_message(dsn_file.read_bytes())
    assert dsn["From"] == "Mail Delivery System <postmaster-dsn@local.test>"
    assert dsn["To"].addresses[0].addr_spec == "sender@local.test"
    assert b"\r\nTo: <sender@local.test>\r\n" in dsn_file.read_bytes()
    assert dsn["In-Reply-To"] == "<orig@x>"
    assert dsn.get_content_type() == "multipart/report"
    parts = list(dsn.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/global-delivery-status",
        "message/rfc822",
    ]
    text = parts[1].as_string().replace("\r\n", "\n")
    assert "Final-Recipient: utf-8; bad@local.test" in text
    assert "Status: 5.0.0" in text
    assert 'Diagnostic-Code: smtp; MDA delivery failed: exit status 1 - "no such user\\n"' in text
    assert "good@local.test" not in text
    assert b"line one" in dsn_file.read_bytes()
    log = env.log()
    assert f"{item_id} from=sender@local.test to=bad@local.test failed (permanent)" in log
    # The DSN is an item of its own, from <>.
    assert "from=<> to=sender@local.test sent" in log
    assert env.queue.counters.get(metrics.QUEUE_DSNS) == 1
    assert env.queue_files() == []


@sync
async def test_no_dsn_for_null_sender(tmp_path: Path) -> None:
    env = make_env(tmp_path, "exit 1\n")
    await env.queue.load()
    await env.queue.put("<>", ["bad@local.test"], MESSAGE)
    await wait_empty(env)
    assert env.delivered() == []
    assert env.queue.counters.get(metrics.QUEUE_DSNS) == 0
    assert env.log().count("all done") == 1
    assert env.queue_files() == []


@sync
async def test_give_up_sends_dsn_with_pending_recipient(tmp_path: Path) -> None:
    body = 'case "$2" in slow@*) echo busy; exit 75;; esac\n' + DELIVER
    env = make_env(tmp_path, body, give_up=1.0)
    await env.queue.load()
    await env.queue.put("sender@local.test", ["slow@local.test"], MESSAGE)
    await wait_empty(env)
    [dsn_file] = env.delivered()
    report = parse_message(dsn_file.read_bytes()).get_body(("plain",))
    assert report is not None
    raw = dsn_file.read_bytes().replace(b"\r\n", b"\n")
    assert b"Status: 4.0.0" in raw
    assert b'Diagnostic-Code: smtp; MDA delivery failed: exit status 75 - "busy\\n"' in raw
    assert env.log().count("failed (temporary)") >= 2


@sync
async def test_old_item_at_load_gets_no_attempt_only_dsn(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from chasquid.daemon.queue.item import QueuedRecipient, QueueItem

    store = QueueStore(tmp_path / "queue")
    store.ensure()
    store.write(
        QueueItem(
            id="oldoldoldol",
            sender="sender@local.test",
            to=("x@local.test",),
            rcpts=(QueuedRecipient("x@local.test", original_address="x@local.test"),),
            body=Body.of(MESSAGE),
            created_at=datetime(2000, 1, 1, tzinfo=UTC),
        )
    )
    env = make_env(tmp_path, DELIVER)
    await env.queue.load()
    await wait_empty(env)
    # Only the DSN reached a mailbox: x@ was never attempted.
    assert [f.name.split(".")[0] for f in env.delivered()] == ["sender@local"]
    assert "to=x@local.test" not in env.log()


@sync
async def test_pipe_gets_lf_data_and_failure_is_permanent(tmp_path: Path) -> None:
    out = tmp_path / "piped"
    shell_script(tmp_path / "save.sh", f'cat > "{out}"\n')
    table = {
        "p@local.test": [Recipient("./save.sh", RecipientKind.PIPE)],
        "q@local.test": [Recipient("false", RecipientKind.PIPE)],
    }
    env = make_env(tmp_path, DELIVER, table=table)
    await env.queue.load()
    await env.queue.put("<>", ["p@local.test", "q@local.test"], MESSAGE)
    await wait_empty(env)
    assert out.read_bytes() == MESSAGE
    assert "to=false failed (permanent): exit status 1" in env.log()
    assert env.queue.counters.get(metrics.QUEUE_DELIVERY_ATTEMPTS, "pipe") == 2


@sync
async def test_remote_recipients_grouped_by_domain_with_rewritten_sender(tmp_path: Path) -> None:
    table = {
        "fw@local.test": [Recipient("z@far.test", RecipientKind.FORWARD, ("mx1", "mx2"))],
    }
    env = make_env(tmp_path, DELIVER, table=table)
    await env.queue.load()
    await env.queue.put("ext@other.test", ["a@far.test", "b@far.test", "c@near.test"], MESSAGE)
    await env.queue.put("ext@other.test", ["fw@local.test"], MESSAGE)
    await env.queue.put("me@local.test", ["d@far.test"], MESSAGE)
    await wait_empty(env)
    calls = sorted(env.remote.calls)
    assert calls == sorted(
        [
            ("a+fwd_from=ext=other.test@far.test", ("a@far.test",), ()),
            ("b+fwd_from=ext=other.test@far.test", ("b@far.test",), ()),
            ("c+fwd_from=ext=other.test@near.test", ("c@near.test",), ()),
            ("fw+fwd_from=ext=other.test@local.test", ("z@far.test",), ("mx1", "mx2")),
            ("me@local.test", ("d@far.test",), ()),
        ]
    )
    assert env.queue.counters.get(metrics.QUEUE_DELIVERY_ATTEMPTS, "forward") == 1
    assert env.queue.counters.get(metrics.QUEUE_DELIVERY_ATTEMPTS, "email:remote") == 4


@sync
async def test_same_original_domain_shares_one_transaction(tmp_path: Path) -> None:
    table = {"list@local.test": [Recipient("x@far.test"), Recipient("y@far.test")]}
    env = make_env(tmp_path, DELIVER, table=table)
    await env.queue.load()
    await env.queue.put("me@local.test", ["list@local.test"], MESSAGE)
    await wait_empty(env)
    assert env.remote.calls == [("me@local.test", ("x@far.test", "y@far.test"), ())]


@sync
async def test_flush_retries_now(tmp_path: Path) -> None:
    body = "if [ ! -e MAILBOX/../tried ]; then touch MAILBOX/../tried; exit 75; fi\n" + DELIVER
    env = make_env(tmp_path, body, schedule=(60.0,))
    await env.queue.load()
    item_id = await env.queue.put("a@local.test", ["b@local.test"], MESSAGE)
    async with asyncio.timeout(10):
        while "completed loop" not in env.log():
            await asyncio.sleep(0.02)
    assert env.delivery.next_attempt(item_id) is not None
    assert env.delivery.flush() == 1
    await wait_empty(env, timeout=10)
    assert len(env.delivered()) == 1


@sync
async def test_remove_sends_dsn_unless_asked_not_to(tmp_path: Path) -> None:
    env = make_env(
        tmp_path, 'case "$2" in sender@*) ;; *) exit 75;; esac\n' + DELIVER, schedule=(60.0,)
    )
    await env.queue.load()
    first = await env.queue.put("sender@local.test", ["b@local.test"], MESSAGE)
    second = await env.queue.put("sender@local.test", ["c@local.test"], MESSAGE)
    async with asyncio.timeout(10):
        while env.log().count("completed loop") < 2:
            await asyncio.sleep(0.02)
    await env.delivery.remove(first, dsn=False)
    await env.delivery.remove(second)
    await wait_empty(env)
    [dsn_file] = env.delivered()
    raw = dsn_file.read_bytes().replace(b"\r\n", b"\n")
    assert b"Final-Recipient: utf-8; c@local.test" in raw
    assert b"removed from the queue by the administrator" in raw
    assert env.queue_files() == []


@sync
async def test_stop_leaves_pending_items_for_next_start(tmp_path: Path) -> None:
    env = make_env(tmp_path, "exit 75\n", schedule=(60.0,))
    await env.queue.load()
    await env.queue.put("a@local.test", ["b@local.test"], MESSAGE)
    async with asyncio.timeout(10):
        while "completed loop" not in env.log():
            await asyncio.sleep(0.02)
    await env.delivery.stop()
    [state, message] = env.queue_files()
    assert message.name.startswith("m:") and message.read_bytes().endswith(MESSAGE)
    assert b"exit status 75" in state.read_bytes()


@sync
async def test_stop_lets_the_attempt_in_flight_end_and_records_it(tmp_path: Path) -> None:
    env = make_env(tmp_path, "touch MAILBOX/../started; sleep 0.5\n" + DELIVER)
    await env.queue.load()
    await env.queue.put("a@local.test", ["b@local.test"], MESSAGE)
    async with asyncio.timeout(10):
        while not (tmp_path / "started").exists():
            await asyncio.sleep(0.02)
    await env.delivery.stop(grace=10)
    assert len(env.delivered()) == 1
    assert env.queue_files() == []
    assert "all done" in env.log()


@sync
async def test_no_attempt_starts_while_stopping(tmp_path: Path) -> None:
    env = make_env(tmp_path, DELIVER)
    await env.queue.load()
    env.delivery.begin_stop(grace=10)
    await env.queue.put("a@local.test", ["b@local.test"], MESSAGE)
    await env.delivery.stop()
    assert env.delivered() == []
    [message] = env.queue_files()
    assert message.name.startswith("m:")


@sync
async def test_stop_records_an_attempt_still_running_at_the_end_of_the_grace(
    tmp_path: Path,
) -> None:
    env = make_env(tmp_path, "touch MAILBOX/../started; sleep 30\n" + DELIVER)
    await env.queue.load()
    await env.queue.put("a@local.test", ["b@local.test"], MESSAGE)
    async with asyncio.timeout(10):
        while not (tmp_path / "started").exists():
            await asyncio.sleep(0.02)
    async with asyncio.timeout(10):
        await env.delivery.stop(grace=0.2)
    assert env.delivered() == []
    [state, message] = env.queue_files()
    assert message.name.startswith("m:")
    envelope = state.read_text()
    assert '"status":"pending"' in envelope and INTERRUPTED_MESSAGE in envelope
    assert "failed (temporary): " + INTERRUPTED_MESSAGE in env.log()


@dataclass
class StuckRemote(RecordingRemote):
    """A remote server that never answers."""

    async def deliver_many(
        self, sender: str, rcpts: Sequence[str], body: Body, *, via: Sequence[str] = ()
    ) -> dict[str, DeliveryError | None]:
        self.calls.append((sender, tuple(rcpts), tuple(via)))
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@sync
async def test_stop_records_a_remote_transaction_still_running_as_not_done(
    tmp_path: Path,
) -> None:
    remote = StuckRemote()
    env = make_env(tmp_path, DELIVER, remote=remote)
    await env.queue.load()
    await env.queue.put("a@local.test", ["x@remote.test", "y@remote.test"], MESSAGE)
    async with asyncio.timeout(10):
        while not remote.calls:
            await asyncio.sleep(0.02)
    async with asyncio.timeout(10):
        await env.delivery.stop(grace=0.1)
    [state, _] = env.queue_files()
    envelope = state.read_text()
    assert envelope.count('"status":"pending"') == 2
    assert envelope.count(INTERRUPTED_MESSAGE) == 2


def test_next_delay_schedule() -> None:
    assert next_delay(0, rand=0) == 60
    assert next_delay(59, rand=0) == 60
    assert next_delay(60, rand=0) == 300
    assert next_delay(400, rand=0) == 600
    assert next_delay(600, rand=0) == 1200
    assert next_delay(99999, rand=0.5) == 1230
    assert next_delay(0, (1.0, 2.0, 3.0), rand=0) == 1.0
    assert next_delay(2.5, (1.0, 2.0, 3.0), rand=0) == 3.0


def test_parse_retry_schedule() -> None:
    assert parse_retry_schedule("1s,2s, 3s") == (1.0, 2.0, 3.0)
    assert parse_retry_schedule("1m30s") == (90.0,)
    with pytest.raises(ValueError):
        parse_retry_schedule("")
    with pytest.raises(ValueError):
        parse_retry_schedule("0s")


@pytest.fixture(autouse=True)
def _no_inherited_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The MDA scripts must not depend on the caller's locale or shell settings.
    monkeypatch.setenv("LC_ALL", "C")
    assert os.environ["LC_ALL"] == "C"


class LMTPRecorder:
    """aiosmtpd LMTP handler: one reply per recipient; records each transaction."""

    def __init__(self) -> None:
        self.transactions: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.transactions.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        replies = [
            "550 5.2.1 mailbox disabled" if r.startswith("bad") else "250 2.0.0 delivered"
            for r in envelope.rcpt_tos
        ]
        return "\r\n".join(replies)


@sync
async def test_local_recipients_of_an_item_share_one_lmtp_transaction(tmp_path: Path) -> None:
    from aiosmtpd.lmtp import LMTP

    from chasquid.daemon.courier.lmtp import LMTPCourier

    handler = LMTPRecorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: LMTP(handler), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lmtp = LMTPCourier(f"127.0.0.1:{port}", "chasquid.test", timeout=10)
    env = make_env(tmp_path, DELIVER)
    env.delivery.couriers = Couriers(
        local=env.delivery.couriers.local,
        pipe=env.delivery.couriers.pipe,
        remote=env.remote,
        lmtp=lmtp,
    )
    try:
        await env.queue.load()
        item_id = await env.queue.put(
            "<>", ["one@local.test", "bad@local.test", "two@local.test"], MESSAGE
        )
        await wait_empty(env)
    finally:
        await lmtp.close()
        server.close()
        await server.wait_closed()
    [(sender, rcpts, content)] = handler.transactions
    assert sender == "<>" or sender == ""
    assert rcpts == ["one@local.test", "bad@local.test", "two@local.test"]
    assert content == MESSAGE.replace(b"\n", b"\r\n")
    assert env.delivered() == []  # the MDA was not used
    log = env.log()
    assert f"{item_id} from=<> to=one@local.test sent" in log
    assert f"{item_id} from=<> to=bad@local.test failed (permanent): " in log
    assert env.queue.counters.get(metrics.QUEUE_DELIVERY_ATTEMPTS, "email:local") == 3
