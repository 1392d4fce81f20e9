"""The queue's enqueue side: item format, store, put/load/update/remove."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers.programs import shell_script

from chasquid.daemon.queue import (
    Queue,
    QueuedRecipient,
    QueueError,
    QueueItem,
    QueueStore,
    RecipientKind,
    RecipientStatus,
    new_id,
)
from chasquid.daemon.queue.item import EPOCH, QueueFormatError, read_item
from chasquid.daemon.queue.store import QueueStoreError, StoreOp
from chasquid.daemon.telemetry import metrics
from chasquid.daemon.telemetry.metrics import Counters
from chasquid.msgbody import Body, FileRange

ID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")


@dataclass(frozen=True)
class FakeRecipient:
    address: str
    kind: str
    via: tuple[str, ...] = ()


class FakeResolver:
    """Expands a fixed table; unknown addresses resolve to themselves."""

    def __init__(self, table: dict[str, list[FakeRecipient]] | None = None) -> None:
        self.table = table or {}
        self.calls: list[str] = []

    async def resolve(self, addr: str) -> Sequence[FakeRecipient]:
        self.calls.append(addr)
        if addr == "broken@example.com":
            raise RuntimeError("exit status 1")
        return self.table.get(addr, [FakeRecipient(addr, "email")])


def make_queue(
    tmp_path: Path,
    resolver: FakeResolver | None = None,
    max_items: int = 200,
    new_items: list[QueueItem] | None = None,
) -> tuple[Queue, Counters]:
    counters = Counters()
    store = QueueStore(tmp_path / "queue")
    store.ensure()
    r = resolver or FakeResolver()
    cb = new_items.append if new_items is not None else None
    return Queue(store, lambda: r, max_items, 3600, on_new_item=cb, counters=counters), counters


def sample_item(data: bytes = b"Subject: hi\n\nbody\n") -> QueueItem:
    return QueueItem(
        id=new_id(),
        sender="from@example.org",
        to=("a@example.com", "a@example.com", "list@example.com"),
        rcpts=(
            QueuedRecipient("a@example.com", original_address="a@example.com"),
            QueuedRecipient(
                "/usr/bin/cmd arg ñ",
                RecipientKind.PIPE,
                RecipientStatus.FAILED,
                "exit status 1\nsecond line",
                "list@example.com",
            ),
            QueuedRecipient(
                "x@remote.net",
                RecipientKind.FORWARD,
                RecipientStatus.SENT,
                "",
                "list@example.com",
                ("mx1.remote.net", "mx2.remote.net:2525"),
            ),
        ),
        body=Body.of(data),
        created_at=datetime(2025, 6, 3, 10, 11, 12, 345678, tzinfo=UTC),
    )


def encode_to_bytes(item: QueueItem) -> bytes:
    head, body = item.encode()
    return head + body.read()


def parse(raw: bytes, source: str) -> QueueItem:
    """read_item over raw bytes written to a file; source names it in errors."""
    with tempfile.TemporaryFile() as f:
        f.write(raw)
        f.seek(0)
        return read_item(f, source)


def test_ids_are_11_urlsafe_chars_and_differ() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(ID_RE.match(i) for i in ids)
    # 1000 draws start with "-" about 16 times if nothing prevents it.
    assert not any(i.startswith("-") for i in ids)


def test_item_round_trips_through_encoding(tmp_path: Path) -> None:
    item = sample_item(bytes(range(256)) * 10 + "café\n".encode())
    path = tmp_path / "m:x"
    path.write_bytes(encode_to_bytes(item))
    with path.open("rb") as f:
        back = read_item(f, str(path))
    # The message is not read: the item says where it is in the file.
    assert back.body.parts == (FileRange(str(path), len(item.encode()[0]), item.body.size),)
    assert back.body.read() == item.body.read()
    assert back.with_body(item.body) == item


def test_encoded_file_is_header_line_envelope_then_raw_message() -> None:
    item = sample_item(b"From: x\n\nraw body, not base64\n")
    raw = encode_to_bytes(item)
    first, rest = raw.split(b"\n", 1)
    magic, version, head_len, data_len = first.split()
    assert (magic, version) == (b"chasquid-queue-item", b"1")
    assert int(data_len) == len(item.body.read())
    assert rest[int(head_len) :] == b"\n" + item.body.read()


def rewrite_envelope(raw: bytes, old: bytes, new: bytes) -> bytes:
    """Edit the JSON envelope of an encoded item, keeping the lengths consistent."""
    first, rest = raw.split(b"\n", 1)
    parts = first.split()
    head_len = int(parts[2])
    head = rest[:head_len].replace(old, new, 1)
    parts[2] = str(len(head)).encode()
    return b" ".join(parts) + b"\n" + head + rest[head_len:]


def test_with_status_returns_new_instances() -> None:
    item = sample_item()
    updated = item.with_status(0, RecipientStatus.FAILED, "550 no such user")
    assert item.rcpts[0].status is RecipientStatus.PENDING
    assert updated.rcpts[0].status is RecipientStatus.FAILED
    assert updated.rcpts[0].last_failure_message == "550 no such user"
    # The failure message is kept when a later attempt succeeds.
    sent = updated.with_status(0, RecipientStatus.SENT)
    assert sent.rcpts[0].last_failure_message == "550 no such user"
    assert item.pending() == (0,)
    assert sent.pending() == ()


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b"garbage\n" + b, "bad first line"),
        (lambda b: b[:-3], "truncated message data"),
        (lambda b: b + b"extra", "unexpected bytes"),
        (lambda b: b.replace(b"chasquid-queue-item 1", b"chasquid-queue-item 9", 1), "version 9"),
        (lambda b: rewrite_envelope(b, b'"from":', b'"from":1,"x":'), "'from' is not a string"),
        (lambda b: rewrite_envelope(b, b'"status":"pending"', b'"status":"weird"'), "weird"),
        (lambda b: rewrite_envelope(b, b'"id"', b'"ident"'), "missing key 'id'"),
        (lambda b: rewrite_envelope(b, b"{", b"["), "bad envelope JSON"),
    ],
)
def test_bad_files_are_rejected_with_a_clear_message(mangle: object, message: str) -> None:
    raw = encode_to_bytes(sample_item())
    assert callable(mangle)
    with pytest.raises(QueueFormatError, match=re.escape(message)) as exc:
        parse(mangle(raw), "/q/m:abc")
    assert str(exc.value).startswith("/q/m:abc: ")


def test_missing_created_at_means_epoch() -> None:
    item = sample_item()
    raw = encode_to_bytes(item)
    stamp = b'"created_at":"' + item.created_at.isoformat().encode() + b'",'
    mangled = rewrite_envelope(raw, stamp, b"")
    assert mangled != raw
    assert parse(mangled, "f").created_at == EPOCH


def test_store_writes_private_files_named_by_id(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q")
    store.ensure()
    assert stat.S_IMODE(os.stat(tmp_path / "q").st_mode) == 0o700
    item = sample_item()
    store.write(item)
    path = tmp_path / "q" / f"m:{item.id}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path / "q") == [f"m:{item.id}"]
    assert store.load() == [item]
    store.remove(item.id)
    assert os.listdir(tmp_path / "q") == []
    store.remove(item.id)  # already gone: not an error


def test_store_load_skips_bad_and_temporary_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = QueueStore(tmp_path)
    good = sample_item()
    store.write(good)
    (tmp_path / "m:broken").write_bytes(b"not a queue file")
    (tmp_path / f".m:{new_id()}.tmp").write_bytes(b"half written")
    (tmp_path / "other").write_bytes(b"ignored")
    with caplog.at_level(logging.ERROR, logger="chasquid.queue"):
        assert store.load() == [good]
    assert "m:broken" in caplog.text
    assert (tmp_path / "m:broken").read_bytes() == b"not a queue file"


def test_identity_is_the_id_inside_the_file(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    item = sample_item()
    (tmp_path / "m:renamed").write_bytes(encode_to_bytes(item))
    assert [i.id for i in store.load()] == [item.id]
    # Removing the item also removes the file it came from, so that it is
    # not delivered again after a restart.
    store.remove(item.id)
    assert os.listdir(tmp_path) == []


def test_put_resolves_aliases_and_writes_durably(tmp_path: Path) -> None:
    resolver = FakeResolver(
        {
            "list@example.com": [
                FakeRecipient("a@example.com", "email"),
                FakeRecipient("|cat", "pipe"),
                FakeRecipient("x@remote.net", "forward", ("mx.remote.net",)),
            ]
        }
    )
    new_items: list[QueueItem] = []
    queue, counters = make_queue(tmp_path, resolver, new_items=new_items)
    before = datetime.now(UTC)
    item_id = asyncio.run(
        queue.put("from@example.org", ["list@example.com", "b@example.com"], b"msg\n")
    )
    assert ID_RE.match(item_id)
    assert resolver.calls == ["list@example.com", "b@example.com"]

    item = queue.get(item_id)
    assert item is not None
    assert new_items == [item]
    assert len(queue) == 1
    assert item.sender == "from@example.org"
    assert item.to == ("list@example.com", "b@example.com")
    assert before <= item.created_at <= datetime.now(UTC)
    assert [(r.address, r.kind, r.status, r.original_address, r.via) for r in item.rcpts] == [
        ("a@example.com", RecipientKind.EMAIL, RecipientStatus.PENDING, "list@example.com", ()),
        ("|cat", RecipientKind.PIPE, RecipientStatus.PENDING, "list@example.com", ()),
        (
            "x@remote.net",
            RecipientKind.FORWARD,
            RecipientStatus.PENDING,
            "list@example.com",
            ("mx.remote.net",),
        ),
        ("b@example.com", RecipientKind.EMAIL, RecipientStatus.PENDING, "b@example.com", ()),
    ]
    assert QueueStore(tmp_path / "queue").load() == [item]
    assert counters.get(metrics.QUEUE_PUTS) == 1
    assert counters.get(metrics.QUEUE_ITEMS_WRITTEN) == 1


def test_put_alias_error_writes_nothing(tmp_path: Path) -> None:
    queue, counters = make_queue(tmp_path)
    with pytest.raises(QueueError) as exc:
        asyncio.run(queue.put("f@x.org", ["ok@example.com", "broken@example.com"], b"m\n"))
    assert str(exc.value) == 'error resolving aliases for "broken@example.com": exit status 1'
    assert len(queue) == 0
    assert os.listdir(tmp_path / "queue") == []
    assert counters.get(metrics.QUEUE_PUTS) == 1
    assert counters.get(metrics.QUEUE_ITEMS_WRITTEN) == 0


def test_put_refuses_when_queue_is_full(tmp_path: Path) -> None:
    queue, counters = make_queue(tmp_path, max_items=2)

    async def fill() -> None:
        await queue.put("f@x.org", ["a@example.com"], b"1\n")
        await queue.put("f@x.org", ["a@example.com"], b"2\n")
        with pytest.raises(QueueError, match=r"^Queue size too big, try again later$"):
            await queue.put("f@x.org", ["a@example.com"], b"3\n")

    asyncio.run(fill())
    assert len(queue) == 2
    # The refused put is not counted: putCount counts puts past the size check.
    assert counters.get(metrics.QUEUE_PUTS) == 2


def test_put_write_failure_is_reported(tmp_path: Path) -> None:
    queue, _ = make_queue(tmp_path)
    (tmp_path / "queue").rmdir()
    with pytest.raises(QueueError, match=r"^failed to write item: .*m:"):
        asyncio.run(queue.put("f@x.org", ["a@example.com"], b"1\n"))
    assert len(queue) == 0


def test_load_registers_items_and_is_not_limited(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")
    store.ensure()
    items = [sample_item() for _ in range(3)]
    for i in items:
        store.write(i)
    new_items: list[QueueItem] = []
    queue, _ = make_queue(tmp_path, max_items=1, new_items=new_items)
    loaded = asyncio.run(queue.load())
    assert sorted(i.id for i in loaded) == sorted(i.id for i in items)
    assert sorted(i.id for i in new_items) == sorted(i.id for i in items)
    assert len(queue) == 3
    assert queue.get(items[0].id) == items[0]
    with pytest.raises(QueueError, match="Queue size too big"):
        asyncio.run(queue.put("f@x.org", ["a@example.com"], b"1\n"))


def test_load_creates_missing_directory(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "data" / "queue")
    queue = Queue(store, FakeResolver)
    assert asyncio.run(queue.load()) == []
    assert (tmp_path / "data" / "queue").is_dir()


def test_update_rewrites_and_remove_deletes(tmp_path: Path) -> None:
    queue, counters = make_queue(tmp_path)

    async def run() -> None:
        item_id = await queue.put("f@x.org", ["a@example.com"], b"1\n")
        item = queue.get(item_id)
        assert item is not None
        failed = item.with_status(0, RecipientStatus.FAILED, "boom")
        assert await queue.update(failed)
        assert queue.get(item_id) == failed
        assert QueueStore(tmp_path / "queue").load() == [failed]
        assert counters.get(metrics.QUEUE_ITEMS_WRITTEN) == 2
        await queue.remove(item_id)
        assert queue.get(item_id) is None
        assert len(queue) == 0
        assert os.listdir(tmp_path / "queue") == []

    asyncio.run(run())


def test_update_write_error_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue, _ = make_queue(tmp_path)

    async def run() -> None:
        item_id = await queue.put("f@x.org", ["a@example.com"], b"1\n")
        item = queue.get(item_id)
        assert item is not None
        os.unlink(tmp_path / "queue" / f"m:{item_id}")
        (tmp_path / "queue").rmdir()
        sent = item.with_status(0, RecipientStatus.SENT)
        with caplog.at_level(logging.ERROR, logger="chasquid.queue"):
            assert not await queue.update(sent)
        assert queue.get(item_id) == sent

    asyncio.run(run())
    assert "failed to write item" in caplog.text


def test_queued_messages_are_kept_on_disk_only(tmp_path: Path) -> None:
    queue, _ = make_queue(tmp_path)
    data = b"x" * (100 * 1024)

    async def run() -> str:
        return await queue.put("f@x.org", ["a@example.com"], data)

    item_id = asyncio.run(run())
    item = queue.get(item_id)
    assert item is not None
    # No copy in memory: the item points into its file.
    [part] = item.body.parts
    assert isinstance(part, FileRange) and part.path == str(tmp_path / "queue" / f"m:{item_id}")
    assert item.body.read() == data
    assert [i.id for i in queue.items()] == [item_id]


def test_put_with_the_real_alias_resolver(tmp_path: Path) -> None:
    from chasquid.confdir.aliases import Resolver, parse_aliases

    hook = tmp_path / "alias-resolve"
    shell_script(hook, '[ "$1" = roto@testserver ] && exit 1\nexit 0\n')
    table = parse_aliases(
        "list: a, fwd@remote.net via mx.remote.net\npipe: | cat -n\n",
        "testserver",
        "aliases",
        ".",
        "+",
    )
    resolver = Resolver(
        aliases=table, local_domains=frozenset({"testserver"}), hook=hook, hook_cwd=tmp_path
    )
    counters = Counters()
    store = QueueStore(tmp_path / "queue")
    store.ensure()
    queue = Queue(store, lambda: resolver, counters=counters)

    item_id = asyncio.run(queue.put("f@x.org", ["list@testserver", "pipe@testserver"], b"m\n"))
    item = queue.get(item_id)
    assert item is not None
    assert [(r.address, r.kind, r.via) for r in item.rcpts] == [
        ("a@testserver", RecipientKind.EMAIL, ()),
        ("fwd@remote.net", RecipientKind.FORWARD, ("mx.remote.net",)),
        ("cat -n", RecipientKind.PIPE, ()),
    ]
    with pytest.raises(QueueError) as exc:
        asyncio.run(queue.put("f@x.org", ["roto@testserver"], b"m\n"))
    assert str(exc.value) == 'error resolving aliases for "roto@testserver": exit status 1'


def test_concurrent_puts_and_removes_all_land_on_disk(tmp_path: Path) -> None:
    queue, counters = make_queue(tmp_path)

    async def run() -> None:
        first = await queue.put("f@x.org", ["a@example.com"], b"0\n")
        # Puts issued together are written as one group (one directory fsync);
        # each still returns only once its own file is in place.
        ids = await asyncio.gather(
            *(queue.put("f@x.org", ["a@example.com"], b"%d\n" % n) for n in range(1, 40)),
            queue.remove(first),
        )
        new_ids = [i for i in ids if i is not None]
        assert len(set(new_ids)) == 39
        on_disk = {item.id: item.body.read() for item in QueueStore(tmp_path / "queue").load()}
        assert set(on_disk) == set(new_ids)
        assert sorted(on_disk.values()) == sorted(b"%d\n" % n for n in range(1, 40))
        assert counters.get(metrics.QUEUE_ITEMS_WRITTEN) == 40

    asyncio.run(run())


def test_a_cancelled_put_is_still_written(tmp_path: Path) -> None:
    queue, _ = make_queue(tmp_path)

    async def run() -> None:
        task = asyncio.create_task(queue.put("f@x.org", ["a@example.com"], b"late\n"))
        other = asyncio.create_task(queue.put("f@x.org", ["a@example.com"], b"other\n"))
        await asyncio.sleep(0)
        task.cancel()
        other_id = await other
        with pytest.raises(asyncio.CancelledError):
            await task
        datas = sorted(item.body.read() for item in QueueStore(tmp_path / "queue").load())
        assert datas == [b"late\n", b"other\n"]
        assert queue.get(other_id) is not None

    asyncio.run(run())


class SlowStore(QueueStore):
    """A store whose writes take a while, as fsync on a busy disk does."""

    def apply(
        self,
        ops: Sequence[StoreOp],
        on_written: Callable[[list[QueueStoreError | None]], None] | None = None,
    ) -> list[QueueStoreError | None]:
        time.sleep(0.3)
        return super().apply(ops, on_written)


def test_stop_waits_for_writes_in_progress(tmp_path: Path) -> None:
    store = SlowStore(tmp_path / "queue")
    store.ensure()
    queue = Queue(store, lambda: FakeResolver(), 200, 3600)

    async def run() -> None:
        # A put whose caller went away (a session cut at shutdown) is still in flight.
        task = asyncio.create_task(queue.put("f@x.org", ["a@example.com"], b"in flight\n"))
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        await queue.stop()
        datas = [item.body.read() for item in QueueStore(tmp_path / "queue").load()]
        assert datas == [b"in flight\n"]
        await queue.stop()  # nothing pending: returns at once

    asyncio.run(run())


def test_store_apply_reports_each_change_separately(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "queue")
    store.ensure()
    item = QueueItem(
        id="abc",
        sender="f@x.org",
        to=("a@example.com",),
        rcpts=(),
        body=Body.of(b"1\n"),
        created_at=datetime.now(UTC),
    )
    # A directory in place of a file: its removal fails, the write next to it does not.
    (tmp_path / "queue" / "m:stuck").mkdir()
    (tmp_path / "queue" / "m:stuck" / "x").write_text("x")
    results = store.apply(
        [StoreOp(item_id="stuck"), StoreOp(item=item, new=True), StoreOp(item_id="gone")]
    )
    assert isinstance(results[0], QueueStoreError)
    assert "m:stuck" in str(results[0])
    assert results[1:] == [None, None]
    assert [i.id for i in QueueStore(tmp_path / "queue").load()] == ["abc"]


def segment_files(queue_dir: Path) -> tuple[list[str], list[str]]:
    names = sorted(os.listdir(queue_dir))
    return [n for n in names if n.startswith("s:")], [n for n in names if n.startswith("d:")]


def test_new_items_of_one_batch_share_a_segment(tmp_path: Path) -> None:
    queue_dir = tmp_path / "queue"
    store = QueueStore(queue_dir)
    store.ensure()
    items = [sample_item(b"message %d\n" % n) for n in range(3)]
    assert store.apply([StoreOp(item=i, new=True) for i in items]) == [None] * 3
    (segment,), done = segment_files(queue_dir)
    assert done == [] and [n for n in os.listdir(queue_dir) if n.startswith("m:")] == []
    assert stat.S_IMODE(os.stat(queue_dir / segment).st_mode) == 0o600
    assert sorted(i.id for i in QueueStore(queue_dir).load()) == sorted(i.id for i in items)

    # One completed item is listed as done and not loaded again.
    assert store.apply([StoreOp(item_id=items[0].id)]) == [None]
    assert (queue_dir / f"d:{segment[2:]}").read_text() == f"{items[0].id}\n"
    assert sorted(i.body.read() for i in QueueStore(queue_dir).load()) == [
        b"message 1\n",
        b"message 2\n",
    ]

    # The last one gone takes the segment and its list with it.
    store.remove(items[1].id)
    store.remove(items[2].id)
    assert os.listdir(queue_dir) == []


def test_a_rewritten_segment_item_loads_its_newer_version(tmp_path: Path) -> None:
    queue_dir = tmp_path / "queue"
    store = QueueStore(queue_dir)
    store.ensure()
    a, b = sample_item(b"a\n"), sample_item(b"b\n")
    store.apply([StoreOp(item=a, new=True), StoreOp(item=b, new=True)])
    failed = a.with_status(0, RecipientStatus.FAILED, "boom")
    assert store.apply([StoreOp(item=failed)]) == [None]
    # The newer envelope goes to a state file; the message stays in the segment.
    assert (queue_dir / f"e:{a.id}").exists() and not (queue_dir / f"m:{a.id}").exists()
    loaded = {i.id: i for i in QueueStore(queue_dir).load()}[a.id]
    assert loaded == failed and loaded.body.read() == b"a\n"

    # A restarted store removes both: the state file and the segment entry.
    restarted = QueueStore(queue_dir)
    restarted.load()
    restarted.remove(a.id)
    assert [i.id for i in QueueStore(queue_dir).load()] == [b.id]
    restarted.remove(b.id)
    assert os.listdir(queue_dir) == []


def test_segment_housekeeping_at_load(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    a, b = sample_item(b"a\n"), sample_item(b"b\n")
    store.apply([StoreOp(item=a, new=True), StoreOp(item=b, new=True)])
    (segment,), _ = segment_files(tmp_path)
    # Every item of the segment done (a crash before its deletion): cleaned up.
    (tmp_path / f"d:{segment[2:]}").write_text(f"{a.id}\n{b.id}\n")
    # A list whose segment is gone (a crash between the two deletions): removed.
    (tmp_path / "d:orphan").write_text("x\n")
    assert QueueStore(tmp_path).load() == []
    assert os.listdir(tmp_path) == []


def test_damaged_segment_keeps_its_good_items_and_its_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = sample_item(b"a\n"), sample_item(b"b\n")
    raw = encode_to_bytes(a) + encode_to_bytes(b)
    (tmp_path / "s:damaged").write_bytes(raw[:-5])
    store = QueueStore(tmp_path)
    with caplog.at_level(logging.ERROR, logger="chasquid.queue"):
        [loaded] = store.load()
    assert loaded.id == a.id and loaded.body.read() == b"a\n"
    assert "s:damaged" in caplog.text and "truncated" in caplog.text
    # What could not be read is never deleted, even once the rest is done.
    store.remove(a.id)
    assert (tmp_path / "s:damaged").read_bytes() == raw[:-5]
    assert QueueStore(tmp_path).load() == []


def test_concurrent_puts_are_written_together(tmp_path: Path) -> None:
    queue, counters = make_queue(tmp_path, max_items=100)

    async def run() -> list[str]:
        return await asyncio.gather(
            *(queue.put("f@x.org", ["a@example.com"], b"%d\n" % n) for n in range(20))
        )

    ids = asyncio.run(run())
    segments, _ = segment_files(tmp_path / "queue")
    # The first put goes alone; the 19 that queued behind it share one file.
    assert len(segments) == 1
    loaded = {i.id: i.body.read() for i in QueueStore(tmp_path / "queue").load()}
    assert loaded == {item_id: b"%d\n" % n for n, item_id in enumerate(ids)}
    assert counters.get(metrics.QUEUE_ITEMS_WRITTEN) == 20


def test_writes_are_acknowledged_before_the_removals_of_their_batch(tmp_path: Path) -> None:
    class SlowRemovals(QueueStore):
        def _record_done(self, done: dict[str, list[str]]) -> None:
            time.sleep(0.5)
            super()._record_done(done)

    store = SlowRemovals(tmp_path / "queue")
    store.ensure()
    queue = Queue(store, lambda: FakeResolver(), 200, 3600)

    async def run() -> None:
        first = await queue.put("f@x.org", ["a@example.com"], b"1\n")
        # A removal and a put handed over together (one batch): the put
        # returns while the removal is still going on.
        removal = asyncio.create_task(queue.remove(first))
        await asyncio.sleep(0)
        await queue.put("f@x.org", ["a@example.com"], b"2\n")
        assert not removal.done()
        await removal

    asyncio.run(run())
    assert [i.body.read() for i in QueueStore(tmp_path / "queue").load()] == [b"2\n"]


def test_a_rewrite_never_moves_the_message(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    a, b = sample_item(b"a\n"), sample_item(b"b\n")
    store.apply([StoreOp(item=a, new=True), StoreOp(item=b, new=True)])
    (segment,), _ = segment_files(tmp_path)
    where = store.body(a.id)
    # a's first attempt failed: only its envelope is written again.
    failed = a.with_status(0, RecipientStatus.PENDING, "try later")
    store.apply([StoreOp(item=failed)])
    assert store.body(a.id) == where
    # b delivered: the segment stays, it holds a's message.
    store.remove(b.id)
    assert sorted(os.listdir(tmp_path)) == [f"d:{segment[2:]}", f"e:{a.id}", segment]
    [loaded] = QueueStore(tmp_path).load()
    assert loaded == failed and loaded.body.read() == b"a\n"
    # a done: nothing is left.
    store.remove(a.id)
    assert os.listdir(tmp_path) == []
