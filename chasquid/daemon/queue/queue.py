"""The queue: accepts messages durably and keeps every pending item in memory.

The per-item delivery loop is not here: it plugs in through
``on_new_item``, called for every item that enters the queue (``put`` and
``load``), and uses ``get``/``update``/``remove``.

Each item has a trace (family ``Queue.SendLoop``) from the moment it enters
the queue until it leaves it; the delivery loop records its attempts there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from chasquid.confdir.aliases import RecipientKind
from chasquid.daemon.queue.ids import new_id
from chasquid.daemon.queue.item import QueuedRecipient, QueueItem, RecipientStatus
from chasquid.daemon.queue.store import QueueStore, QueueStoreError, StoreOp
from chasquid.daemon.telemetry import metrics
from chasquid.daemon.telemetry.metrics import Counters
from chasquid.daemon.telemetry.trace import Trace, Tracer
from chasquid.errors import ChasquidError
from chasquid.msgbody import Body

log = logging.getLogger("chasquid.queue")


#: The trace family of queue items.
ITEM_TRACE_FAMILY = "Queue.SendLoop"

DEFAULT_MAX_ITEMS = 200
DEFAULT_GIVE_UP = 20 * 3600.0


class QueueError(ChasquidError):
    """An enqueue failure; the message is what follows ``Failed to queue message: ``."""


class ResolvedRecipient(Protocol):
    """What the alias resolver returns per final recipient (chasquid.confdir.aliases.Recipient)."""

    @property
    def address(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def via(self) -> Sequence[str]: ...


class AliasResolver(Protocol):
    """The part of chasquid.confdir.aliases.Resolver the queue needs."""

    async def resolve(self, addr: str) -> Sequence[ResolvedRecipient]: ...


NewItemCallback = Callable[[QueueItem], None]


class Queue:
    """Durable queue of items; every item is in memory and on disk."""

    def __init__(
        self,
        store: QueueStore,
        resolver_getter: Callable[[], AliasResolver],
        max_items: int = DEFAULT_MAX_ITEMS,
        give_up: float = DEFAULT_GIVE_UP,
        *,
        on_new_item: NewItemCallback | None = None,
        counters: Counters | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        self.counters = counters if counters is not None else Counters()
        self.tracer = tracer if tracer is not None else Tracer()
        # Only positive values override the defaults.
        self.max_items = max_items if max_items > 0 else DEFAULT_MAX_ITEMS
        self.give_up = give_up if give_up > 0 else DEFAULT_GIVE_UP
        self.on_new_item = on_new_item
        self._resolver_getter = resolver_getter
        self._items: dict[str, QueueItem] = {}
        self._traces: dict[str, Trace] = {}
        # Group commit: changes asked for while the store is busy wait here and
        # go to disk together, in one worker-thread call with one directory fsync.
        self._ops: list[tuple[StoreOp, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def get(self, item_id: str) -> QueueItem | None:
        """The current version of an item, or None if it is not queued."""
        return self._items.get(item_id)

    def items(self) -> list[QueueItem]:
        """A snapshot of every queued item."""
        return list(self._items.values())

    def trace(self, item_id: str) -> Trace | None:
        """The trace of a queued item (None once it has left the queue)."""
        return self._traces.get(item_id)

    async def load(self) -> list[QueueItem]:
        """Load the items on disk (at start-up) and hand each to on_new_item.

        Loaded items are not counted against max_items. Raises QueueError if
        the directory cannot be created or read.
        """
        try:
            await asyncio.to_thread(self.store.ensure)
            loaded = await asyncio.to_thread(self.store.load)
        except QueueStoreError as e:
            raise QueueError(str(e)) from None
        for item in loaded:
            self._register(item)
        return loaded

    async def put(
        self,
        sender: str,
        rcpts: Iterable[str],
        body: Body | bytes,
        *,
        origin: Trace | None = None,
    ) -> str:
        """Queue a message durably and return its id.

        rcpts are the RCPT addresses as accepted; each is expanded through the
        current alias resolver. body is the message (bytes: a small one in
        memory, such as a DSN). When this returns, the item is on disk, with a
        copy of the message: the caller may delete the files ``body`` read
        from (a reception spool). From then on the item's body is read from
        the item's file. ``origin`` is the trace of what produced the message (the SMTP
        connection, or the item a DSN reports on): it and the item's trace
        link to each other.
        """
        if len(self._items) >= self.max_items:
            raise QueueError("Queue size too big, try again later")
        self.counters.inc(metrics.QUEUE_PUTS)

        resolver = self._resolver_getter()
        to: list[str] = []
        queued: list[QueuedRecipient] = []
        for addr in rcpts:
            to.append(addr)
            try:
                resolved = await resolver.resolve(addr)
            except Exception as e:
                raise QueueError(f'error resolving aliases for "{addr}": {e}') from None
            queued.extend(
                QueuedRecipient(
                    address=r.address,
                    kind=RecipientKind(r.kind),
                    status=RecipientStatus.PENDING,
                    original_address=addr,
                    via=tuple(r.via),
                )
                for r in resolved
            )

        item = QueueItem(
            id=new_id(),
            # Reception hands the null sender over as ""; the item format (and the
            # no-DSN-about-a-DSN rule) know it only as "<>".
            sender=sender or "<>",
            to=tuple(to),
            rcpts=tuple(queued),
            body=body if isinstance(body, Body) else Body.of(body),
            created_at=datetime.now(UTC),
        )
        try:
            await self._write(item, new=True)
        except QueueStoreError as e:
            raise QueueError(f"failed to write item: {e}") from None
        self._register(item.with_body(self.store.body(item.id)), origin)
        return item.id

    async def update(self, item: QueueItem) -> bool:
        """Replace an item in memory and rewrite it durably.

        A write error is logged and otherwise ignored: the
        in-memory version still advances. Returns whether the write succeeded.
        """
        if item.id in self._items:
            self._items[item.id] = item
        try:
            await self._write(item)
        except QueueStoreError as e:
            log.error("%s: failed to write item: %s", item.id, e)
            return False
        return True

    async def remove(self, item_id: str) -> None:
        """Delete an item's file, then forget it (a deletion error is only logged).

        The item leaves memory last, so whoever sees the queue without it (a
        ``queue list``, a caller waiting for the queue to drain) also sees its
        file gone.
        """
        try:
            await self._submit(StoreOp(item_id=item_id))
        except QueueStoreError as e:
            log.error("%s: failed to remove queue file: %s", item_id, e)
        finally:
            self._items.pop(item_id, None)
            trace = self._traces.pop(item_id, None)
            if trace is not None:
                trace.finish()

    async def _write(self, item: QueueItem, *, new: bool = False) -> None:
        await self._submit(StoreOp(item=item, new=new))
        self.counters.inc(metrics.QUEUE_ITEMS_WRITTEN)

    async def _submit(self, op: StoreOp) -> None:
        """Hand a change to the flusher; return when it is on disk (raise its error)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ops.append((op, fut))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        # A cancelled caller cancels only its wait: the op stays in its batch.
        await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._ops:
                batch, self._ops = self._ops, []

                def written(
                    results: list[QueueStoreError | None],
                    batch: list[tuple[StoreOp, asyncio.Future[None]]] = batch,
                ) -> None:
                    # From the store's thread, as soon as the writes are durable:
                    # a put's 250 need not wait for the removals after them.
                    loop.call_soon_threadsafe(_settle, batch, results, True)

                try:
                    # fsync may take a long time: it must not stall the event loop.
                    results = await asyncio.to_thread(
                        self.store.apply, [op for op, _ in batch], written
                    )
                except BaseException as e:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(QueueStoreError(f"queue write failed: {e}"))
                    if isinstance(e, Exception):
                        continue  # reported to every waiter; later batches still go
                    raise
                _settle(batch, results, False)
        finally:
            self._flusher = None

    async def stop(self) -> None:
        """Wait until every change handed to the flusher is on disk (at shutdown)."""
        while (flusher := self._flusher) is not None and not flusher.done():
            # Errors were already given to the writes' own waiters.
            await asyncio.wait([flusher])

    def _register(self, item: QueueItem, origin: Trace | None = None) -> None:
        self._items[item.id] = item
        trace = self.tracer.new(ITEM_TRACE_FAMILY, item.id)
        trace.debug(f"from {item.sender} to {', '.join(item.to)}")
        if origin is not None:
            origin.link(trace, f"queued as {item.id}")
            trace.link(origin, f"queued by {origin.family} {origin.title}")
        else:
            trace.debug("loaded from the queue directory")
        self._traces[item.id] = trace
        if self.on_new_item is not None:
            self.on_new_item(item)


def _settle(
    batch: list[tuple[StoreOp, asyncio.Future[None]]],
    results: list[QueueStoreError | None],
    writes_only: bool,
) -> None:
    """Give each waiter of the batch its op's outcome (only the writes' when writes_only)."""
    for (op, fut), error in zip(batch, results, strict=True):
        if fut.done() or (writes_only and op.item is None):
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
