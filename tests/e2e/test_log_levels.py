"""What the daemon logs as an error: only what an operator must look at.

A client that resets the connection once the session is over (after QUIT,
or instead of closing TLS cleanly) is normal traffic and goes to the debug
log; a reset in the middle of a session stays an ``SMTP.Conn ... error:``
line, which fail2ban users may match.
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
import time

from helpers.daemon import DaemonFactory, Setup, messages


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a client that drops a connection does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _read_reply(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """One complete (possibly multi-line) SMTP reply."""
    data = b""
    while not re.search(rb"(^|\n)\d{3} [^\n]*\r\n$", data):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def _starttls_quit_reset(s: Setup) -> int:
    raw = socket.create_connection(("127.0.0.1", s.submission_port), timeout=10)
    port: int = raw.getsockname()[1]
    _read_reply(raw)
    raw.sendall(b"EHLO client.test\r\n")
    _read_reply(raw)
    raw.sendall(b"STARTTLS\r\n")
    assert _read_reply(raw).startswith(b"220")
    tls = s.client_context().wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"EHLO client.test\r\n")
    _read_reply(tls)
    tls.sendall(b"QUIT\r\n")
    assert _read_reply(tls).startswith(b"221")
    _reset(tls)
    return port


def _implicit_tls_quit_reset(s: Setup) -> int:
    raw = socket.create_connection(("127.0.0.1", s.submission_tls_port), timeout=10)
    port: int = raw.getsockname()[1]
    tls = s.client_context().wrap_socket(raw, server_hostname="localhost")
    _read_reply(tls)
    tls.sendall(b"QUIT\r\n")
    assert _read_reply(tls).startswith(b"221")
    _reset(tls)
    return port


def _plain_quit_reset(s: Setup) -> int:
    sock = socket.create_connection(("127.0.0.1", s.smtp_port), timeout=10)
    port: int = sock.getsockname()[1]
    _read_reply(sock)
    sock.sendall(b"QUIT\r\n")
    assert _read_reply(sock).startswith(b"221")
    _reset(sock)
    return port


def _reset_mid_session(s: Setup) -> int:
    sock = socket.create_connection(("127.0.0.1", s.smtp_port), timeout=10)
    port: int = sock.getsockname()[1]
    _read_reply(sock)
    sock.sendall(b"EHLO client.test\r\n")
    _read_reply(sock)
    _reset(sock)
    return port


def test_reset_after_quit_is_not_an_error(
    chasquid_setup: Setup, chasquid_daemon: DaemonFactory
) -> None:
    s = chasquid_setup
    d = chasquid_daemon("-v=1")
    tls_ports = [_starttls_quit_reset(s), _implicit_tls_quit_reset(s)]
    quiet = [*tls_ports, _plain_quit_reset(s)]
    for port in tls_ports:
        # The TLS close was under way: the reset reaches the daemon and is logged, at debug.
        d.wait_for_log(rf"^\. .* SMTP\.Conn 127\.0\.0\.1:{port}: connection lost while closing: ")
    time.sleep(0.2)
    # A reset in the middle of a session is still reported, so the log above is not just mute.
    loud = _reset_mid_session(s)
    d.wait_for_log(rf"SMTP\.Conn 127\.0\.0\.1:{loud}: error: exiting with error: ")
    errors = messages(d.log_text(), "E☠")
    for port in quiet:
        assert not [line for line in errors if f"127.0.0.1:{port}:" in line], errors
