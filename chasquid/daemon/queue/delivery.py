"""The per-item delivery loop and queue administration.

Every item in the queue gets one asyncio task that attempts its pending
recipients in parallel, records each outcome durably before reporting it,
sleeps according to the retry schedule and, once nothing is pending or the
item is too old, queues a DSN (never for the null sender) and deletes the
item.

Routing: pipes and local mail (MDA) go one
recipient per call; with ``mail_lmtp_address`` every local recipient of an
item goes in one LMTP transaction; remote recipients (EMAIL to a remote
domain and FORWARD) go to the remote courier, one call per destination
domain, rewritten sender and via list, so it can send them in one SMTP
transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from chasquid.confdir.aliases import RecipientKind
from chasquid.daemon.courier.base import (
    Courier,
    DeliveryError,
    LocalBatchCourier,
    RemoteCourier,
    Results,
)
from chasquid.daemon.courier.srs import forward_sender
from chasquid.daemon.queue.dsn import build_dsn, reporting_domain
from chasquid.daemon.queue.item import QueuedRecipient, QueueItem, RecipientStatus
from chasquid.daemon.queue.queue import ITEM_TRACE_FAMILY, Queue, QueueError
from chasquid.daemon.telemetry import metrics
from chasquid.daemon.telemetry.maillog import MailLog
from chasquid.daemon.telemetry.metrics import Counters
from chasquid.daemon.telemetry.trace import Trace, running
from chasquid.durations import format_duration
from chasquid.errors import ChasquidError
from chasquid.normalize import split_addr

if TYPE_CHECKING:
    from chasquid.confdir.config import Config

log = logging.getLogger("chasquid.queue")


#: The delay after an attempt is the first of these longer than the item's
#: age, else the last one (docs/delivery.md).
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (60.0, 300.0, 600.0, 1200.0)

#: The trace family of a delivery attempt, by ``deliverAttempts`` label; local
#: mail over LMTP is ``Courier.LMTP``.
ATTEMPT_FAMILIES = {
    "pipe": "Courier.Pipe",
    "email:local": "Courier.MDA",
    "email:remote": "Courier.SMTP.Deliver",
    "forward": "Courier.SMTP.Forward",
}
LMTP_FAMILY = "Courier.LMTP"

#: The text a recipient removed by ``queue remove`` is failed with.
REMOVED_MESSAGE = "removed from the queue by the administrator"

#: The temporary error of an attempt cut short because the daemon stopped.
INTERRUPTED_MESSAGE = "delivery interrupted: the daemon stopped before the attempt ended"

#: How long stopping lets delivery attempts in flight run to their end.
DEFAULT_STOP_GRACE = 30.0


@dataclass(frozen=True)
class Couriers:
    """The couriers the delivery loop routes to."""

    local: Courier
    pipe: Courier
    remote: RemoteCourier
    #: When set (``mail_lmtp_address``), local mail goes here instead of ``local``.
    lmtp: LocalBatchCourier | None = None


def next_delay(
    age: float, schedule: Sequence[float] = DEFAULT_RETRY_SCHEDULE, rand: float | None = None
) -> float:
    """Seconds to wait before the next attempt of an item age seconds old.

    The first schedule entry greater than the age, else the last; plus a
    jitter in [0, last/20) (60 s for the default schedule). rand in [0, 1)
    fixes the jitter (for tests).
    """
    if not schedule:
        raise ValueError("empty retry schedule")
    delay = schedule[-1]
    for d in schedule[:-1]:
        if age < d:
            delay = d
            break
    r = random.random() if rand is None else rand
    return delay + r * schedule[-1] / 20


def parse_retry_schedule(text: str) -> tuple[float, ...]:
    """Parse ``--testing__retry_schedule`` (comma-separated Go durations, e.g. ``1s,2s,3s``)."""
    from chasquid.durations import parse_duration

    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("the retry schedule needs at least one duration")
    values = tuple(parse_duration(p) for p in parts)
    if any(v <= 0 for v in values):
        raise ValueError("retry schedule durations must be positive")
    return values


def attempt_kind(rcpt: QueuedRecipient, is_local: Callable[[str], bool]) -> str:
    """The ``deliverAttempts`` label of a recipient."""
    if rcpt.kind is RecipientKind.PIPE:
        return "pipe"
    if rcpt.kind is RecipientKind.FORWARD:
        return "forward"
    return "email:local" if is_local(rcpt.address) else "email:remote"


class ItemRunner:
    """The delivery loop of one item; its current state is ``item``."""

    def __init__(self, delivery: Delivery, item: QueueItem) -> None:
        self.delivery = delivery
        self.item = item
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.next_attempt: datetime | None = None
        self._writes: set[asyncio.Future[bool]] = set()
        # The queue opened it when the item arrived, and closes it when it leaves.
        trace = delivery.queue.trace(item.id)
        self.trace = trace or delivery.queue.tracer.new(ITEM_TRACE_FAMILY, item.id)

    # --- the loop.

    async def run(self) -> None:
        """Attempt until done or given up, then DSN and delete.

        Once the delivery is stopping no new round starts: the round in
        flight ends (its outcomes written) and an item with recipients still
        pending stays for the next start.
        """
        d = self.delivery
        while self._age() < d.queue.give_up:
            if d.stopping:
                return
            await self.attempt_round()
            if not self.item.pending():
                break
            if d.stopping:
                return
            delay = next_delay(self._age(), d.retry_schedule)
            self.trace.debug(f"waiting for {format_duration(round(delay))}")
            self.next_attempt = d.now() + timedelta(seconds=delay)
            d.maillog.queue_loop(self.item.id, self.item.sender, delay)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), delay)
            self.next_attempt = None
        await self.finish()

    def _age(self) -> float:
        return (self.delivery.now() - self.item.created_at).total_seconds()

    async def attempt_round(self) -> None:
        """Attempt every pending recipient in parallel and wait for all of them."""
        d = self.delivery
        item = self.item
        is_local = d.is_local()
        jobs: list[Awaitable[None]] = []
        lmtp_group: list[int] = []
        remote_groups: dict[tuple[str, str, tuple[str, ...]], list[int]] = {}
        for i in item.pending():
            r = item.rcpts[i]
            kind = attempt_kind(r, is_local)
            if kind == "pipe":
                jobs.append(self._single(i, d.couriers.pipe, item.sender, kind))
            elif kind == "email:local":
                if d.couriers.lmtp is not None:
                    lmtp_group.append(i)
                else:
                    jobs.append(self._single(i, d.couriers.local, item.sender, kind))
            else:
                sender = item.sender
                if not is_local(sender):
                    sender = forward_sender(sender, r.original_address)
                _, domain = split_addr(r.address)
                key = (domain, sender, r.via if kind == "forward" else ())
                remote_groups.setdefault(key, []).append(i)
        if lmtp_group:
            lmtp = d.couriers.lmtp
            assert lmtp is not None
            jobs.append(
                self._batch(
                    lmtp_group,
                    lambda rcpts: lmtp.deliver_many(item.sender, rcpts, item.body),
                    "email:local",
                    LMTP_FAMILY,
                )
            )
        for (_, sender, via), indexes in remote_groups.items():
            jobs.append(self._remote(indexes, sender, via))
        await asyncio.gather(*jobs)

    @contextlib.contextmanager
    def _attempt(self, family: str, rcpts: Sequence[str]) -> Iterator[Trace]:
        """The trace of one delivery attempt, a child of the item's; current within the block."""
        for rcpt in rcpts:
            self.trace.debug(f"{rcpt} sending")
        attempt = self.trace.child(family, ", ".join(rcpts))
        try:
            with running(attempt):
                yield attempt
        finally:
            attempt.finish()

    async def _single(self, i: int, courier: Courier, sender: str, kind: str) -> None:
        r = self.item.rcpts[i]
        self.delivery.counters.inc(metrics.QUEUE_DELIVERY_ATTEMPTS, kind)
        interrupted = False
        with self._attempt(ATTEMPT_FAMILIES[kind], [r.address]) as attempt:
            try:
                await courier.deliver(sender, r.address, self.item.body)
                error: DeliveryError | None = None
            except DeliveryError as e:
                error = e
            except asyncio.CancelledError:
                if not self.delivery.interrupting:
                    raise
                error, interrupted = INTERRUPTED, True
            except Exception as e:
                error = _unexpected(self.item.id, r.address, e)
            _note(attempt, r.address, error)
        await self.record(i, error)
        if interrupted:
            raise asyncio.CancelledError

    async def _remote(self, indexes: list[int], sender: str, via: tuple[str, ...]) -> None:
        remote = self.delivery.couriers.remote
        kind = "forward" if via else "email:remote"

        def call(rcpts: Sequence[str]) -> Awaitable[Results]:
            return remote.deliver_many(sender, rcpts, self.item.body, via=via)

        await self._batch(indexes, call, kind, ATTEMPT_FAMILIES[kind])

    async def _batch(
        self,
        indexes: list[int],
        call: Callable[[Sequence[str]], Awaitable[Results]],
        kind: str,
        family: str,
    ) -> None:
        rcpts = [self.item.rcpts[i].address for i in indexes]
        self.delivery.counters.inc(metrics.QUEUE_DELIVERY_ATTEMPTS, kind, by=len(indexes))
        errors: list[DeliveryError | None]
        interrupted = False
        with self._attempt(family, rcpts) as attempt:
            try:
                results = await call(rcpts)
                errors = [results.get(r, _NO_RESULT) for r in rcpts]
            except DeliveryError as e:
                errors = [e] * len(indexes)
            except asyncio.CancelledError:
                if not self.delivery.interrupting:
                    raise
                errors, interrupted = [INTERRUPTED] * len(indexes), True
            except Exception as e:
                errors = [_unexpected(self.item.id, ", ".join(rcpts), e)] * len(indexes)
            for rcpt, error in zip(rcpts, errors, strict=True):
                _note(attempt, rcpt, error)
        for i, error in zip(indexes, errors, strict=True):
            await self.record(i, error)
        if interrupted:
            raise asyncio.CancelledError

    async def record(self, i: int, error: DeliveryError | None) -> None:
        """Apply one attempt's outcome: write it durably first, then log it."""
        d = self.delivery
        if error is None:
            self.item = self.item.with_status(i, RecipientStatus.SENT)
        elif error.permanent:
            self.item = self.item.with_status(i, RecipientStatus.FAILED, error.message)
        else:
            self.item = self.item.with_status(i, RecipientStatus.PENDING, error.message)
        if any(r.status is not RecipientStatus.SENT for r in self.item.rcpts):
            await self.write()
        # else: every recipient is delivered and the item's file is deleted next
        # (after the writes of the other recipients of this round have landed):
        # that deletion is the durable state change, and a crash before it
        # redelivers, exactly as a crash before this write would have.
        r = self.item.rcpts[i]
        item_id, sender = self.item.id, self.item.sender
        # The trace also writes the main log's line (Queue.SendLoop <id>: ...).
        if error is None:
            result = "sent"
            self.trace.log(f"{r.address} sent")
            d.maillog.sent(item_id, sender, r.address)
        else:
            result = "permanent" if error.permanent else "temporary"
            self.trace.error(f"{r.address} {result} error: {error.message}")
            d.maillog.failed(item_id, sender, r.address, error.message, error.permanent)
        d.counters.inc(metrics.QUEUE_DELIVERY_RESULTS, result)

    async def write(self) -> None:
        """Rewrite the item durably; a write in flight survives cancellation of the loop."""
        fut = asyncio.ensure_future(self.delivery.queue.update(self.item))
        self._writes.add(fut)
        fut.add_done_callback(self._writes.discard)
        await asyncio.shield(fut)

    async def settle_writes(self) -> None:
        """Wait for writes started before the loop was cancelled."""
        if self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def finish(self) -> None:
        """DSN if something failed or is still pending (not for ``<>``), then delete."""
        d = self.delivery
        item = self.item
        # From here on administrators cannot remove or flush it: it is leaving.
        d.runners.pop(item.id, None)
        unfinished = any(r.status is not RecipientStatus.SENT for r in item.rcpts)
        if item.pending():
            self.trace.log(f"giving up after {format_duration(round(self._age()))}")
        if unfinished and item.sender != "<>":
            await d.queue_dsn(item)
        self.trace.debug("all done")
        d.maillog.all_done(item.id, item.sender)
        await d.queue.remove(item.id)
        self.trace.finish()


def _note(attempt: Trace, rcpt: str, error: DeliveryError | None) -> None:
    """An attempt's outcome in its own trace (the item's trace logs it to the main log)."""
    if error is None:
        attempt.debug(f"{rcpt} sent")
    else:
        attempt.error(f"{rcpt}: {error.message}", mirror=False)


#: A courier that leaves a recipient out of its results has a bug: retry that one later.
_NO_RESULT = DeliveryError("the courier returned no result for this recipient", permanent=False)

#: The outcome of an attempt stopped at the end of the shutdown grace: not done.
INTERRUPTED = DeliveryError(INTERRUPTED_MESSAGE, permanent=False)


def _unexpected(item_id: str, to: str, e: Exception) -> DeliveryError:
    # A bug in a courier must not kill the item's loop: retry later.
    log.exception("%s: unexpected error delivering to %s", item_id, to)
    return DeliveryError(f"internal error: {type(e).__name__}: {e}", permanent=False)


class AdminError(ChasquidError):
    """A queue administration request that cannot be done (unknown id, ...)."""


class Delivery:
    """Runs one delivery loop per queued item; flush and remove for administrators."""

    def __init__(
        self,
        queue: Queue,
        couriers: Couriers,
        maillog: MailLog,
        is_local: Callable[[], Callable[[str], bool]],
        *,
        retry_schedule: Sequence[float] = DEFAULT_RETRY_SCHEDULE,
        counters: Counters | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.queue = queue
        self.couriers = couriers
        self.maillog = maillog
        self.is_local = is_local
        self.retry_schedule = tuple(retry_schedule)
        self.counters = counters if counters is not None else queue.counters
        self.now = now if now is not None else (lambda: datetime.now(UTC))
        self.runners: dict[str, ItemRunner] = {}
        # Every loop's task, until it ends (a finishing item has left runners).
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set by begin_stop: no attempt starts any more.
        self.stopping = False
        #: Set when the grace has run out: attempts still running are cancelled
        #: and recorded as not done.
        self.interrupting = False
        self._stop_deadline: float | None = None

    def items(self) -> list[QueueItem]:
        """Every item in the queue (for the monitoring pages)."""
        return self.queue.items()

    def __len__(self) -> int:
        """How many items are in the queue."""
        return len(self.queue)

    def start_item(self, item: QueueItem) -> None:
        """Start the loop of a new item (the queue's on_new_item callback)."""
        if self.stopping or item.id in self.runners:
            # While stopping, a new item waits on disk for the next start.
            return
        runner = ItemRunner(self, item)
        self.runners[item.id] = runner
        runner.task = asyncio.get_running_loop().create_task(
            self._guarded(runner), name=f"queue-item-{item.id}"
        )
        self._tasks.add(runner.task)
        runner.task.add_done_callback(self._tasks.discard)

    async def _guarded(self, runner: ItemRunner) -> None:
        try:
            await runner.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The item stays on disk and is retried at the next start.
            log.exception("%s: delivery loop failed", runner.item.id)
            self.runners.pop(runner.item.id, None)

    def is_local_domain(self, domain: str) -> bool:
        """Whether a bare domain is one of ours (for the DSN's reporting domain)."""
        return bool(domain) and self.is_local()("x@" + domain)

    async def queue_dsn(self, item: QueueItem) -> None:
        """Queue the DSN of a finished item; a failure is logged and the DSN dropped."""
        domain = reporting_domain(item, self.is_local_domain)
        try:
            # It reads the start of the message from disk.
            dsn = await asyncio.to_thread(build_dsn, item, domain, datetime.now().astimezone())
        except OSError as e:
            log.error("%s: cannot build the DSN, the message is unreadable: %s", item.id, e)
            return
        trace = self.queue.trace(item.id)
        try:
            dsn_id = await self.queue.put("<>", [item.sender], dsn, origin=trace)
        except QueueError as e:
            log.error("%s: failed to queue DSN: %s", item.id, e)
            if trace is not None:
                trace.error(f"failed to queue the DSN: {e}", mirror=False)
            return
        self.counters.inc(metrics.QUEUE_DSNS)
        log.info("%s: sent DSN %s", item.id, dsn_id)

    # --- administration.

    def flush(self, item_id: str | None = None) -> int:
        """Retry now: wake one item's loop (or every loop); how many were woken."""
        if item_id is not None:
            runner = self.runners.get(item_id)
            if runner is None:
                raise AdminError(f"no item {item_id!r} in the queue")
            runner.wake.set()
            return 1
        for runner in self.runners.values():
            runner.wake.set()
        return len(self.runners)

    async def remove(self, item_id: str, dsn: bool = True) -> None:
        """Take an item out of the queue; with dsn, its sender gets a DSN for what is pending."""
        runner = self.runners.pop(item_id, None)
        if runner is None:
            raise AdminError(f"no item {item_id!r} in the queue")
        if runner.task is not None:
            runner.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner.task
        await runner.settle_writes()
        runner.trace.log(REMOVED_MESSAGE)
        item = runner.item
        for i in item.pending():
            item = item.with_status(i, RecipientStatus.FAILED, REMOVED_MESSAGE)
        runner.item = item
        if (
            dsn
            and item.sender != "<>"
            and any(r.status is RecipientStatus.FAILED for r in item.rcpts)
        ):
            await self.queue_dsn(item)
        self.maillog.all_done(item.id, item.sender)
        await self.queue.remove(item.id)
        runner.trace.finish()

    def next_attempt(self, item_id: str) -> datetime | None:
        """When the item's next attempt is due (None while attempting, or unknown)."""
        runner = self.runners.get(item_id)
        return runner.next_attempt if runner is not None else None

    def begin_stop(self, grace: float = DEFAULT_STOP_GRACE) -> None:
        """Start no new attempt; those in flight may run for ``grace`` seconds more.

        Loops waiting for their next round end at once. ``stop`` waits for the
        others. Calling it again does not move the deadline.
        """
        if self.stopping:
            return
        self.stopping = True
        self._stop_deadline = asyncio.get_running_loop().time() + grace
        for runner in self.runners.values():
            runner.wake.set()

    async def stop(self, grace: float = DEFAULT_STOP_GRACE) -> None:
        """Stop every loop: attempts in flight end and their outcomes are on disk first.

        Attempts still running when the grace (from ``begin_stop``, or from
        now) runs out are stopped (the program killed, the connection
        closed) and recorded as not done: those recipients stay pending, with
        INTERRUPTED_MESSAGE as their last error, and are retried at the next
        start. So a clean stop never delivers a message twice.
        """
        self.begin_stop(grace)
        assert self._stop_deadline is not None
        loop = asyncio.get_running_loop()
        tasks = set(self._tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=max(self._stop_deadline - loop.time(), 0))
            if late:
                log.info("stopping %d delivery attempts still running after the grace", len(late))
                self.interrupting = True
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        for runner in list(self.runners.values()):
            await runner.settle_writes()
        if self.couriers.lmtp is not None:
            await self.couriers.lmtp.close()


def start_delivery(
    queue: Queue,
    couriers: Couriers,
    maillog: MailLog,
    is_local: Callable[[], Callable[[str], bool]],
    *,
    retry_schedule: Sequence[float] = DEFAULT_RETRY_SCHEDULE,
    counters: Counters | None = None,
) -> Delivery:
    """Attach a Delivery to the queue: every item already in it and every new one gets a loop.

    is_local returns the current locality test (it follows domain reloads).
    Must be called with the event loop running.
    """
    delivery = Delivery(
        queue, couriers, maillog, is_local, retry_schedule=retry_schedule, counters=counters
    )
    queue.on_new_item = delivery.start_item
    for item in queue.items():
        delivery.start_item(item)
    return delivery


def couriers_for(config: Config, config_dir: Path, remote: RemoteCourier) -> Couriers:
    """The couriers for a configuration: MDA or LMTP for local mail, pipes, and remote."""
    from chasquid.daemon.courier.lmtp import LMTPCourier
    from chasquid.daemon.courier.mda import mda_from_config
    from chasquid.daemon.courier.pipe import PipeCourier

    lmtp = (
        LMTPCourier(config.mail_lmtp_address, config.hostname) if config.mail_lmtp_address else None
    )
    return Couriers(
        local=mda_from_config(
            config.mail_delivery_agent_bin, config.mail_delivery_agent_args, config_dir
        ),
        pipe=PipeCourier(config_dir),
        remote=remote,
        lmtp=lmtp,
    )
