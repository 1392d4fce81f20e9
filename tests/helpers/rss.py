"""A process's resident memory, sampled from /proc while a test or a benchmark runs."""

from __future__ import annotations

import threading
import time


def rss_mib(pid: int) -> float:
    """The process's resident set size in MiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class PeakSampler(threading.Thread):
    """Samples a process's RSS every ``interval`` seconds until ``stop``; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0.0
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(self.interval)

    def stop(self) -> float:
        """Stop sampling; the peak RSS in MiB."""
        self._stopping.set()
        self.join(10)
        return self.peak
