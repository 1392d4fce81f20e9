"""DKIM costs per message: signing by key type and size, verifying, and the event loop's stalls.

    .venv/bin/python bench/dkim_costs.py [--runs 20]

Signing is timed through chasquid.mailauth.dkimsign (what the daemon runs in a
thread), verifying through dkimverify with a fixed key record (no DNS). The
stall figure is the longest gap a 1 ms ticker on the event loop sees while
messages are signed in a thread, as reception does: dkimpy's RSA is pure
Python and holds the GIL for whole modular exponentiations.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.dkimtest import write_key

from chasquid.confdir.dkimkeys import DKIMKey
from chasquid.mailauth import dkimsign, dkimverify

HEADERS = (
    b"From: Ana <ana@example.com>\nTo: bob@example.org\nSubject: hello\n"
    b"Date: Tue, 03 Jun 2025 10:11:12 +0200\nMessage-ID: <1@example.com>\n\n"
)
LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n"


def message(size: int) -> bytes:
    return HEADERS + LINE * max(1, size // len(LINE))


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median, max) milliseconds of fn over runs."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), max(samples)


def verify(msg: bytes, lookup: dkimverify.KeyLookup | None) -> dkimverify.Verification:
    """One verification on a fresh event loop (no DNS when lookup is given)."""
    return asyncio.run(dkimverify.verify(msg, lookup=lookup))


async def stall(msg: bytes, key: DKIMKey, runs: int) -> float:
    """Longest event-loop gap (ms) while signing msg `runs` times in a thread."""
    gaps: list[float] = []

    async def ticker() -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            gaps.append((time.perf_counter() - start) * 1000 - 1)

    task = asyncio.create_task(ticker())
    for _ in range(runs):
        await asyncio.to_thread(dkimsign.sign, msg, [key])
    task.cancel()
    return max(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="messages per figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        keys = {
            "ed25519": write_key(d, "example.com", "ed", "ed25519"),
            "rsa2048": write_key(d, "example.com", "r2048", "rsa"),
        }
        from helpers.dkimtest import pkcs8_pem, private_key

        from chasquid.confdir.dkimkeys import load_key

        for bits in (3072, 4096):
            path = d / f"dkim:r{bits}.pem"
            path.write_bytes(pkcs8_pem(private_key("rsa", bits)))
            keys[f"rsa{bits}"] = load_key(path, "example.com", f"r{bits}")
        print(f"runs per figure: {args.runs}; milliseconds, median / max")
        for size in (1024, 100 * 1024, 10 * 1024 * 1024):
            msg = message(size)
            runs = args.runs if size < 1024 * 1024 else max(3, args.runs // 5)
            for name, key in keys.items():
                med, worst = timed(functools.partial(dkimsign.sign, msg, [key]), runs)
                print(f"sign   {size // 1024:>6} KiB {name:8} {med:8.2f} / {worst:8.2f}")
            for name in ("ed25519", "rsa2048"):
                key = keys[name]
                signed = b"".join(dkimsign.sign(msg, [key])) + msg
                lookup = dkimverify.fixed_lookup([key.dns_value().encode()])
                med, worst = timed(functools.partial(verify, signed, lookup), runs)
                print(f"verify {size // 1024:>6} KiB {name:8} {med:8.2f} / {worst:8.2f}")
            med, worst = timed(functools.partial(verify, msg, None), runs)
            print(f"verify {size // 1024:>6} KiB unsigned {med:8.2f} / {worst:8.2f}")
        for name in ("rsa2048", "rsa3072"):
            gap = asyncio.run(stall(message(1024), keys[name], args.runs))
            print(f"longest loop stall signing 1 KiB with {name} in a thread: {gap:.1f} ms")


if __name__ == "__main__":
    main()
