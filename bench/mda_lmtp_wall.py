"""Wall time of one ``mda-lmtp`` run delivering a 1 KiB message (it runs once per message).

Usage: .venv/bin/python bench/mda_lmtp_wall.py [--runs N] [--addr LMTP_ADDRESS --rcpt ADDRESS]

Without --addr the message goes to bench/lmtp_sink.py on a unix socket, so
the figure is mda-lmtp's own cost: interpreter start, imports, the LMTP
dialogue. Runs are sequential. For scale, the same statistics are printed
for a bare interpreter start (``python -c pass``) and for ``import click``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MESSAGE = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n" + b"x" * 70 + b"\r\n"
) * 1
MESSAGE += (b"y" * 78 + b"\r\n") * ((1024 - len(MESSAGE)) // 80)


def timed(argv: Sequence[str], stdin: bytes, runs: int) -> list[float]:
    """Wall seconds of each of ``runs`` sequential runs; every run must exit 0."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=30)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(
                f"{argv[0]} exited {result.returncode}: {result.stdout!r}{result.stderr!r}"
            )
    return times


def row(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return f"{name:<28} {ms[0]:7.1f} {statistics.median(ms):7.1f} {p90:7.1f} {ms[-1]:7.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="runs per row (default 50)")
    parser.add_argument("--addr", default="", help="an LMTP server to use instead of the sink")
    parser.add_argument("--rcpt", default="b@example.com", help="the recipient (for --addr)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mdab-", dir="/tmp"))
    sink = None
    try:
        addr = args.addr
        if not addr:
            addr = str(tmp / "lmtp")
            sink = subprocess.Popen(
                [sys.executable, str(BENCH / "lmtp_sink.py"), addr, str(tmp / "count")]
            )
            deadline = time.monotonic() + 10
            while not os.path.exists(addr):
                if time.monotonic() > deadline:
                    raise SystemExit("the LMTP sink did not start")
                time.sleep(0.02)
        mda = [
            str(BIN / "mda-lmtp"),
            f"--addr={addr}",
            "-f",
            "a@example.com",
            "-d",
            args.rcpt,
        ]
        print(f"{len(MESSAGE)}-byte message, {args.runs} sequential runs, wall ms")
        print(f"{'':<28} {'min':>7} {'p50':>7} {'p90':>7} {'max':>7}")
        print(row("python -c pass", timed([sys.executable, "-c", "pass"], b"", args.runs)))
        print(
            row(
                "python -c 'import click'",
                timed([sys.executable, "-c", "import click"], b"", args.runs),
            )
        )
        print(row("mda-lmtp (delivery)", timed(mda, MESSAGE, args.runs)))
        if sink is not None:
            delivered = (tmp / "count").stat().st_size
            print(f"delivered: {delivered} of {args.runs}")
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
