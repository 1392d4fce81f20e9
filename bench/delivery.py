"""End-to-end delivery benchmark: messages/s from the first send until the sink has them all.

Usage: .venv/bin/python bench/delivery.py [--messages N] [--time-limit S] [--only ours]
       [--servers ours,chasquid] [--baseline PATH]

Two ways of local delivery, each at 8 and 32 connections with 1 KiB messages
on the SMTP port (null sender):

- ``mda``: both servers run bench/sink-mda.c (compiled here with gcc) once
  per message; it reads the message and appends one byte to a counter file.
- ``lmtp``: ours hands mail over native LMTP (``mail_lmtp_address``) to
  bench/lmtp_sink.py, which appends one byte per delivered recipient. Debian's
  chasquid has no LMTP client: its MDA figure is the baseline for this row.

The clock starts at the first send and stops when the counter file holds
every accepted message (bounded by --time-limit). The sinks are measured
alone first, so a reader can see they are not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen
import run as common

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))


def build_sink(out_dir: Path) -> Path:
    """Compile bench/sink-mda.c into out_dir (static when the toolchain allows)."""
    binary = out_dir / "sink-mda"
    src = str(BENCH / "sink-mda.c")
    for flags in (["-O2", "-static"], ["-O2"]):
        done = subprocess.run(["gcc", *flags, "-o", str(binary), src], capture_output=True)
        if done.returncode == 0:
            return binary
    raise SystemExit(f"gcc could not build {src}: {done.stderr.decode()}")


def wait_count(counter: Path, target: int, deadline: float) -> int:
    """Poll the counter file until it holds target bytes or the deadline passes."""
    n = 0
    while time.monotonic() < deadline:
        try:
            n = counter.stat().st_size
        except FileNotFoundError:
            n = 0
        if n >= target:
            return n
        time.sleep(0.005)
    return n


@dataclass
class LMTPSink:
    """bench/lmtp_sink.py running as its own process."""

    socket: Path
    counter: Path
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, root: Path) -> LMTPSink:
        """Start a sink with its socket and counter in root."""
        root.mkdir(parents=True, exist_ok=True)
        sock, counter = root / "lmtp.sock", root / "lmtp.count"
        proc = subprocess.Popen(
            [sys.executable, str(BENCH / "lmtp_sink.py"), str(sock), str(counter)]
        )
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the LMTP sink did not start")
            time.sleep(0.02)
        return cls(sock, counter, proc)

    def stop(self) -> None:
        """Terminate the sink and wait for it."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def sink_alone_mda(sink: Path, root: Path, messages: int, connections: int) -> float:
    """Messages/s of the MDA sink alone: spawned from `connections` threads."""
    counter = root / "mda-alone.count"
    body = loadgen.make_message(1024)

    def one(_: int) -> None:
        subprocess.run([str(sink), str(counter)], input=body, check=True)

    start = time.monotonic()
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(one, range(messages)))
    return messages / (time.monotonic() - start)


def sink_alone_lmtp(root: Path, messages: int, connections: int) -> float:
    """Messages/s of the LMTP sink alone, fed by our LMTP courier over `connections`."""
    from chasquid.daemon.courier.lmtp import LMTPCourier
    from chasquid.msgbody import Body

    sink = LMTPSink.start(Path(tempfile.mkdtemp(prefix="lmtp-alone-", dir=root)))
    body = Body.of(loadgen.make_message(1024)[:-3])

    async def feed() -> float:
        courier = LMTPCourier(str(sink.socket), "bench", pool_size=connections)
        left = [messages]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                await courier.deliver("", f"{common.USER}@{common.DOMAIN}", body)

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - start
        await courier.close()
        return messages / elapsed

    try:
        return asyncio.run(feed())
    finally:
        sink.stop()


@dataclass(frozen=True)
class Case:
    """One row of the table: a delivery method and a connection count."""

    method: str  # "mda" or "lmtp"
    connections: int

    @property
    def label(self) -> str:
        """The row's name, e.g. `1KiB mda c=8`."""
        return f"1KiB {self.method} c={self.connections}"


def measure(
    name: str, case: Case, root: Path, sink: Path, args: argparse.Namespace
) -> dict[str, float | str]:
    """Run one server through one case and return its row."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"deliv-{name}-", dir=root))
    counter = run_dir / "mda.count"
    # Ours already gets max_queue_items from bench/run.py's start(); Debian's
    # 1.11 has no such key (its limit is 200 items, fixed).
    extra = ""
    lmtp: LMTPSink | None = None
    if case.method == "lmtp" and name != "chasquid":
        lmtp = LMTPSink.start(run_dir / "lmtp")
        counter = lmtp.counter
        extra += f'mail_lmtp_address: "{lmtp.socket}"\n'
    ports = common.Ports.free()
    server = common.start(name, run_dir, ports, mda=(str(sink), str(counter)), extra=extra)
    try:
        cpu0 = server.cpu_seconds()
        load = loadgen.Load(
            host="127.0.0.1",
            port=ports.smtp,
            connections=case.connections,
            messages=args.messages,
            size=1024,
            rcpt=f"{common.USER}@{common.DOMAIN}",
            time_limit=args.time_limit,
        )
        start = time.monotonic()
        result = asyncio.run(loadgen.run(load))
        received = time.monotonic() - start
        delivered = wait_count(counter, result.accepted, start + args.time_limit * 2)
        elapsed = time.monotonic() - start
        cpu = server.cpu_seconds() - cpu0
    finally:
        server.stop()
        if lmtp is not None:
            lmtp.stop()
    rate = delivered / elapsed if elapsed else 0.0
    print(
        f"{name:8} {case.label:18} accepted={result.accepted:5} refused={result.refused:4} "
        f"delivered={delivered:5} "
        f"in {elapsed:6.2f}s (reception {received:5.2f}s)  {rate:8.1f} delivered/s  "
        f"CPU/1k={cpu / max(delivered, 1) * 1000:5.2f}s"
        + (f"  [{result.first_error[:60]}]" if result.first_error else ""),
        flush=True,
    )
    return {
        "server": name,
        "case": case.label,
        "rate": rate,
        "complete": delivered >= result.accepted,
    }


def run_all(
    args: argparse.Namespace, servers: list[str], log: Callable[[str], None] = print
) -> None:
    """The whole delivery benchmark: sinks alone, then every case, then ratios."""
    root = Path(tempfile.mkdtemp(prefix="chasquid-bench-delivery-"))
    try:
        sink = build_sink(root)
        log("# sinks alone (must be well above the servers' figures)")
        for n in (8, 32) if getattr(args, "sinks", True) else ():
            mda_rate = sink_alone_mda(sink, root, args.messages, n)
            log(f"mda sink alone   c={n:<3} {mda_rate:8.1f} msg/s")
            lmtp_rate = sink_alone_lmtp(root, args.messages, n)
            log(f"lmtp sink alone  c={n:<3} {lmtp_rate:8.1f} msg/s")
        log(f"# delivery: {' vs '.join(servers)}; {args.messages} messages of 1 KiB per case")
        rows = []
        for method in getattr(args, "methods", ("mda", "lmtp")):
            for n in (8, 32):
                case = Case(method, n)
                for name in servers:
                    rows.append(measure(name, case, root, sink, args))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    by_case: dict[str, dict[str, dict[str, float | str]]] = {}
    for row in rows:
        by_case.setdefault(str(row["case"]), {})[str(row["server"])] = row
    subject = servers[0]
    for other in servers[1:]:
        if other == "chasquid":
            log(
                f"\n# delivered/s ratios {subject}/chasquid "
                "(Debian's chasquid uses the MDA in both rows)"
            )
        else:
            log(f"\n# delivered/s ratios {subject}/{other}")
        for case_label, pair in by_case.items():
            o, c = float(pair[subject]["rate"]), float(pair[other]["rate"])
            ratio = o / c if c else float("nan")
            if other == "chasquid":
                target = 1.5 if "lmtp" in case_label else 1.0
                verdict = "ok" if c and ratio >= target else "BELOW TARGET"
                log(f"{case_label:18} {ratio:5.2f}x  (target {target}x: {verdict})")
            else:
                log(f"{case_label:18} {ratio:5.2f}x")


def main() -> None:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per case")
    parser.add_argument(
        "--time-limit", type=float, default=30.0, help="seconds of sending per case"
    )
    common.add_server_options(parser)
    parser.add_argument(
        "--method", dest="methods", action="append", choices=["mda", "lmtp"], help="repeatable"
    )
    parser.add_argument("--no-sinks", dest="sinks", action="store_false", help="skip sinks alone")
    args = parser.parse_args()
    args.methods = args.methods or ["mda", "lmtp"]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    run_all(args, common.chosen_servers(args))


if __name__ == "__main__":
    main()
