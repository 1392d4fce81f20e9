"""A raw line-oriented SMTP client for exact-reply tests."""

from __future__ import annotations

import socket
import ssl


class RawClient:
    """Send raw bytes, read whole replies (multi-line aware)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout
        )
        self.buf = b""

    def wrap(self, ctx: ssl.SSLContext, server_hostname: str | None) -> None:
        """Start TLS on the connection."""
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; partial: {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r")

    def reply(self) -> str:
        """The next full reply, lines joined with LF."""
        lines = [self._line()]
        while lines[-1][3:4] == b"-":
            lines.append(self._line())
        return "\n".join(x.decode() for x in lines)

    def cmd(self, line: str) -> str:
        """Send one command line (CRLF added) and return its reply."""
        self.send(line + "\r\n")
        return self.reply()

    def closed(self) -> bool:
        """True if the server has closed the connection (EOF)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()
