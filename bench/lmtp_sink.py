"""A minimal LMTP server for benchmarks: accepts everything, counts delivered recipients.

Usage: python bench/lmtp_sink.py SOCKET_PATH COUNTER_FILE

Listens on a unix socket; for every recipient of every message it appends one
byte to COUNTER_FILE (O_APPEND), so the file size is the number of deliveries.
Built on asyncio.Protocol with one buffer per connection (no streams): it
must never be the bottleneck of the benchmark that measures the server
feeding it (bench/delivery.py measures it alone first).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys


class LMTPSink(asyncio.Protocol):
    """One LMTP session; replies to each complete command line or message."""

    def __init__(self, counter_fd: int) -> None:
        self.counter_fd = counter_fd
        self.buf = bytearray()
        self.in_data = False
        self.rcpts = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 sink LMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out: list[bytes] = []
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    break
                del self.buf[: end + 5]
                self.in_data = False
                os.write(self.counter_fd, b"x" * self.rcpts)
                out.append(b"250 2.0.0 ok\r\n" * self.rcpts)
                self.rcpts = 0
                continue
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                break
            line = bytes(self.buf[:nl]).upper()
            del self.buf[: nl + 2]
            if line.startswith(b"LHLO"):
                out.append(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif line.startswith(b"RCPT"):
                self.rcpts += 1
                out.append(b"250 2.1.5 ok\r\n")
            elif line == b"DATA":
                self.in_data = True
                # A message that is only "." right after DATA leaves "\r\n." unfound.
                self.buf[0:0] = b"\r\n"
                out.append(b"354 go ahead\r\n")
            elif line == b"RSET":
                self.rcpts = 0
                out.append(b"250 2.0.0 ok\r\n")
            elif line == b"QUIT":
                out.append(b"221 2.0.0 bye\r\n")
                assert self.transport is not None
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            else:
                out.append(b"250 2.0.0 ok\r\n")
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(path: str, counter: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: LMTPSink(fd), path)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
