"""A monitoring client for the benchmarks: scrapes pages at a fixed rate until stopped.

Usage: python bench/scraper.py BASE_URL RATE PATH...   (e.g. http://127.0.0.1:1099 10 /metrics)

Every 1/RATE seconds it fetches each PATH once, over one kept-alive HTTP
connection as Prometheus does. On SIGTERM it prints how many rounds it made,
how many requests failed and the slowest answer, and exits.
"""

from __future__ import annotations

import http.client
import signal
import sys
import time
from urllib.parse import urlsplit


def main() -> None:
    base, rate, paths = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    url = urlsplit(base)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=10)
    rounds = failures = 0
    slowest = 0.0
    period = 1.0 / rate
    next_round = time.monotonic()
    while not stop:
        for path in paths:
            started = time.monotonic()
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    failures += 1
            except (OSError, http.client.HTTPException):
                failures += 1
                conn.close()
                conn = http.client.HTTPConnection(
                    url.hostname or "127.0.0.1", url.port or 80, timeout=10
                )
            slowest = max(slowest, time.monotonic() - started)
        rounds += 1
        next_round += period
        time.sleep(max(0.0, next_round - time.monotonic()))
    print(
        f"scraper: {rounds} rounds, {failures} failed requests, slowest {slowest * 1000:.1f} ms",
        flush=True,
    )


if __name__ == "__main__":
    main()
