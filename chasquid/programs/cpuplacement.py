"""Which CPU a program started from the loop runs on: the loop's until it execs, then others.

posix_spawn (vfork) stops the loop until the new child has exec'd. Left to
itself, the kernel often queues that child on the loop's CPU behind the
previous program, which the waking loop had preempted, while the other CPU
sits idle; the loop then waits for a whole time slice (bench/README.md,
"Why the MDA rows wait"). So for the length of the spawn the calling thread
is pinned to the CPU it is on, where the child, inheriting that mask, runs at
once because its parent is blocked; afterwards the thread gets its mask back
and the child is moved to the thread's other CPUs, so it does not compete
with the loop. Measured with an MDA at 8 connections: 20-30% more mail
delivered per second on two CPUs.

Nothing is pinned for longer than a spawn: the loop stays free to migrate,
and the masks are read at every spawn, so an administrator's CPUAffinity= or
taskset is respected. With a single allowed CPU nothing changes.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass


@functools.cache
def _sched_getcpu() -> Callable[[], int] | None:
    # Imported at the first spawn, not at start-up: a daemon delivering over
    # LMTP without hooks never spawns, and ctypes costs 0.3 MiB resident.
    import ctypes

    # PyDLL keeps the GIL during the call: releasing it for a vDSO read would
    # let a waiting thread take the GIL and stall the loop for a switch interval.
    try:
        getcpu = ctypes.PyDLL(None).sched_getcpu
    except (AttributeError, OSError):
        return None
    getcpu.argtypes = []
    getcpu.restype = ctypes.c_int
    if not hasattr(os, "sched_setaffinity") or getcpu() < 0:
        return None
    return getcpu


@dataclass(frozen=True)
class Pinned:
    """The calling thread pinned to one CPU for a spawn; `allowed` is its mask before."""

    cpu: int
    allowed: frozenset[int]


def pin() -> Pinned | None:
    """Pin the calling thread to the CPU it runs on, if it may run on others too."""
    getcpu = _sched_getcpu()
    if getcpu is None:
        return None
    try:
        allowed = frozenset(os.sched_getaffinity(0))
        cpu = getcpu()
        if len(allowed) < 2 or cpu not in allowed:
            return None
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return None
    return Pinned(cpu, allowed)


def release(pinned: Pinned | None, child: int) -> None:
    """Give the thread its mask back and move the child (pid, 0 if none) off the pinned CPU."""
    if pinned is None:
        return
    # EINVAL if a cpuset shrank meanwhile: the kernel's own mask stands then.
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, pinned.allowed)
    if child > 0:
        # ESRCH when a quick program has already exited.
        with contextlib.suppress(OSError):
            os.sched_setaffinity(child, pinned.allowed - {pinned.cpu})
