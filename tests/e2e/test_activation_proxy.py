"""systemd socket activation, the PROXY protocol and the fail2ban filter, on the real daemon."""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
import subprocess
import sys
from pathlib import Path

from helpers.daemon import Setup, chasquid_command, require_program, start

HELPERS = Path(__file__).parent.parent / "helpers"
REPO = Path(__file__).parent.parent.parent
FILTER = REPO / "etc" / "fail2ban" / "filter.d" / "chasquid.conf"


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _drop_address_keys(setup: Setup) -> None:
    conf = setup.config_dir / "chasquid.conf"
    conf.write_text(
        "\n".join(line for line in conf.read_text().splitlines() if "_address:" not in line) + "\n"
    )


def test_socket_activation(chasquid_setup: Setup) -> None:
    s = chasquid_setup
    _drop_address_keys(s)
    socks = [_listener() for _ in range(3)]
    ports = [sock.getsockname()[1] for sock in socks]
    fds = [sock.fileno() for sock in socks]
    launcher = [
        sys.executable,
        str(HELPERS / "sdlaunch.py"),
        "smtp:submission:submission_tls",
        *map(str, fds),
        "--",
        *chasquid_command(),
    ]
    d = start(s, command=launcher, pass_fds=fds)
    for sock in socks:
        sock.close()
    try:
        log = d.log_text()
        for port, mode in zip(ports, ("SMTP", "submission", "submission+TLS"), strict=True):
            assert f"Server listening on 127.0.0.1:{port} ({mode}, via systemd)" in log
            d.wait_for_log(rf"daemon listening on 127\.0\.0\.1:{port}$", mail_log=True)
        with smtplib.SMTP_SSL("127.0.0.1", ports[2], context=s.client_context(), timeout=30) as c:
            c.login(s.user_addr, s.password)
            assert (
                c.sendmail(s.user_addr, ["x@elsewhere.example"], b"Subject: a\r\n\r\nb\r\n") == {}
            )
        with smtplib.SMTP("127.0.0.1", ports[0], timeout=30) as c:
            assert c.ehlo()[0] == 250
    finally:
        assert d.stop() == 0


def test_socket_activation_wrong_names(chasquid_setup: Setup) -> None:
    s = chasquid_setup
    _drop_address_keys(s)
    sock = _listener()
    launcher = [
        sys.executable,
        str(HELPERS / "sdlaunch.py"),
        "smtp:submission",
        str(sock.fileno()),
        "--",
        *chasquid_command(),
    ]
    d = start(s, command=launcher, pass_fds=[sock.fileno()], wait=False)
    sock.close()
    assert d.wait(30) == 1
    assert (
        "Error getting systemd listeners: Incorrect LISTEN_FDNAMES, have you set "
        "FileDescriptorName?" in d.log_text()
    )


def _fail2ban_regex(log: Path) -> str:
    program = require_program("fail2ban-regex")
    proc = subprocess.run(
        [program, "--print-all-matched", str(log), str(FILTER)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _matched(output: str) -> int:
    m = re.search(r"^Lines: \d+ lines, \d+ ignored, (\d+) matched", output, re.M)
    assert m, output
    return int(m.group(1))


def _three_errors(sock: socket.socket) -> bytes:
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220 ")
    for _ in range(3):
        sock.sendall(b"BOGUS\r\n")
        line = f.readline()
    return line


def test_fail2ban_filter_matches_real_log(chasquid_setup: Setup) -> None:
    s = chasquid_setup
    d = start(s)
    try:
        with socket.create_connection(("127.0.0.1", s.smtp_port), timeout=30) as c:
            assert _three_errors(c).startswith(b"421 ")
        with (
            smtplib.SMTP_SSL(
                "127.0.0.1", s.submission_tls_port, context=s.client_context(), timeout=30
            ) as c,
            contextlib.suppress(smtplib.SMTPAuthenticationError),
        ):
            c.login(s.user_addr, "wrong")
        d.wait_for_log("too many errors")
        d.wait_for_log("AUTH failed")
    finally:
        d.stop()
    out = _fail2ban_regex(d.main_log)
    # Three unknown commands, the error limit, and two failed AUTHs (smtplib
    # tries PLAIN, then LOGIN).
    assert _matched(out) == 6, out
    assert "127.0.0.1" in out


def test_proxy_protocol_real_client_address(chasquid_setup: Setup) -> None:
    s = chasquid_setup
    s.extra_conf.append("haproxy_incoming: true")
    s.write_conf()
    d = start(s)
    try:
        with socket.create_connection(("127.0.0.1", s.smtp_port), timeout=30) as c:
            c.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 41234 25\r\n")
            f = c.makefile("rb")
            assert f.readline().startswith(b"220 ")
            c.sendall(b"EHLO client.example\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            c.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@testserver>\r\n")
            assert f.readline().startswith(b"250 ")
            assert f.readline().startswith(b"550 5.1.1")
            c.sendall(b"BOGUS\r\nBOGUS\r\n")
            f.readline()
            assert f.readline().startswith(b"421 ")
        d.wait_for_log("too many errors")
        d.wait_for_log(
            r"^\S+ \S+ 192\.0\.2\.7:41234 rejected from=a@example.org to=\[nobody@testserver\] "
            r"- local user does not exist$",
            mail_log=True,
        )
        # Without the PROXY line the connection is closed with no reply.
        with socket.create_connection(("127.0.0.1", s.smtp_port), timeout=30) as c:
            c.sendall(b"EHLO client.example\r\n")
            assert c.recv(1024) == b""
    finally:
        d.stop()
    out = _fail2ban_regex(d.main_log)
    assert _matched(out) == 4, out
    assert "192.0.2.7" in out
    banned = re.findall(r"^\|\s+(\S+)\s+\S+ \S+$", out, re.M)
    assert "127.0.0.1" not in " ".join(banned)
