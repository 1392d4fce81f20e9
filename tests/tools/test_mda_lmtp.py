"""mda-lmtp: flags, punycode, the DATA encoding, and the command against fake LMTP servers.

Deliveries into a real Dovecot are in tests/interop/test_dovecot.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from mda_lmtp.deliver import (
    DeliveryFailure,
    Request,
    Timeouts,
    UsageError,
    deliver,
    puny_encode,
    request,
)
from mda_lmtp.flags import FlagError, HelpRequested, VersionRequested, parse

MDA_LMTP = str(Path(sys.executable).parent / "mda-lmtp")


# --- flags --------------------------------------------------------------------------------------


DEFAULTS = {"addr": "", "addr_network": "", "f": "", "d": "", "to_puny": False}


@pytest.mark.parametrize(
    ("args", "changed"),
    [
        ([], {}),
        (["-addr=/s"], {"addr": "/s"}),
        (["-addr", "/s"], {"addr": "/s"}),
        (["--addr", "/s"], {"addr": "/s"}),
        (["--addr=/s"], {"addr": "/s"}),
        (["-f", "a@b", "-d", "c@d"], {"f": "a@b", "d": "c@d"}),
        (["-f=a@b", "--d=c@d"], {"f": "a@b", "d": "c@d"}),
        (["-f", "<>"], {"f": "<>"}),
        (["-to_puny"], {"to_puny": True}),
        (["--to_puny=true"], {"to_puny": True}),
        (["-to_puny=1", "-to_puny=false"], {"to_puny": False}),
        (["-addr_network=unix"], {"addr_network": "unix"}),
        (["-addr", "a", "-addr", "b"], {"addr": "b"}),
        # An argument that is not a flag ends the flags; the rest is ignored, as in Go.
        (["-addr=a", "positional", "-d", "x"], {"addr": "a"}),
        (["-addr=a", "--", "-d", "x"], {"addr": "a"}),
        (["-d", "-f"], {"d": "-f"}),
        (["-addr=x=y"], {"addr": "x=y"}),
        (["-version=false"], {}),
    ],
)
def test_flags_parse_like_go(args: list[str], changed: dict[str, object]) -> None:
    assert parse(args) == {**DEFAULTS, **changed}


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["-x"], "flag provided but not defined: -x"),
        (["--unknown=1"], "flag provided but not defined: -unknown"),
        (["-addr"], "flag needs an argument: -addr"),
        (["-to_puny=maybe"], 'invalid boolean value "maybe" for -to_puny: parse error'),
        (["-addr_network=udp"], 'invalid value "udp" for flag -addr_network: must be one of'),
        (["---addr=x"], "bad flag syntax: ---addr=x"),
        (["-=x"], "bad flag syntax: -=x"),
    ],
)
def test_flag_errors(args: list[str], error: str) -> None:
    with pytest.raises(FlagError, match=f"^{error}"):
        parse(args)


@pytest.mark.parametrize("arg", ["-h", "-help", "--help", "--h"])
def test_help_flags(arg: str) -> None:
    with pytest.raises(HelpRequested):
        parse(["-addr=x", arg])


@pytest.mark.parametrize("arg", ["-version", "--version", "-version=true"])
def test_version_flags(arg: str) -> None:
    with pytest.raises(VersionRequested):
        parse(["-addr=x", arg])


# --- punycode -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("fröm", "xn--frm-tna"),
        ("þo", "xn--o-hha"),
        ("user@example.com", "user@example.com"),
        ("User@Example.COM", "User@Example.COM"),
        ("<>", "<>"),
        ("ñandú@ñandú.com.ar", "xn--and@and-3zae2gf.com.ar"),
        ("a@xn--and-6ma2c.com", "a@xn--and-6ma2c.com"),
        ("", ""),
    ],
)
def test_puny_encode(value: str, encoded: str) -> None:
    assert puny_encode(value) == encoded


def test_puny_encode_rejects_bad_existing_punycode() -> None:
    with pytest.raises(ValueError, match=r'^idna: invalid label "t"$'):
        puny_encode("xn--t")


def test_request_defaults_and_errors() -> None:
    assert request("/run/lmtp", "", "<>", "<>", False) == Request("/run/lmtp", "unix", "", "")
    assert request("127.0.0.1:24", "", "a", "b", False).network == "tcp"
    assert request("rel/sock", "unix", "a", "b", False).network == "unix"
    assert request("x", "", "fröm", "þo", True)[2:] == ("xn--frm-tna", "xn--o-hha")
    with pytest.raises(UsageError, match=r"^No LMTP server address given \(use --addr\)$"):
        request("", "", "a", "b", False)
    # The sender is checked first.
    with pytest.raises(UsageError, match=r'^cannot puny-encode from: idna: invalid label "t"$'):
        request("x", "", "xn--t", "xn--t", True)
    with pytest.raises(
        UsageError, match=r'^cannot puny-encode recipient: idna: invalid label "t"$'
    ):
        request("x", "", "a", "xn--t", True)
    # Without -to_puny nothing is checked or changed.
    assert request("x", "", "fröm", "xn--t", False)[2:] == ("fröm", "xn--t")


# --- fake LMTP servers --------------------------------------------------------------------------


class FakeLMTP:
    """A scripted LMTP server on a unix socket, served from a thread, one connection at a time.

    ``replies`` overrides the reply to a command verb (``MAIL``, ``DATA``, ``.`` for
    the end of the message, ``GREETING``); the value ``CLOSE`` hangs up instead and
    ``STALL`` says nothing. Everything received is kept in ``received``.
    """

    DEFAULT: ClassVar[dict[str, str]] = {
        "GREETING": "220 fake LMTP",
        "LHLO": "250-fake\r\n250-PIPELINING\r\n250 8BITMIME",
        "MAIL": "250 2.1.0 ok",
        "RCPT": "250 2.1.5 ok",
        "DATA": "354 go ahead",
        ".": "250 2.0.0 saved",
        "QUIT": "221 2.0.0 bye",
    }

    def __init__(
        self,
        path: Path,
        replies: dict[str, str] | None = None,
        before_final: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.replies = {**self.DEFAULT, **(replies or {})}
        # Called once the whole message is in, before the reply to it.
        self.before_final = before_final
        self.received = b""
        self.data_bytes = 0
        self.connections = 0
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self._stop.set()
        # Closing alone does not wake a thread blocked in accept(); shutting down does.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn, contextlib.suppress(OSError):
                self._session(conn)

    def _say(self, conn: socket.socket, key: str) -> bool:
        reply = self.replies[key]
        if reply == "CLOSE":
            return False
        if reply == "STALL":
            self._stop.wait(30)
            return False
        conn.sendall(reply.encode() + b"\r\n")
        return True

    def _session(self, conn: socket.socket) -> None:
        if not self._say(conn, "GREETING"):
            return
        buf = b""
        in_data = False
        while True:
            chunk = conn.recv(1 << 20)
            if not chunk:
                return
            if in_data:
                # Only the tail is kept for big messages: the count says how much came.
                self.data_bytes += len(chunk)
                if self.data_bytes < (1 << 20):
                    self.received += chunk
            else:
                self.received += chunk
            buf = (buf + chunk)[-(1 << 16) :] if in_data else buf + chunk
            while True:
                if in_data:
                    if b"\r\n.\r\n" not in b"\r\n" + buf:
                        break
                    buf = (b"\r\n" + buf).split(b"\r\n.\r\n", 1)[1]
                    in_data = False
                    if self.before_final is not None:
                        self.before_final()
                    if not self._say(conn, "."):
                        return
                    continue
                line, sep, rest = buf.partition(b"\r\n")
                if not sep:
                    break
                buf = rest
                verb = line.split(b" ", 1)[0].split(b":", 1)[0].decode().upper()
                if not self._say(conn, verb):
                    return
                if verb == "DATA" and self.replies["DATA"].startswith("354"):
                    in_data = True
                if verb == "QUIT":
                    return


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (pytest's tmp paths can exceed the ~107-byte limit)."""
    d = Path(tempfile.mkdtemp(prefix="mda-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def mda(
    *args: str, stdin: bytes = b"Subject: hi\n\nbody\n", cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([MDA_LMTP, *args], input=stdin, capture_output=True, timeout=60, cwd=cwd)


def test_delivers_the_message_with_the_dialogue_of_lmtp(sock_dir: Path) -> None:
    server = FakeLMTP(sock_dir / "lmtp")
    try:
        r = mda(
            f"-addr={server.path}",
            "-f",
            "from@example.com",
            "-d",
            "to@example.com",
            stdin=b"Subject: hi\n\n.leading dot\nbare LF\r\nCRLF\nno final newline",
        )
    finally:
        server.close()
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    hostname = socket.gethostname().encode()
    assert server.received == (
        b"LHLO " + hostname + b"\r\n"
        b"MAIL FROM:<from@example.com>\r\n"
        b"RCPT TO:<to@example.com>\r\n"
        b"DATA\r\n"
        b"Subject: hi\r\n\r\n..leading dot\r\nbare LF\r\nCRLF\r\nno final newline\r\n.\r\n"
        b"QUIT\r\n"
    )


def test_null_sender_utf8_and_puny(sock_dir: Path) -> None:
    server = FakeLMTP(sock_dir / "lmtp")
    try:
        assert mda(f"--addr={server.path}", "-f", "<>", "-d", "<>").returncode == 0
        assert mda(f"--addr={server.path}", "-f", "fröm", "-d", "þo").returncode == 0
        assert mda(f"--addr={server.path}", "-f", "fröm", "-d", "þo", "-to_puny").returncode == 0
    finally:
        server.close()
    commands = [
        line for line in server.received.split(b"\r\n") if line.startswith((b"MAIL", b"RCPT"))
    ]
    assert commands == [
        b"MAIL FROM:<>",
        b"RCPT TO:<>",
        "MAIL FROM:<fröm>".encode(),
        "RCPT TO:<þo>".encode(),
        b"MAIL FROM:<xn--frm-tna>",
        b"RCPT TO:<xn--o-hha>",
    ]


def test_tcp_address(sock_dir: Path) -> None:
    """host:port is TCP unless -addr_network says otherwise."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"220 tcp\r\n")
            buf = b""
            for reply in (b"250 x", b"250 x", b"250 x", b"354 x"):
                while b"\r\n" not in buf:
                    buf += conn.recv(4096)
                got.append(buf.split(b"\r\n")[0])
                buf = buf.split(b"\r\n", 1)[1]
                conn.sendall(reply + b"\r\n")
            while not buf.endswith(b"\r\n.\r\n"):
                buf += conn.recv(4096)
            conn.sendall(b"250 ok\r\n")
            while b"QUIT" not in buf:
                buf += conn.recv(4096)
            conn.sendall(b"221 bye\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        r = mda(f"-addr=127.0.0.1:{port}", "-f", "a@b", "-d", "c@d")
    finally:
        t.join(10)
        listener.close()
    assert r.returncode == 0, r.stdout
    assert got[1:] == [b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>", b"DATA"]
    # A relative path is TCP by default, a unix socket when told.
    r = mda("-addr=relative/socket", "-f", "a", "-d", "b")
    assert r.returncode == 75
    assert r.stdout.startswith(b"Error connecting to (tcp, relative/socket): ")
    server = FakeLMTP(sock_dir / "rel")
    try:
        r = mda("-addr=rel", "-addr_network=unix", "-f", "a", "-d", "b", cwd=sock_dir)
    finally:
        server.close()
    assert (r.returncode, r.stdout) == (0, b"")


@pytest.mark.parametrize(
    ("replies", "output"),
    [
        ({"GREETING": "554 go away"}, 'Server greeting error: 554 "go away"'),
        ({"GREETING": "CLOSE"}, "Server greeting error: EOF"),
        ({"LHLO": "500 what"}, 'Sent "LHLO {host}", got 500 "what"'),
        ({"MAIL": "452 Nananana"}, 'Sent "MAIL FROM:<a@b>", got 452 "Nananana"'),
        ({"RCPT": "550-no such\r\n550 user"}, 'Sent "RCPT TO:<c@d>", got 550 "no such\\nuser"'),
        ({"RCPT": "CLOSE"}, 'Sent "RCPT TO:<c@d>", got EOF'),
        ({"DATA": "451 later"}, 'Sent "DATA", got 451 "later"'),
        ({".": "452 Nananana"}, 'Delivery failed remotely: 452 "Nananana"'),
        ({".": "552 too big"}, 'Delivery failed remotely: 552 "too big"'),
        ({".": "CLOSE"}, "Delivery failed remotely: EOF"),
        ({"QUIT": "500 no"}, 'Sent "QUIT", got 500 "no"'),
        ({"MAIL": "garbage"}, "Sent \"MAIL FROM:<a@b>\", got malformed reply 'garbage'"),
    ],
)
def test_every_failure_is_temporary_with_one_line(
    sock_dir: Path, replies: dict[str, str], output: str
) -> None:
    server = FakeLMTP(sock_dir / "lmtp", replies)
    try:
        r = mda(f"-addr={server.path}", "-f", "a@b", "-d", "c@d")
    finally:
        server.close()
    assert r.returncode == 75
    assert r.stdout.decode() == output.format(host=socket.gethostname()) + "\n"
    assert r.stderr == b""


def test_connection_refused_and_missing_socket(sock_dir: Path) -> None:
    r = mda(f"-addr={sock_dir}/missing", "-f", "a", "-d", "b")
    assert (r.returncode, r.stdout.decode()) == (
        75,
        f"Error connecting to (unix, {sock_dir}/missing): no such file or directory\n",
    )
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    r = mda(f"-addr=127.0.0.1:{port}", "-f", "a", "-d", "b")
    assert (r.returncode, r.stdout.decode()) == (
        75,
        f"Error connecting to (tcp, 127.0.0.1:{port}): connection refused\n",
    )


@pytest.mark.parametrize(
    ("args", "stream", "line"),
    [
        ([], "stdout", "No LMTP server address given (use --addr)"),
        (["-f", "a", "-d", "b"], "stdout", "No LMTP server address given (use --addr)"),
        (
            ["-addr={sock}", "-to_puny", "-d", "xn--t"],
            "stdout",
            'cannot puny-encode recipient: idna: invalid label "t"',
        ),
        (
            ["-addr={sock}", "-to_puny", "-f", "xn--t"],
            "stdout",
            'cannot puny-encode from: idna: invalid label "t"',
        ),
        (
            ["-addr={sock}", "-to_puny=maybe"],
            "stderr",
            'mda-lmtp: invalid boolean value "maybe" for -to_puny: parse error (see mda-lmtp -h)',
        ),
        (
            ["-addr={sock}", "-bogus"],
            "stderr",
            "mda-lmtp: flag provided but not defined: -bogus (see mda-lmtp -h)",
        ),
        (
            ["-addr={sock}", "-d"],
            "stderr",
            "mda-lmtp: flag needs an argument: -d (see mda-lmtp -h)",
        ),
        (
            ["-addr={sock}", "-addr_network=udp"],
            "stderr",
            'mda-lmtp: invalid value "udp" for flag -addr_network: must be one of unix, tcp '
            "(see mda-lmtp -h)",
        ),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_send_nothing(
    sock_dir: Path, args: list[str], stream: str, line: str
) -> None:
    server = FakeLMTP(sock_dir / "lmtp")
    try:
        r = mda(*(a.format(sock=server.path) for a in args))
    finally:
        server.close()
    assert r.returncode == 2
    out, other = (r.stdout, r.stderr) if stream == "stdout" else (r.stderr, r.stdout)
    assert out.decode() == line + "\n"
    assert other == b""
    assert server.connections == 0


def test_help() -> None:
    r = subprocess.run([MDA_LMTP, "-h"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for flag in ("-addr", "-addr_network", "-f", "-d", "-to_puny"):
        assert f"{flag}, --{flag[1:]}" in r.stdout
    assert "LMTP" in r.stdout


def test_large_message_is_streamed(sock_dir: Path) -> None:
    """200 MiB go through without mda-lmtp holding them: its peak RSS stays small."""
    size = 200 * 1024 * 1024
    line = b"x" * 1022 + b"\r\n"
    pids: list[int] = []
    peaks: list[int] = []

    def sample_peak() -> None:
        # The process's own high-water mark (VmHWM, KiB), read while it waits for the
        # final reply. (wait4's ru_maxrss would also count the forking pytest worker.)
        status = Path(f"/proc/{pids[0]}/status").read_text()
        peaks.extend(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM:"))

    server = FakeLMTP(sock_dir / "lmtp", before_final=sample_peak)
    try:
        proc = subprocess.Popen(
            [MDA_LMTP, f"-addr={server.path}", "-f", "a@b", "-d", "c@d"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        pids.append(proc.pid)
        assert proc.stdin is not None
        block = line * 1024
        for _ in range(size // len(block)):
            proc.stdin.write(block)
        proc.stdin.close()
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait(timeout=60)
    finally:
        server.close()
    assert (proc.returncode, out) == (0, b"")
    # Everything arrived, plus the ending dot.
    assert server.data_bytes == size + len(b".\r\n")
    [peak_kib] = peaks
    assert peak_kib < 64 * 1024, f"mda-lmtp peaked at {peak_kib // 1024} MiB for 200 MiB"


# --- time bounds (the library, with short bounds) -----------------------------------------------


SHORT = Timeouts(connect=1.0, reply=0.5, write=0.5, read=0.5, final=0.5)


@pytest.mark.parametrize(
    ("replies", "error"),
    [
        ({"GREETING": "STALL"}, "Server greeting error: timed out"),
        ({"MAIL": "STALL"}, 'Sent "MAIL FROM:<a@b>", got timed out'),
        ({".": "STALL"}, "Delivery failed remotely: timed out"),
    ],
)
def test_a_silent_server_is_a_failure_within_the_bound(
    sock_dir: Path, replies: dict[str, str], error: str
) -> None:
    server = FakeLMTP(sock_dir / "lmtp", replies)
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"Subject: x\n\nbody\n")
    os.close(write_fd)
    start = time.monotonic()
    try:
        with pytest.raises(DeliveryFailure, match=f"^{error}$"):
            deliver(Request(str(server.path), "unix", "a@b", "c@d"), read_fd, timeouts=SHORT)
    finally:
        os.close(read_fd)
        server.close()
    assert time.monotonic() - start < 0.5 + 1.0


def test_a_stalled_message_source_is_not_delivered_truncated(sock_dir: Path) -> None:
    """stdin that stops mid-message: fail, and never send the final dot."""
    server = FakeLMTP(sock_dir / "lmtp")
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"Subject: x\n\nfirst half")
    try:
        with pytest.raises(DeliveryFailure, match=r"^Error reading the message: nothing to read"):
            deliver(Request(str(server.path), "unix", "a@b", "c@d"), read_fd, timeouts=SHORT)
    finally:
        os.close(read_fd)
        os.close(write_fd)
        server.close()
    assert b"first half" in server.received
    assert not server.received.endswith(b".\r\n")
