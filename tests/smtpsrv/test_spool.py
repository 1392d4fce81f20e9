"""DATA goes to a spool: memory for a small message, a file for a large one, never left behind."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from collections.abc import Callable
from pathlib import Path

from helpers.rawclient import RawClient
from helpers.reception import Running

from chasquid.daemon.queue.store import QueueStore
from chasquid.daemon.smtpsrv.spool import MEMORY_LIMIT, Spool
from chasquid.msgbody import FileRange

MakeServer = Callable[..., Running]
BIG = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 20000  # 1.5 MiB


def spools(srv: Running) -> list[Path]:
    return list(srv.queue_dir.glob(".spool-*"))


def test_small_stays_in_memory_large_goes_to_a_file(tmp_path: Path) -> None:
    async def run() -> None:
        small = Spool(tmp_path)
        await small.write(b"a" * 10)
        await small.write(b"b" * 10)
        assert small.body().read() == b"a" * 10 + b"b" * 10
        assert list(tmp_path.iterdir()) == []

        large = Spool(tmp_path)
        for _ in range(4):
            await large.write(b"z" * (MEMORY_LIMIT // 2))
        body = large.body()
        [part] = body.parts
        assert isinstance(part, FileRange) and Path(part.path).name.startswith(".spool-")
        assert body.read() == b"z" * (2 * MEMORY_LIMIT)
        large.discard()
        assert list(tmp_path.iterdir()) == []

    asyncio.run(run())


def _data(c: RawClient) -> None:
    assert c.cmd("EHLO x").startswith("250")
    assert c.cmd("MAIL FROM:<>").startswith("250")
    assert c.cmd("RCPT TO:<user@example.com>").startswith("250")
    assert c.cmd("DATA").startswith("354")


def _wait_no_spools(srv: Running) -> None:
    deadline = time.monotonic() + 10
    while spools(srv) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spools(srv) == []


def test_refused_and_cut_messages_leave_no_spool(make_server: MakeServer) -> None:
    srv = make_server(conf="max_data_size_mb: 1\n")
    c = RawClient(srv.port)
    c.reply()
    _data(c)
    c.send(BIG + b".\r\n")
    assert c.reply().startswith("552 5.3.4")
    _data(c)
    c.send(b"Bad header line\r\n" + BIG[: 16 + 80 * 7500] + b".\r\n")
    assert c.reply().startswith("554 5.6.0")
    _data(c)
    c.send(BIG[:800_000])  # and the client goes away in the middle
    time.sleep(0.5)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    _wait_no_spools(srv)
    assert list(srv.queue_dir.iterdir()) == []


def test_spools_left_by_a_crash_are_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / ".spool-AAAAAAAAAAA").write_bytes(b"half a message")
    assert QueueStore(tmp_path).load() == []
    assert list(tmp_path.iterdir()) == []


def test_discard_while_a_thread_writes(tmp_path: Path) -> None:
    # The session is cancelled (the client vanished) while its spool is being
    # written: the file goes once the writer is done, never under its feet.
    async def run() -> None:
        spool = Spool(tmp_path, memory_limit=0)
        writing = asyncio.ensure_future(spool.write(b"x" * 16 * 1024 * 1024))
        await asyncio.sleep(0.01)
        writing.cancel()
        spool.discard()
        with contextlib.suppress(asyncio.CancelledError):
            await writing
        for _ in range(200):
            if not list(tmp_path.iterdir()):
                break
            await asyncio.sleep(0.05)

    asyncio.run(run())
    assert list(tmp_path.iterdir()) == []


def test_spooled_message_reaches_hook_and_queue_whole_and_leaves_no_spool(
    make_server: MakeServer,
) -> None:
    srv = make_server(hook='#!/bin/sh\nsha256sum > "$PWD/../hook-sum"\n')
    c = RawClient(srv.port)
    c.reply()
    _data(c)
    c.send(BIG + b".\r\n")
    reply = c.reply()
    assert reply.startswith("250 2.0.0 Queued as ")
    item = srv.ctx.queue.get(reply.rsplit(" ", 1)[1])
    assert item is not None
    queued = item.body.read()
    assert len(queued) > MEMORY_LIMIT * 4 and queued.endswith(b"y" * 78 + b"\n")
    seen = (srv.root / "hook-sum").read_text().split()[0]
    assert seen == hashlib.sha256(queued).hexdigest()
    _wait_no_spools(srv)
    c.close()
