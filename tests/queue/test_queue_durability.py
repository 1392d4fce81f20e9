"""A put() that returned survives the process being killed at once (SIGKILL)."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chasquid.daemon.queue import QueueStore

# Puts items forever (bounded by the parent), printing each id as soon as put
# returns; the parent kills it with SIGKILL without warning.
PUTTER = r"""
import asyncio, sys
from dataclasses import dataclass
from chasquid.daemon.queue import Queue, QueueStore

@dataclass(frozen=True)
class R:
    address: str
    kind: str = "email"
    via: tuple[str, ...] = ()

class Resolver:
    async def resolve(self, addr):
        return [R(addr)]

async def putter(queue, size, first, step):
    for n in range(first, 10_000, step):
        data = (b"%d " % n) * (size // 8) + b"\n"
        item_id = await queue.put("f@example.org", ["to@example.com"], data)
        sys.stdout.write(f"{item_id} {len(data)}\n")
        sys.stdout.flush()

async def main():
    queue = Queue(QueueStore(sys.argv[1]), Resolver, max_items=100_000)
    await queue.load()
    size, writers = int(sys.argv[2]), int(sys.argv[3])
    # Several writers at once: their puts are written together (segments).
    await asyncio.gather(*(putter(queue, size, k, writers) for k in range(writers)))

asyncio.run(main())
"""


def run_and_kill(queue_dir: Path, size: int, kill_after: int, writers: int = 1) -> dict[str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PUTTER, str(queue_dir), str(size), str(writers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    out = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 60
    try:
        while out.count(b"\n") < kill_after and time.monotonic() < deadline:
            if sel.select(timeout=1):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    out += rest
    assert proc.returncode == -signal.SIGKILL, err.decode()
    # Only complete lines are ids whose put() had returned.
    lines = out.split(b"\n")[:-1]
    assert len(lines) >= kill_after, err.decode()
    return {i.decode(): int(n) for i, n in (line.split() for line in lines)}


@pytest.mark.parametrize("writers", [1, 8])
def test_every_returned_put_survives_sigkill(tmp_path: Path, writers: int) -> None:
    queue_dir = tmp_path / "queue"
    returned = run_and_kill(queue_dir, size=1024, kill_after=30 * writers, writers=writers)
    loaded = {item.id: item for item in QueueStore(queue_dir).load()}
    missing = set(returned) - set(loaded)
    assert not missing, f"items lost after SIGKILL: {sorted(missing)}"
    for item_id, length in returned.items():
        assert len(loaded[item_id].body.read()) == length
        assert loaded[item_id].rcpts[0].address == "to@example.com"
    # Nothing but items, segments and (possibly) one temporary dot-file remain.
    names = os.listdir(queue_dir)
    assert [n for n in names if not n.startswith((".", "m:", "s:"))] == []
    if writers > 1:
        assert any(n.startswith("s:") for n in names)


def test_large_items_survive_sigkill(tmp_path: Path) -> None:
    queue_dir = tmp_path / "queue"
    returned = run_and_kill(queue_dir, size=100 * 1024, kill_after=5)
    loaded = {item.id: len(item.body.read()) for item in QueueStore(queue_dir).load()}
    for item_id, length in returned.items():
        assert loaded.get(item_id) == length
