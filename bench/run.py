"""Reception benchmark: this daemon against Debian's chasquid, side by side in one run.

Usage: .venv/bin/python bench/run.py [--quick] [--messages N] [--time-limit S] [--only ours]
       [--delivery yes|no|only] [--servers ours,chasquid] [--baseline PATH]

For every message size (1 KiB, 100 KiB), connection count (1, 8, 32, 128) and
sender mode (null sender on the SMTP port; authenticated submission over
STARTTLS), it starts each server on the same generated config, sends a
bounded load on loopback and prints accepted messages/s, p50/p99 latency, the
server's peak RSS and CPU seconds per 1,000 messages, then our/chasquid
ratios. Finally it opens 1,000 connections at once, each sending one message.
Every load is bounded by a message count and a time limit. Then, unless
``--delivery no``, the end-to-end delivery benchmark of bench/delivery.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen

REPO = Path(__file__).resolve().parent.parent
OURS = Path(sys.executable).parent / "chasquid"


def find_debian_chasquid() -> Path | None:
    """Debian's chasquid binary, unpacked by bench/debian-chasquid.sh (or installed)."""
    script = Path(__file__).resolve().parent / "debian-chasquid.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True).stdout.strip()
    for candidate in (out, "/usr/bin/chasquid"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


DEBIAN = find_debian_chasquid()
#: Another build of ours to compare with (--baseline), e.g. a worktree's .venv/bin/chasquid.
BASELINE: Path | None = None

#: What can be measured: our build, ours while a client scrapes its monitoring pages
#: 10 times a second, another build of ours (--baseline), and Debian's chasquid.
SERVERS = ("ours", "ours-scraped", "baseline", "chasquid")
#: What the scraper of "ours-scraped" fetches in each round, and how many rounds a second.
SCRAPED_PATHS = ("/metrics", "/debug/traces")
SCRAPE_RATE = 10.0
DOMAIN = "example.test"
USER = "user"
PASSWORD = "bench-password"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(certs: Path) -> None:
    """A self-signed certificate for localhost, in certbot's layout."""
    from chasquid.selfsigned import self_signed as make_pair

    pair = make_pair(["localhost"])
    d = certs / "localhost"
    d.mkdir(parents=True)
    (d / "fullchain.pem").write_bytes(pair.fullchain_pem)
    (d / "privkey.pem").write_bytes(pair.privkey_pem)


def legacy_users_file() -> str:
    """The user in chasquid's protobuf-text format, which both servers read."""
    salt = os.urandom(16)
    key = hashlib.scrypt(PASSWORD.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)

    def octal(b: bytes) -> str:
        return "".join(f"\\{c:03o}" for c in b)

    return (
        f'users: {{ key: "{USER}" value: {{ scrypt: {{ logN: 14 r: 8 p: 1 keyLen: 32 '
        f'salt: "{octal(salt)}" encrypted: "{octal(key)}" }} }} }}\n'
    )


@dataclass(frozen=True)
class Ports:
    smtp: int
    submission: int
    submission_tls: int
    monitoring: int = 0

    @classmethod
    def free(cls) -> Ports:
        """Four free ports."""
        return cls(free_port(), free_port(), free_port(), free_port())


def make_config(
    root: Path, ports: Ports, mda: tuple[str, str] | None = None, extra: str = ""
) -> Path:
    """A config dir both servers load; returns it.

    mda is (program, argument) for the MDA (default: a shell script that
    discards the message); extra is appended to chasquid.conf.
    """
    config = root / "config"
    (config / "domains" / DOMAIN).mkdir(parents=True)
    self_signed(config / "certs")
    if mda is None:
        sink = root / "sink-mda"
        sink.write_text("#!/bin/sh\nexec cat > /dev/null\n")
        sink.chmod(0o755)
        mda = (str(sink), "%to%")
    (config / "chasquid.conf").write_text(
        f'hostname: "localhost"\n'
        f'smtp_address: "127.0.0.1:{ports.smtp}"\n'
        f'submission_address: "127.0.0.1:{ports.submission}"\n'
        f'submission_over_tls_address: "127.0.0.1:{ports.submission_tls}"\n'
        f'mail_delivery_agent_bin: "{mda[0]}"\n'
        f'mail_delivery_agent_args: "{mda[1]}"\n'
        f'data_dir: "{root / "data"}"\n'
        f'mail_log_path: "{root / "mail.log"}"\n'
        + (f'monitoring_address: "127.0.0.1:{ports.monitoring}"\n' if ports.monitoring else "")
        + extra
    )
    (config / "domains" / DOMAIN / "users").write_text(legacy_users_file())
    return config


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    scraper: subprocess.Popen[bytes] | None = None

    def cpu_seconds(self) -> float:
        """CPU of the server and its programs: its own and, recursively, its live
        children's, each with the children it waited for."""
        return _tree_cpu(self.proc.pid) / TICKS

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.scraper is not None:
            self.scraper.send_signal(signal.SIGTERM)
            out, _ = self.scraper.communicate(timeout=30)
            print("        " + out.decode().strip(), flush=True)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _tree_cpu(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0  # gone meanwhile: its figures went to its parent's children times
    # utime, stime, cutime, cstime.
    return sum(int(f) for f in fields[11:15]) + sum(_tree_cpu(int(c)) for c in children)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not open after {timeout}s")


def start(
    name: str, root: Path, ports: Ports, mda: tuple[str, str] | None = None, extra: str = ""
) -> Server:
    """Start one server on a fresh copy of the config (fresh queue each time).

    Every build of ours serves its monitoring pages (as a configured server
    does); "ours-scraped" also gets a client fetching them SCRAPE_RATE times
    a second while it runs.
    """
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    if name != "chasquid":
        ports = replace(ports, monitoring=ports.monitoring or free_port())
    config = make_config(run_dir, ports, mda, extra)
    log = open(run_dir / "main.log", "wb")  # noqa: SIM115 - lives as long as the server
    if name == "chasquid":
        cmd = [str(DEBIAN), f"-config_dir={config}"]
    else:
        binary = BASELINE if name == "baseline" else OURS
        cmd = [
            str(binary),
            f"--config_dir={config}",
            # All the load comes from 127.0.0.1: the per-client limit would refuse
            # most of the 1,000 connections at once.
            "--config_overrides=max_queue_items: 1000000\n"
            "max_connections: 5000\nmax_connections_per_ip: 5000",
        ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir)
    wait_port(ports.smtp, proc)
    wait_port(ports.submission, proc)
    scraper = None
    if name == "ours-scraped":
        wait_port(ports.monitoring, proc)
        scraper = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve().parent / "scraper.py"),
                f"http://127.0.0.1:{ports.monitoring}",
                str(SCRAPE_RATE),
                *SCRAPED_PATHS,
            ],
            stdout=subprocess.PIPE,
        )
    return Server(name, proc, scraper)


def load_for(
    mode: str, ports: Ports, connections: int, size: int, args: argparse.Namespace
) -> loadgen.Load:
    null_sender = loadgen.Load(
        host="127.0.0.1",
        port=ports.smtp,
        connections=connections,
        messages=args.messages,
        size=size,
        rcpt=f"{USER}@{DOMAIN}",
        sender="",
        time_limit=args.time_limit,
    )
    if mode == "null-sender":
        return null_sender
    return replace(
        null_sender,
        port=ports.submission,
        sender=f"{USER}@{DOMAIN}",
        auth=(f"{USER}@{DOMAIN}", PASSWORD),
        starttls=True,
    )


def measure(
    name: str, root: Path, load_fn: Callable[[Ports], loadgen.Load], label: str
) -> dict[str, float | str]:
    ports = Ports.free()
    server = start(name, root, ports)
    try:
        cpu0 = server.cpu_seconds()
        result = asyncio.run(loadgen.run(load_fn(ports)))
        cpu = server.cpu_seconds() - cpu0
        rss = server.peak_rss_mib()
    finally:
        server.stop()
    rate = result.accepted / result.elapsed if result.elapsed else 0.0
    row: dict[str, float | str] = {
        "server": name,
        "case": label,
        "accepted": result.accepted,
        "refused": result.refused,
        "errors": result.errors,
        "msg/s": rate,
        "p50 ms": result.percentile(50) * 1000,
        "p99 ms": result.percentile(99) * 1000,
        "peak RSS MiB": rss,
        "CPU s/1k msg": cpu / result.accepted * 1000 if result.accepted else float("nan"),
        "first error": result.first_error[:60],
    }
    print(
        f"{name:7} {label:32} accepted={result.accepted:5} refused={result.refused:4} "
        f"errors={result.errors:3} {rate:8.1f} msg/s  p50={row['p50 ms']:7.1f}ms "
        f"p99={row['p99 ms']:7.1f}ms  RSS={rss:6.1f}MiB  CPU/1k={row['CPU s/1k msg']:6.2f}s"
        + (f"  [{result.first_error[:60]}]" if result.first_error else ""),
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per case")
    parser.add_argument("--time-limit", type=float, default=20.0, help="seconds per case")
    parser.add_argument("--quick", action="store_true", help="only 8 and 32 connections")
    add_server_options(parser)
    parser.add_argument(
        "--delivery",
        choices=["yes", "no", "only"],
        default="yes",
        help="also run the end-to-end delivery benchmark (bench/delivery.py)",
    )
    args = parser.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    servers = chosen_servers(args)

    if args.delivery == "only":
        run_delivery(args, servers)
        return
    connection_counts = [8, 32] if args.quick else [1, 8, 32, 128]
    print(f"# {' vs '.join(servers)}; {args.messages} messages or {args.time_limit}s per case")
    root = Path(tempfile.mkdtemp(prefix="chasquid-bench-"))
    rows = []
    try:
        for size in (1024, 100 * 1024):
            for mode in ("null-sender", "submission"):
                for n in connection_counts:
                    label = f"{size // 1024}KiB {mode} c={n}"
                    for name in servers:
                        rows.append(
                            measure(
                                name,
                                root,
                                partial(load_for, mode, connections=n, size=size, args=args),
                                label,
                            )
                        )
        for name in servers:
            rows.append(
                measure(
                    name,
                    root,
                    lambda p: loadgen.Load(
                        host="127.0.0.1",
                        port=p.smtp,
                        connections=1000,
                        messages=1000,
                        size=1024,
                        rcpt=f"{USER}@{DOMAIN}",
                        time_limit=120,
                        per_connection_messages=1,
                    ),
                    "1KiB null-sender 1000 at once",
                )
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    subject = servers[0]
    for other in servers[1:]:
        print(f"\n# ratios {subject}/{other} (msg/s higher is better; RSS, CPU lower is better)")
        by_case: dict[str, dict[str, dict[str, float | str]]] = {}
        for row in rows:
            by_case.setdefault(str(row["case"]), {})[str(row["server"])] = row
        for case, pair in by_case.items():
            o, c = pair[subject], pair[other]

            def ratio(
                key: str, o: dict[str, float | str] = o, c: dict[str, float | str] = c
            ) -> float:
                a, b = float(o[key]), float(c[key])
                return a / b if b else float("nan")

            print(
                f"{case:32} msg/s {ratio('msg/s'):5.2f}x  RSS {ratio('peak RSS MiB'):5.2f}x  "
                f"CPU/1k {ratio('CPU s/1k msg'):5.2f}x"
            )
    if args.delivery == "yes":
        print()
        run_delivery(args, servers)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """--servers, --only and --baseline, shared with bench/delivery.py."""
    parser.add_argument(
        "--servers",
        default="ours,chasquid",
        help=f"comma-separated, from {', '.join(SERVERS)}; ratios compare the first "
        "with each other one (default: ours,chasquid)",
    )
    parser.add_argument("--only", choices=SERVERS, help="run one server only")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="the chasquid executable of another build of ours (for the server 'baseline')",
    )


def chosen_servers(args: argparse.Namespace) -> list[str]:
    """The servers to measure, in order, from --servers/--only/--baseline."""
    global BASELINE
    servers = [args.only] if args.only else [s.strip() for s in args.servers.split(",")]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        raise SystemExit(f"unknown server {unknown[0]!r}: choose from {', '.join(SERVERS)}")
    if "baseline" in servers:
        if args.baseline is None or not args.baseline.is_file():
            raise SystemExit("the server 'baseline' needs --baseline PATH to a chasquid executable")
        BASELINE = args.baseline.resolve()
    if "chasquid" in servers and DEBIAN is None:
        print("Debian's chasquid package could not be downloaded: not measuring it")
        servers = [s for s in servers if s != "chasquid"]
    return servers


def run_delivery(args: argparse.Namespace, servers: list[str]) -> None:
    """End-to-end delivery figures (bench/delivery.py) with this run's bounds."""
    import delivery

    delivery.run_all(
        argparse.Namespace(messages=max(args.messages, 1000), time_limit=args.time_limit * 1.5),
        servers,
    )


if __name__ == "__main__":
    main()
