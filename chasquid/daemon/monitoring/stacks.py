"""``/debug/pprof/goroutine``: where every asyncio task and every thread is right now."""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback
from collections.abc import Iterator
from types import CoroutineType, FrameType, GeneratorType
from typing import Any


def _await_chain(task: asyncio.Task[Any]) -> list[FrameType]:
    """The frames of a task's coroutine and of every coroutine it is awaiting, outermost first.

    ``Task.get_stack`` stops at the task's own coroutine; following
    ``cr_await`` shows where inside it the task really waits.
    """
    frames: list[FrameType] = []
    awaitable: Any = task.get_coro()
    seen = 0
    while awaitable is not None and seen < 200:
        seen += 1
        if isinstance(awaitable, CoroutineType):
            frame, awaitable = awaitable.cr_frame, awaitable.cr_await
        elif isinstance(awaitable, GeneratorType):
            frame, awaitable = awaitable.gi_frame, awaitable.gi_yieldfrom
        else:
            frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
            awaitable = getattr(awaitable, "cr_await", None)
        if frame is not None:
            frames.append(frame)
    return frames


def _frame_lines(frames: list[FrameType]) -> list[str]:
    summary = traceback.StackSummary.extract(
        ((f, f.f_lineno) for f in frames), lookup_lines=True, capture_locals=False
    )
    return [line.rstrip("\n") for line in summary.format()]


def _thread_frames(frame: FrameType | None) -> list[FrameType]:
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    return frames


def dump(loop: asyncio.AbstractEventLoop) -> Iterator[str]:
    """The dump, in pieces (one per task or thread) so a caller can send it as it goes."""
    tasks = sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())
    threads = {t.ident: t for t in threading.enumerate()}
    frames = sys._current_frames()
    yield f"{len(tasks)} asyncio tasks, {len(frames)} threads\n\n"
    current = asyncio.current_task(loop)
    for task in tasks:
        state = "running" if task is current else ("done" if task.done() else "waiting")
        coro = task.get_coro()
        name = getattr(coro, "__qualname__", type(coro).__name__)
        lines = _frame_lines(_await_chain(task))
        yield (
            f"task {task.get_name()} ({name}) [{state}]:\n"
            + "".join(line + "\n" for line in lines)
            + "\n"
        )
    for ident, frame in sorted(frames.items()):
        thread = threads.get(ident)
        label = thread.name if thread is not None else "unknown"
        lines = _frame_lines(_thread_frames(frame))
        yield f"thread {label} ({ident}):\n" + "".join(line + "\n" for line in lines) + "\n"
