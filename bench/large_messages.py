"""Memory of the daemon with large messages in flight: RSS while receiving and while queued.

Starts the real daemon on a fresh config dir (its MDA fails temporarily, so
accepted messages stay in the queue and are attempted again and again),
samples its resident set size every 50 ms, and sends N messages of S MiB at
once over N connections. Prints the RSS before, the peak during reception
and the first delivery attempts, and the RSS once every message is queued.

    .venv/bin/python bench/large_messages.py                 # 6 x 49 MiB
    .venv/bin/python bench/large_messages.py --count 2 --mib 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.largemail import measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=6, help="messages sent at once")
    parser.add_argument("--mib", type=int, default=49, help="size of each message in MiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chasquid-bench-") as tmp:
        f = measure(Path(tmp), args.count, args.mib)
    print(
        f"{args.count} x {args.mib} MiB in {f.seconds:.1f} s: RSS before {f.before:.0f} MiB, "
        f"peak {f.peak:.0f} MiB, all queued {f.queued:.0f} MiB"
    )


if __name__ == "__main__":
    main()
