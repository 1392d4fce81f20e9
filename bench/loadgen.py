"""An SMTP load generator for loopback benchmarks, bounded in count and time.

Each of N connections greets, optionally does STARTTLS and AUTH PLAIN, then
sends messages one transaction after another until the shared message budget
or the time limit runs out. Only replies are timed; nothing is asserted.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Load:
    """What to send, where, and the bounds of the run."""

    host: str
    port: int
    connections: int
    messages: int
    size: int
    rcpt: str
    sender: str = ""
    auth: tuple[str, str] | None = None
    starttls: bool = False
    implicit_tls: bool = False
    time_limit: float = 60.0
    per_connection_messages: int = 0  # 0: share the budget; else each connection sends this many


@dataclass
class Result:
    """What a run measured."""

    accepted: int = 0
    refused: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    def percentile(self, p: float) -> float:
        """The p-th percentile of transaction latency, in seconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))
        return ordered[index]


def make_message(size: int) -> bytes:
    """A message of about size bytes with CRLF line endings, ready for DATA."""
    header = (
        b"From: bench <bench@example.net>\r\n"
        b"To: user <user@example.test>\r\n"
        b"Subject: load\r\n"
        b"Message-ID: <bench@example.net>\r\n\r\n"
    )
    line = b"x" * 76 + b"\r\n"
    lines = max(1, (size - len(header)) // len(line))
    return header + line * lines + b".\r\n"


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            raw = await self.reader.readline()
            if not raw:
                raise ConnectionError("connection closed by server")
            lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
            if len(raw) < 4 or raw[3:4] != b"-":
                break
        return int(lines[-1][:3]), "\n".join(lines)

    async def command(self, line: str) -> tuple[int, str]:
        self.writer.write(line.encode() + b"\r\n")
        return await self.reply()


def _tls_context() -> ssl.SSLContext:
    # The bench talks to its own servers with self-signed certificates.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _open(load: Load) -> _Client:
    if load.implicit_tls:
        reader, writer = await asyncio.open_connection(
            load.host, load.port, ssl=_tls_context(), server_hostname="localhost"
        )
    else:
        reader, writer = await asyncio.open_connection(load.host, load.port)
    client = _Client(reader, writer)
    code, text = await client.reply()
    if code != 220:
        raise ConnectionError(f"greeting: {text}")
    await client.command("EHLO bench.example.net")
    if load.starttls:
        code, text = await client.command("STARTTLS")
        if code != 220:
            raise ConnectionError(f"STARTTLS: {text}")
        await writer.start_tls(_tls_context(), server_hostname="localhost")
        await client.command("EHLO bench.example.net")
    if load.auth:
        token = base64.b64encode(f"\0{load.auth[0]}\0{load.auth[1]}".encode()).decode()
        code, text = await client.command(f"AUTH PLAIN {token}")
        if code != 235:
            raise ConnectionError(f"AUTH: {text}")
    return client


async def _connection(
    load: Load, body: bytes, budget: list[int], result: Result, deadline: float
) -> None:
    try:
        client = await _open(load)
    except (OSError, ConnectionError, asyncio.IncompleteReadError) as e:
        result.errors += 1
        result.first_error = result.first_error or f"connect: {e}"
        return
    sent = 0
    try:
        while time.monotonic() < deadline:
            if load.per_connection_messages:
                if sent >= load.per_connection_messages:
                    break
            elif budget[0] <= 0:
                break
            else:
                budget[0] -= 1
            sent += 1
            start = time.monotonic()
            client.writer.write(
                f"MAIL FROM:<{load.sender}>\r\nRCPT TO:<{load.rcpt}>\r\nDATA\r\n".encode()
            )
            codes = [(await client.reply())[0] for _ in range(3)]
            if codes[2] != 354:
                result.refused += 1
                await client.command("RSET")
                continue
            client.writer.write(body)
            code, text = await client.reply()
            if code == 250:
                result.accepted += 1
                result.latencies.append(time.monotonic() - start)
            else:
                result.refused += 1
                result.first_error = result.first_error or text
        client.writer.write(b"QUIT\r\n")
        await client.writer.drain()
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
        result.errors += 1
        result.first_error = result.first_error or f"{type(e).__name__}: {e}"
    finally:
        client.writer.close()


async def run(load: Load) -> Result:
    """Run one load to completion (or to its time limit) and return the figures."""
    body = make_message(load.size)
    result = Result()
    budget = [load.messages]
    start = time.monotonic()
    deadline = start + load.time_limit
    await asyncio.gather(
        *(_connection(load, body, budget, result, deadline) for _ in range(load.connections))
    )
    result.elapsed = time.monotonic() - start
    return result
