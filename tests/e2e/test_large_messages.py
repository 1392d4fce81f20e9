"""Memory per message in flight is bounded by buffers, not by the message size.

Four 32 MiB messages (128 MiB in all) arrive at once; the MDA fails
temporarily, so they stay queued and are read again at every attempt. Before
bodies were spooled to disk and streamed, six 49 MiB messages took the
daemon from 343 MiB to 1.1 GB and it stayed above 1 GB while they were
queued. Now (measured on this 2-core machine: 37 MiB before, 54-56 MiB at the
peak and 53 MiB once queued, for six 49 MiB messages; `bench/large_messages.py`)
the growth must stay under GROWTH_BOUND, far below the 128 MiB in flight.
"""

from __future__ import annotations

from pathlib import Path

from helpers.largemail import measure

COUNT, MIB = 4, 32
#: The most the daemon's RSS may grow while receiving (and while holding) the messages.
GROWTH_BOUND = 48.0


def test_parallel_large_messages_stay_out_of_memory(tmp_path: Path) -> None:
    f = measure(tmp_path, COUNT, MIB)
    report = f"before {f.before:.0f} MiB, peak {f.peak:.0f} MiB, queued {f.queued:.0f} MiB"
    print(f"{COUNT} x {MIB} MiB: {report}")
    # Every message is on disk (its CRLF line endings stored as LF: 1/80 less).
    assert f.queue_bytes > COUNT * MIB * 1024 * 1024 * 0.97, report
    assert f.peak - f.before < GROWTH_BOUND, report
    assert f.queued - f.before < GROWTH_BOUND, report
